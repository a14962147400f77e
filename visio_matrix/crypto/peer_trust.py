"""Trust in the other ministries' bots (``federation.peers``), and this bot's identity for theirs.

A relay links only with a bot device it has verified (docs/federation.md, "Trust"). The caller
has already checked, through Olm, that a message came from ``user_id``'s ``device_id`` whose
published ed25519 key is ``ed25519``; ``PeerTrust.verify`` then decides whether that device is the
configured peer bot's:

    user is a peer bot? --no--> untrusted
         | yes
    ed25519 pinned in device_keys? --yes--> trusted ("pinned device key")
         | no
    /keys/query: published master == pinned master_key
                 and self-signing key signed by it
                 and device (with that ed25519) signed by the self-signing key --yes--> trusted
         | no                                                  ("cross-signed by pinned master key")
    untrusted (the reason names the broken link)

``chain_problem`` is the pure check on a /keys/query answer; ``PeerTrust`` adds the query and a
cache (time passed in). ``fetch_bot_identity`` reads this service's own bot keys from its
homeserver for ``visio-matrix identity``, which the other admins paste into their config.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from visio_matrix.appservice.homeserver import HomeserverClient
from visio_matrix.clock import Clock
from visio_matrix.config.model import Config, FederationConfig, PeerConfig
from visio_matrix.crypto.cross_signing import verify_json

log = logging.getLogger(__name__)

PINNED = "pinned device key"
CROSS_SIGNED = "cross-signed by pinned master key"


@dataclass(frozen=True)
class TrustDecision:
    trusted: bool
    # For logs and room notices: how the device was trusted, or why it was not.
    reason: str


class KeysSource(Protocol):
    async def query_keys(self, user_ids: list[str]) -> dict[str, Any]:
        """The raw JSON answer of ``POST /_matrix/client/v3/keys/query`` for ``user_ids``."""
        ...


def _signed_by(obj: Mapping[str, Any], user_id: str, public_key: str) -> bool:
    try:
        return verify_json(dict(obj), user_id, public_key)
    except (AttributeError, TypeError, ValueError):  # malformed signatures from a remote server
        return False


def _single_key(key_obj: Mapping[str, Any], user_id: str, usage: str) -> tuple[str | None, str | None]:
    """``(public key, None)`` of a cross-signing key object, or ``(None, why not)``."""
    if key_obj.get("user_id") != user_id:
        return None, f"its {usage} key belongs to {key_obj.get('user_id')!r}"
    usages = key_obj.get("usage")
    if not isinstance(usages, list) or usage not in usages:
        return None, f"its {usage} key is not marked for {usage} use"
    keys = key_obj.get("keys")
    if not isinstance(keys, dict) or len(keys) != 1:
        return None, f"its {usage} key object does not hold exactly one key"
    ((key_id, value),) = keys.items()
    if not isinstance(value, str) or key_id != f"ed25519:{value}":
        return None, f"its {usage} key is not an ed25519 key named by itself"
    return value, None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def chain_problem(
    query: Mapping[str, Any], user_id: str, master_key: str, device_id: str, ed25519: str
) -> str | None:
    """Why the /keys/query answer does not show ``device_id`` (with ``ed25519``) cross-signed under
    ``master_key``; None when master -> self-signing -> device signatures all hold."""
    master_obj = _mapping(query.get("master_keys")).get(user_id)
    if not isinstance(master_obj, Mapping):
        return f"{user_id} publishes no cross-signing master key"
    published, problem = _single_key(master_obj, user_id, "master")
    if published is None:
        return str(problem)
    if published != master_key:
        return f"{user_id}'s published master key {published} is not the pinned master_key {master_key}"
    ssk_obj = _mapping(query.get("self_signing_keys")).get(user_id)
    if not isinstance(ssk_obj, Mapping):
        return f"{user_id} publishes no self-signing key"
    ssk, problem = _single_key(ssk_obj, user_id, "self_signing")
    if ssk is None:
        return str(problem)
    if not _signed_by(ssk_obj, user_id, master_key):
        return f"{user_id}'s self-signing key is not signed by its master key"
    device = _mapping(_mapping(query.get("device_keys")).get(user_id)).get(device_id)
    if not isinstance(device, Mapping):
        return f"device {device_id} of {user_id} is not published"
    if device.get("user_id") != user_id or device.get("device_id") != device_id:
        return f"the keys published for device {device_id} of {user_id} name another device"
    published_device_key = _mapping(device.get("keys")).get(f"ed25519:{device_id}")
    if published_device_key != ed25519:
        return f"device {device_id} of {user_id} publishes another ed25519 key than the one it used"
    if not _signed_by(device, user_id, ssk):
        return f"device {device_id} of {user_id} is not signed by its self-signing key"
    return None


def decide(peer: PeerConfig, query: Mapping[str, Any] | None, device_id: str, ed25519: str) -> TrustDecision:
    """The decision for one device of ``peer``'s bot (``query`` None: not needed or not available)."""
    if ed25519 in peer.device_keys:
        return TrustDecision(True, PINNED)
    if peer.master_key is None:
        return TrustDecision(
            False, f"device {device_id}'s key is not in device_keys and no master_key is pinned"
        )
    if query is None:
        return TrustDecision(False, "the keys of the peer bot could not be queried")
    problem = chain_problem(query, peer.bot_user_id, peer.master_key, device_id, ed25519)
    if problem is not None:
        return TrustDecision(False, problem)
    return TrustDecision(True, CROSS_SIGNED)


class PeerTrust:
    """Verifies peer bot devices against ``federation.peers``; decisions cached ``cache_ttl`` seconds."""

    def __init__(
        self, peers: FederationConfig, keys: KeysSource, clock: Clock, cache_ttl: float = 300.0
    ) -> None:
        self._peers = peers
        self._keys = keys
        self._clock = clock
        self._ttl = cache_ttl
        self._cache: dict[tuple[str, str, str], tuple[float, TrustDecision]] = {}

    def peer_for(self, user_id: str) -> PeerConfig | None:
        return self._peers.peer_for_user(user_id)

    async def verify(self, user_id: str, device_id: str, ed25519: str) -> TrustDecision:
        peer = self.peer_for(user_id)
        if peer is None:
            return TrustDecision(False, f"{user_id} is not a peer bot in federation.peers")
        key = (user_id, device_id, ed25519)
        now = self._clock.now()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        query: dict[str, Any] | None = None
        if ed25519 not in peer.device_keys and peer.master_key is not None:
            try:
                query = await self._keys.query_keys([user_id])
            except Exception as exc:
                # Not cached: the next message retries once the far homeserver answers again.
                log.warning("keys query for peer bot %s failed: %s", user_id, exc)
                return TrustDecision(False, f"the keys of {user_id} could not be queried ({exc})")
        decision = decide(peer, query, device_id, ed25519)
        self._prune(now)
        self._cache[key] = (now + self._ttl, decision)
        return decision

    def _prune(self, now: float) -> None:
        for stale in [k for k, (expires, _) in self._cache.items() if expires <= now]:
            del self._cache[stale]


# ---- this service's own bot, as the other ministries pin it ------------------------------------


@dataclass(frozen=True)
class BotIdentity:
    user_id: str
    server_name: str
    master_key: str | None
    # device id -> ed25519 key, every device the homeserver publishes for the bot.
    devices: dict[str, str]
    # The devices whose keys chain to master_key (master -> self-signing -> device).
    cross_signed: frozenset[str] = field(default_factory=frozenset)

    def peer_entry(self) -> dict[str, Any]:
        """The ``federation.peers`` entry another ministry pastes: the master key, plus the keys of
        devices it does not cover (all devices when the bot has no cross-signing)."""
        entry: dict[str, Any] = {"server_name": self.server_name, "bot_user_id": self.user_id}
        if self.master_key is not None:
            entry["master_key"] = self.master_key
        uncovered = [key for device, key in sorted(self.devices.items()) if device not in self.cross_signed]
        if uncovered:
            entry["device_keys"] = uncovered
        return entry


def identity_from_query(query: Mapping[str, Any], user_id: str, server_name: str) -> BotIdentity:
    """Read the bot's published keys out of a /keys/query answer (pure)."""
    master_obj = _mapping(query.get("master_keys")).get(user_id)
    master_key = _single_key(master_obj, user_id, "master")[0] if isinstance(master_obj, Mapping) else None
    devices: dict[str, str] = {}
    for device_id, device in _mapping(_mapping(query.get("device_keys")).get(user_id)).items():
        ed25519 = _mapping(_mapping(device).get("keys")).get(f"ed25519:{device_id}")
        if isinstance(ed25519, str):
            devices[device_id] = ed25519
    cross_signed = frozenset(
        device_id
        for device_id, ed25519 in devices.items()
        if master_key is not None and chain_problem(query, user_id, master_key, device_id, ed25519) is None
    )
    return BotIdentity(user_id, server_name, master_key, devices, cross_signed)


async def fetch_bot_identity(config: Config) -> BotIdentity:
    """This service's bot identity, read from the running homeserver with the appservice token (the
    service itself need not run). Raises ``MatrixError`` / ``aiohttp.ClientError`` when the
    homeserver cannot be asked."""
    server_name = config.homeserver.server_name
    user_id = config.appservice.bot_user_id(server_name)
    async with HomeserverClient(
        config.homeserver.url, config.appservice.as_token, config.appservice.id
    ) as hs:
        query = await hs.request(
            "POST", "/_matrix/client/v3/keys/query", {"device_keys": {user_id: []}}, user_id=user_id
        )
    return identity_from_query(query, user_id, server_name)
