"""The ``federation`` section: the other ministries' bots this service trusts (``federation.peers``).

Each peer names its homeserver, its bot and the keys that prove a device is that bot's: its
cross-signing master key and/or pinned device keys, as ``visio-matrix identity`` prints them on the
other side (docs/federation.md). Which servers calls are actually linked with is
``policy.link_servers``; the keys are only checked for form here, trust is ``crypto.peer_trust``.
"""

from __future__ import annotations

import base64
import binascii
import re

from visio_matrix.config.model import FederationConfig, PeerConfig
from visio_matrix.config.names import server_name_problem, user_id_problem
from visio_matrix.config.reader import Section, describe

FEDERATION_KEYS: tuple[str, ...] = ("peers",)
PEER_KEYS: tuple[str, ...] = ("server_name", "bot_user_id", "master_key", "device_keys")

_UNPADDED_B64_32 = re.compile(r"[A-Za-z0-9+/]{43}")


def ed25519_key_problem(text: str) -> str | None:
    """Why ``text`` is not an Ed25519 public key as Matrix writes it (unpadded base64 of 32 bytes)."""
    if not _UNPADDED_B64_32.fullmatch(text):
        return f"not unpadded base64 of 32 bytes (an Ed25519 key is 43 characters), got {describe(text)}"
    try:
        raw = base64.b64decode(text + "=", validate=True)
    except binascii.Error:
        return f"not unpadded base64 of 32 bytes, got {describe(text)}"
    # 43 characters carry 258 bits: the last two must be zero in a canonical encoding.
    if base64.b64encode(raw).decode("ascii").rstrip("=") != text:
        return f"not unpadded base64 of 32 bytes (non-canonical last character), got {describe(text)}"
    return None


def _peer(s: Section, own_server: str) -> PeerConfig | None:
    server_name = s.string("server_name", what="the peer's homeserver server name (e.g. b.gouv.fr)")
    if s.ok("server_name") and server_name:
        problem = server_name_problem(server_name)
        if problem:
            s.error("server_name", f"{problem}, got {describe(server_name)}")
        elif own_server and server_name.lower() == own_server.lower():
            s.error("server_name", f"{server_name} is this service's own homeserver.server_name")
    bot_user_id = s.string("bot_user_id", what="the peer bot's Matrix user ID (e.g. @visio:b.gouv.fr)")
    if s.ok("bot_user_id") and bot_user_id:
        problem = user_id_problem(bot_user_id)
        if problem:
            s.error("bot_user_id", f"{problem}, got {describe(bot_user_id)}")
        elif s.ok("server_name") and server_name and bot_user_id.split(":", 1)[1] != server_name:
            s.error(
                "bot_user_id", f"must be a user of {server_name} (the peer's server_name), got {bot_user_id}"
            )
    master_key: str | None = None
    if s.raw("master_key") is not None:
        master_key = s.string("master_key", what="an Ed25519 public key (unpadded base64)")
        problem = ed25519_key_problem(master_key) if s.ok("master_key") else None
        if problem:
            s.error("master_key", problem)
        if not s.ok("master_key"):
            master_key = None
    device_keys: list[str] = []
    for index, key in s.string_list(
        "device_keys", [], what="a list of Ed25519 device keys (unpadded base64)"
    ):
        problem = ed25519_key_problem(key)
        if problem:
            s.problems.error(f"{s.key_path('device_keys')}[{index}]", problem)
        else:
            device_keys.append(key)
    given_keys = any(s.raw(k) not in (None, []) for k in ("master_key", "device_keys"))
    if not given_keys:
        s.problems.error(
            s.path,
            "needs master_key (the peer bot's cross-signing master key) or device_keys "
            "(its devices' ed25519 keys): paste what `visio-matrix identity` prints on its side",
        )
    s.warn_unknown()
    if not (server_name and bot_user_id) or s.problems.errors_at(s.path):
        return None
    return PeerConfig(
        server_name=server_name,
        bot_user_id=bot_user_id,
        master_key=master_key,
        device_keys=tuple(device_keys),
    )


def parse_federation(s: Section, own_server: str) -> FederationConfig:
    """``federation`` (``s``, already opened by the caller) -> ``FederationConfig``."""
    raw = s.raw("peers")
    peers: list[PeerConfig] = []
    if raw is not None and not isinstance(raw, list):
        s.error(
            "peers",
            f"expected a list of peers (server_name, bot_user_id, master_key...), got {describe(raw)}",
        )
        raw = None
    seen: dict[str, int] = {}
    for index, item in enumerate(raw or []):
        path = f"{s.key_path('peers')}[{index}]"
        if not isinstance(item, dict):
            s.problems.error(
                path,
                f"expected a mapping (server_name, bot_user_id, master_key, device_keys), got {describe(item)}",
            )
            continue
        peer_section = Section(s.problems, path, item, PEER_KEYS)
        peer = _peer(peer_section, own_server)
        if peer is None:
            continue
        first = seen.setdefault(peer.server_name.lower(), index)
        if first != index:
            peer_section.error(
                "server_name", f"{peer.server_name} is already the server of {s.key_path('peers')}[{first}]"
            )
            continue
        peers.append(peer)
    s.warn_unknown()
    return FederationConfig(peers=tuple(peers))
