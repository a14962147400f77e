"""The validated configuration: one frozen dataclass per YAML section, with small pure helpers.

Instances are only built by ``visio_matrix.config.parse``; secret fields are left out of
``repr()`` so that a logged config never leaks a token.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit


@dataclass(frozen=True)
class HomeserverConfig:
    url: str
    server_name: str


@dataclass(frozen=True)
class AppserviceConfig:
    id: str
    host: str
    port: int
    public_url: str
    as_token: str = field(repr=False)
    hs_token: str = field(repr=False)
    bot_localpart: str
    user_prefix: str
    bot_displayname: str

    def bot_user_id(self, server_name: str) -> str:
        return f"@{self.bot_localpart}:{server_name}"

    def virtual_user_regex(self, server_name: str) -> str:
        """The (full-match) regex of the virtual users this service owns on ``server_name``."""
        return f"@{re.escape(self.user_prefix)}.*:{re.escape(server_name)}"

    def bot_user_regex(self, server_name: str) -> str:
        return f"@{re.escape(self.bot_localpart)}:{re.escape(server_name)}"

    def owns_user(self, user_id: str, server_name: str) -> bool:
        """True for the bot and for every user in the service's exclusive namespace."""
        return any(
            re.fullmatch(pattern, user_id)
            for pattern in (self.bot_user_regex(server_name), self.virtual_user_regex(server_name))
        )


@dataclass(frozen=True)
class DatabaseConfig:
    # The URL may carry a password: use ``redacted_url`` in logs.
    url: str = field(repr=False)
    kind: Literal["sqlite", "postgresql"]
    # The database file for ``kind == "sqlite"`` (relative paths already resolved); None otherwise.
    sqlite_path: Path | None

    @property
    def redacted_url(self) -> str:
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


@dataclass(frozen=True)
class CryptoConfig:
    store_path: Path
    pickle_key: str = field(repr=False)


@dataclass(frozen=True)
class RelayConfig:
    bind_address: str
    public_addresses: tuple[str, ...]
    udp_port_min: int
    udp_port_max: int


def server_pattern_regex(pattern: str) -> re.Pattern[str]:
    """``agent.*.example.gouv.fr`` -> a case-insensitive full-match regex; ``*`` matches any run of
    characters (dots included) so ``*.gouv.fr`` also covers ``a.b.gouv.fr``."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.IGNORECASE)


@dataclass(frozen=True)
class PolicyConfig:
    allowed_servers: tuple[str, ...]
    start_power_level: int = 0
    stop_power_level: int = 50
    # Servers whose users may cause a conference to be created through the LiveKit focus (the others
    # among allowed_servers may only join one that is running): lk-jwt-service's "full access".
    open_call_servers: tuple[str, ...] = ()
    # Minimum room power level to admit or deny a guest (`!visio admit` / `!visio deny`).
    admit_power_level: int = 0
    # Federation (docs/federation.md): the servers whose visio-matrix this one links calls with.
    link_servers: tuple[str, ...] = ()
    # Most participants in one call, local and remote together.
    max_participants: int = 100
    # Whether guests admitted by another ministry may be in a call with our users.
    remote_guests: bool = False
    # Whether a linked ministry may relay our users' media on to a third one.
    relay_onwards: bool = False

    def server_allowed(self, server_name: str) -> bool:
        """Whether users of ``server_name`` (port included when it has one) may use the service."""
        return any(server_pattern_regex(p).fullmatch(server_name) for p in self.allowed_servers)

    def server_may_open_calls(self, server_name: str) -> bool:
        """Whether users of ``server_name`` may start a conference through the focus."""
        return any(server_pattern_regex(p).fullmatch(server_name) for p in self.open_call_servers)

    def link_allowed(self, server_name: str) -> bool:
        """Whether this service links calls with the visio-matrix of ``server_name``."""
        return any(server_pattern_regex(p).fullmatch(server_name) for p in self.link_servers)

    def user_allowed(self, user_id: str) -> bool:
        """Whether the Matrix user ``@local:server`` belongs to an allowed server."""
        if not user_id.startswith("@") or ":" not in user_id:
            return False
        return self.server_allowed(user_id.split(":", 1)[1])


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["text", "json"]


@dataclass(frozen=True)
class LoggingConfig:
    level: LogLevel = "INFO"
    format: LogFormat = "text"


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True


@dataclass(frozen=True)
class FocusConfig:
    """The MatrixRTC LiveKit focus (token service + LiveKit signaling) for Element Call clients."""

    enabled: bool
    # Base URL clients reach the token service at (the MSC4143 ``livekit_service_url``).
    public_url: str
    # The ws(s):// URL handed to clients with each token (LiveKit signaling).
    livekit_url: str
    api_key: str
    api_secret: str = field(repr=False)
    # Seconds.
    token_lifetime: float
    verify_federation_tls: bool
    # server_name -> base URL for the OpenID userinfo call, instead of federation discovery.
    homeserver_urls: Mapping[str, str]

    def signing_keys(self) -> dict[str, str]:
        """``iss`` -> secret, what ``focus.jwt.verify_token`` takes."""
        return {self.api_key: self.api_secret}


@dataclass(frozen=True)
class GuestsConfig:
    """Guests by link (``!visio link``): signed, expiring links into a room's lobby."""

    enabled: bool = False
    # The Ed25519 private key (PEM or base64 seed) signing guest links; "" when guests are disabled.
    signing_key: str = field(default="", repr=False)
    # Public keys of earlier signing keys: links they signed stay valid until they expire.
    old_public_keys: tuple[str, ...] = ()
    # Seconds.
    link_lifetime: float = 3600.0
    max_wait: float = 600.0


@dataclass(frozen=True)
class PeerConfig:
    """Another ministry's bot that this service trusts to link relays (``federation.peers[i]``)."""

    server_name: str
    bot_user_id: str
    # The bot's cross-signing master key (unpadded base64 Ed25519): trusts every device it signs.
    master_key: str | None = None
    # Pinned device Ed25519 keys (unpadded base64): trusted whatever cross-signing says.
    device_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class FederationConfig:
    peers: tuple[PeerConfig, ...] = ()

    def peer_for_user(self, user_id: str) -> PeerConfig | None:
        """The peer whose bot is ``user_id``, if any."""
        return next((p for p in self.peers if p.bot_user_id == user_id), None)

    def peer_for_server(self, server_name: str) -> PeerConfig | None:
        """The peer of ``server_name`` (compared case-insensitively, port included), if any."""
        wanted = server_name.lower()
        return next((p for p in self.peers if p.server_name.lower() == wanted), None)


@dataclass(frozen=True)
class Config:
    homeserver: HomeserverConfig
    appservice: AppserviceConfig
    database: DatabaseConfig
    crypto: CryptoConfig
    relay: RelayConfig
    policy: PolicyConfig
    logging: LoggingConfig
    metrics: MetricsConfig
    focus: FocusConfig
    guests: GuestsConfig = GuestsConfig()
    federation: FederationConfig = FederationConfig()
