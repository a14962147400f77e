"""A fresh, commented configuration file with new random secrets (``visio-matrix generate-config``)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping

from visio_matrix.web.guest_links import generate_key_text

_DEFAULTS: dict[str, object] = {
    "server_name": "example.org",
    "homeserver_url": "https://matrix.example.org",
    "appservice_id": "visio-matrix",
    "host": "127.0.0.1",
    "port": 29380,
    "public_url": None,
    "bot_localpart": "visio",
    "user_prefix": "_visio_",
    "bot_displayname": "Visio",
    "database_url": "sqlite:///visio.db",
    "crypto_store_path": "crypto",
    "relay_bind_address": "127.0.0.1",
    "relay_public_addresses": None,
    "udp_port_min": 40000,
    "udp_port_max": 40999,
    "allowed_servers": None,
    "start_power_level": 0,
    "stop_power_level": 50,
    "log_level": "INFO",
    "log_format": "text",
    "metrics_enabled": True,
    "open_call_servers": None,
    "focus_enabled": True,
    "focus_public_url": None,
    "focus_livekit_url": None,
    "focus_api_key": "visio",
    "token_lifetime": "1h",
    "guests_enabled": True,
    "link_lifetime": "1h",
    "max_wait": "10m",
    "admit_power_level": 0,
    "link_servers": None,
    "max_participants": 100,
    "remote_guests": False,
    "relay_onwards": False,
    "federation_peers": None,
}

OVERRIDES = tuple(_DEFAULTS)


def _scalar(value: object) -> str:
    # JSON scalars and flow lists are valid YAML, and json.dumps quotes strings safely.
    return json.dumps(value)


def _indented(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.strip().splitlines())


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def generate_config_text(**overrides: object) -> str:
    """A complete configuration (valid as is) with fresh secrets; keyword names are in ``OVERRIDES``.

    ``None`` for an override means "keep the default".
    """
    unknown = sorted(set(overrides) - set(_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown override(s): {', '.join(unknown)}; expected some of {', '.join(OVERRIDES)}")
    v = dict(_DEFAULTS)
    v.update({k: val for k, val in overrides.items() if val is not None})
    for key in ("relay_public_addresses", "allowed_servers", "open_call_servers", "link_servers"):
        if isinstance(v[key], str):
            v[key] = [v[key]]

    def line(key: str, yaml_key: str, comment_default: str) -> str:
        """An active ``yaml_key: value`` when overridden, else a commented-out line showing the default."""
        if v[key] is None:
            return f"  # {yaml_key}: {comment_default}"
        return f"  {yaml_key}: {_scalar(v[key])}"

    s = {k: _scalar(val) for k, val in v.items()}
    return f"""\
# visio-matrix configuration. Every key is described in docs/configuration.md.
# This file holds secrets: keep it private (mode 0600).

homeserver:
  # Where the service reaches the homeserver's client-server API.
  url: {s["homeserver_url"]}
  # The server name in user IDs (@user:server_name); may include a port.
  server_name: {s["server_name"]}

appservice:
  # The registration's id (also in the homeserver's ping URL).
  id: {s["appservice_id"]}
  # The address and port the appservice HTTP listener binds to.
  host: {s["host"]}
  port: {s["port"]}
  # The URL the homeserver uses to reach this listener (default: http://host:port).
{line("public_url", "public_url", _scalar(f"http://{v['host']}:{v['port']}"))}
  # Tokens shared with the homeserver through the registration file (at least 16 characters).
  # Use as_token_file / hs_token_file instead to read them from files.
  as_token: {_scalar(new_secret())}
  hs_token: {_scalar(new_secret())}
  # The bot's user ID is @bot_localpart:server_name; virtual users are @user_prefix...:server_name.
  bot_localpart: {s["bot_localpart"]}
  user_prefix: {s["user_prefix"]}
  bot_displayname: {s["bot_displayname"]}

database:
  # sqlite:///relative/to/this/file.db, sqlite:////absolute/path.db,
  # or postgresql://user:password@host:5432/database for production.
  url: {s["database_url"]}

crypto:
  # Folder for the bot's end-to-end encryption keys (relative to this file). Back it up.
  store_path: {s["crypto_store_path"]}
  # Encrypts the stored Olm/Megolm keys. Losing it loses the bot's identity. Or: pickle_key_file.
  pickle_key: {_scalar(new_secret())}

relay:
  # The media relay's UDP sockets bind here.
  bind_address: {s["relay_bind_address"]}
  # Addresses offered to clients in ICE candidates (default: [bind_address]).
{line("relay_public_addresses", "public_addresses", '["203.0.113.10"]')}
  udp_port_min: {s["udp_port_min"]}
  udp_port_max: {s["udp_port_max"]}

policy:
  # Users of these servers may use the service and invite the bot; '*' is a wildcard
  # (e.g. "agent.*.example.gouv.fr"). Default: the homeserver's own server name.
{line("allowed_servers", "allowed_servers", "[" + s["server_name"] + "]")}
  # Minimum room power level to run `!visio start` and `!visio stop`.
  start_power_level: {s["start_power_level"]}
  stop_power_level: {s["stop_power_level"]}
  # Users of these servers may start a call from Element Call (the focus then creates the
  # conference); users of the other allowed servers may only join a running one.
  # Default: the homeserver's own server name.
{line("open_call_servers", "open_call_servers", "[" + s["server_name"] + "]")}
  # Minimum room power level to let a guest in or turn them away (`!visio admit` / `!visio deny`).
  admit_power_level: {s["admit_power_level"]}
  # Federation (docs/federation.md): the homeservers whose visio-matrix this one links calls with,
  # same patterns as allowed_servers. Their bots must also be in federation.peers. Default: none.
{line("link_servers", "link_servers", '["b.example.gouv.fr"]')}
  # Most participants in one call, local and remote together (at least 2).
  max_participants: {s["max_participants"]}
  # May guests admitted by another ministry be in a call with our users?
  remote_guests: {s["remote_guests"]}
  # May a linked ministry relay our users' media on to a third one?
  relay_onwards: {s["relay_onwards"]}

federation:
  # The other ministries' bots this service trusts to link calls with (docs/federation.md): paste
  # what `visio-matrix identity` prints on their side. A device of the bot is trusted when its
  # ed25519 key is in device_keys, or when the bot's cross-signing master key is master_key.
{_peers(v["federation_peers"])}

logging:
  # DEBUG, INFO, WARNING or ERROR.
  level: {s["log_level"]}
  # text (human-readable) or json (one JSON object per line).
  format: {s["log_format"]}

metrics:
  # Prometheus metrics at /metrics on the appservice listener.
  enabled: {s["metrics_enabled"]}

guests:
  # Guests by link: `!visio link` posts a signed link; a guest opening it waits in a lobby
  # until a room member admits them (`!visio admit <name>`).
  enabled: {s["guests_enabled"]}
  # The Ed25519 private key signing the links (or signing_key_file). After a rotation, keep the
  # old key's public half in old_public_keys until the links it signed have expired.
  signing_key: |
{_indented(generate_key_text(), "    ")}
  # old_public_keys: []
  # How long a posted link stays valid, and how long a guest may wait to be admitted.
  link_lifetime: {s["link_lifetime"]}
  max_wait: {s["max_wait"]}

focus:
  # The MatrixRTC LiveKit focus for Element Call (token service at /sfu/get and /get_token,
  # LiveKit signaling at /rtc), served on the appservice listener. See docs/element-call.md.
  enabled: {s["focus_enabled"]}
  # The base URL browsers reach the focus at (default: appservice.public_url); give it to
  # Synapse as the MatrixRTC transport's livekit_service_url.
{line("focus_public_url", "public_url", '"https://visio.example.org"')}
  # The ws(s):// URL handed out with each token (default: public_url with ws:// or wss://).
{line("focus_livekit_url", "livekit_url", '"wss://visio.example.org"')}
  # Issuer of the LiveKit access tokens, and their HS256 signing secret (or api_secret_file).
  api_key: {s["focus_api_key"]}
  api_secret: {_scalar(new_secret())}
  # How long an access token stays valid (30s, 15m, 1h...).
  token_lifetime: {s["token_lifetime"]}
  # false only for test homeservers with self-signed certificates.
  verify_federation_tls: true
  # Where to check a server's OpenID tokens instead of federation discovery (server name -> URL).
  # The homeserver above is always reached at homeserver.url.
  # homeserver_urls: {{"other.example.net": "https://matrix.other.example.net:8448"}}
"""


def _peers(peers: object) -> str:
    if not peers:
        return (
            "  peers: []\n"
            "  # For example (device_keys may replace or add to master_key):\n"
            '  # - {server_name: "b.example.gouv.fr", bot_user_id: "@visio:b.example.gouv.fr", '
            'master_key: "<unpadded base64>"}'
        )
    return "\n".join(["  peers:", *(f"    {line}" for line in peer_lines(peers))])


def peer_lines(peers: object) -> list[str]:
    """``federation.peers`` entries as YAML list items, one flow mapping per line (``- {...}``),
    keys in the documented order; what ``generate-config`` and ``visio-matrix identity`` write."""
    if not isinstance(peers, list | tuple):
        raise TypeError(f"federation_peers: expected a list of mappings, got {type(peers).__name__}")
    order = ("server_name", "bot_user_id", "master_key", "device_keys")
    lines = []
    for peer in peers:
        if not isinstance(peer, Mapping):
            raise TypeError(f"federation_peers: expected mappings, got {type(peer).__name__}")
        entry = {
            k: list(peer[k]) if k == "device_keys" else peer[k] for k in order if peer.get(k) is not None
        }
        entry.update({k: val for k, val in peer.items() if k not in order})
        lines.append(f"- {_scalar(entry)}")
    return lines
