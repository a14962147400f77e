"""Federation keys of the configuration: the policy additions and ``federation.peers``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from visio_matrix.config import ConfigError, generate_config_text, parse_config, parse_config_text
from visio_matrix.config.federation import ed25519_key_problem
from visio_matrix.config.model import FederationConfig, PeerConfig, PolicyConfig
from visio_matrix.crypto.cross_signing import public_key_b64
from visio_matrix.crypto.peer_trust import BotIdentity

AS, HS, PICKLE, FOCUS = "a" * 32, "h" * 32, "p" * 32, "f" * 40
SERVER = "a.gouv.fr"


def key() -> str:
    return public_key_b64(Ed25519PrivateKey.generate())


MASTER, DEV1, DEV2 = key(), key(), key()


def config_data(**sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "homeserver": {"url": "http://127.0.0.1:8008", "server_name": SERVER},
        "appservice": {"as_token": AS, "hs_token": HS},
        "crypto": {"pickle_key": PICKLE},
        "focus": {"api_secret": FOCUS},
    }
    data.update(sections)
    return data


def peer(**fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "server_name": "b.gouv.fr",
        "bot_user_id": "@visio:b.gouv.fr",
        "master_key": MASTER,
    }
    entry.update(fields)
    return {k: v for k, v in entry.items() if v is not None}


def errors_of(data: dict[str, Any], tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, tmp_path)
    return info.value.errors


def test_defaults_link_with_nobody(tmp_path: Path) -> None:
    config, warnings = parse_config(config_data(), tmp_path)
    assert warnings == []
    p = config.policy
    assert (p.link_servers, p.max_participants, p.remote_guests, p.relay_onwards) == ((), 100, False, False)
    assert not p.link_allowed("b.gouv.fr")
    assert config.federation == FederationConfig()


def test_policy_and_peers_are_read(tmp_path: Path) -> None:
    data = config_data(
        policy={
            "link_servers": ["b.gouv.fr", "agent.*.example.gouv.fr"],
            "max_participants": 2,
            "remote_guests": True,
            "relay_onwards": True,
        },
        federation={
            "peers": [
                peer(),
                peer(
                    server_name="localhost:8481",
                    bot_user_id="@visio_c:localhost:8481",
                    master_key=None,
                    device_keys=[DEV1, DEV2],
                ),
            ]
        },
    )
    config, warnings = parse_config(data, tmp_path)
    assert warnings == []
    p = config.policy
    assert p.link_servers == ("b.gouv.fr", "agent.*.example.gouv.fr")
    assert (p.max_participants, p.remote_guests, p.relay_onwards) == (2, True, True)
    b = PeerConfig("b.gouv.fr", "@visio:b.gouv.fr", MASTER, ())
    c = PeerConfig("localhost:8481", "@visio_c:localhost:8481", None, (DEV1, DEV2))
    assert config.federation.peers == (b, c)
    assert config.federation.peer_for_user("@visio:b.gouv.fr") == b
    assert config.federation.peer_for_user("@alice:b.gouv.fr") is None
    assert config.federation.peer_for_server("B.gouv.fr") == b
    assert config.federation.peer_for_server("localhost:8481") == c
    assert config.federation.peer_for_server("localhost") is None


@pytest.mark.parametrize(
    ("server", "allowed"),
    [
        ("b.gouv.fr", True),
        ("B.GOUV.FR", True),
        ("c.gouv.fr", False),
        ("b.gouv.fr:8448", False),
        ("agent.x.example.gouv.fr", True),
        ("agent.x.y.example.gouv.fr", True),
        ("agent.example.gouv.fr", False),
        ("xagent.x.example.gouv.fr", False),
    ],
)
def test_link_allowed_wildcards(server: str, allowed: bool) -> None:
    policy = PolicyConfig(allowed_servers=(), link_servers=("b.gouv.fr", "agent.*.example.gouv.fr"))
    assert policy.link_allowed(server) is allowed


def test_star_links_with_everyone() -> None:
    assert PolicyConfig(allowed_servers=(), link_servers=("*",)).link_allowed("any.where:8448")


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({"link_servers": "b.gouv.fr"}, None),  # a single string is a one-item list
        (
            {"link_servers": ["b gouv"]},
            "policy.link_servers[0]: expected a server name, '*' allowed as wildcard, got 'b gouv'",
        ),
        ({"link_servers": 3}, "policy.link_servers: expected a list of server names (* as wildcard), got 3"),
        ({"max_participants": 1}, "policy.max_participants: expected an integer >= 2, got 1"),
        ({"max_participants": "10"}, "policy.max_participants: expected an integer >= 2, got '10'"),
        ({"remote_guests": "no"}, "policy.remote_guests: expected true or false, got 'no'"),
        ({"relay_onwards": 1}, "policy.relay_onwards: expected true or false, got 1"),
    ],
)
def test_policy_errors_name_the_key(tmp_path: Path, policy: dict[str, Any], expected: str | None) -> None:
    data = config_data(policy=policy)
    if expected is None:
        assert parse_config(data, tmp_path)[0].policy.link_servers == ("b.gouv.fr",)
    else:
        assert errors_of(data, tmp_path) == [expected]


BAD_B64 = "not unpadded base64 of 32 bytes (an Ed25519 key is 43 characters)"


@pytest.mark.parametrize(
    ("peers", "expected"),
    [
        (
            "b.gouv.fr",
            "federation.peers: expected a list of peers (server_name, bot_user_id, master_key...), got 'b.gouv.fr'",
        ),
        (
            ["b.gouv.fr"],
            "federation.peers[0]: expected a mapping (server_name, bot_user_id, master_key, device_keys), got 'b.gouv.fr'",
        ),
        (
            [peer(server_name=None)],
            "federation.peers[0].server_name: required: the peer's homeserver server name (e.g. b.gouv.fr)",
        ),
        (
            [peer(server_name="b gouv")],
            "federation.peers[0].server_name: expected a host name, IPv4 address or [IPv6] address, "
            "optionally with :port, got 'b gouv'",
        ),
        (
            [peer(server_name=SERVER, bot_user_id=f"@visio:{SERVER}")],
            f"federation.peers[0].server_name: {SERVER} is this service's own homeserver.server_name",
        ),
        (
            [peer(bot_user_id=None)],
            "federation.peers[0].bot_user_id: required: the peer bot's Matrix user ID (e.g. @visio:b.gouv.fr)",
        ),
        (
            [peer(bot_user_id="visio")],
            "federation.peers[0].bot_user_id: expected a Matrix user ID such as @visio:example.org, got 'visio'",
        ),
        (
            [peer(bot_user_id="@visio:c.gouv.fr")],
            "federation.peers[0].bot_user_id: must be a user of b.gouv.fr (the peer's server_name), "
            "got @visio:c.gouv.fr",
        ),
        ([peer(master_key="abc")], f"federation.peers[0].master_key: {BAD_B64}, got 'abc'"),
        ([peer(master_key=MASTER + "=")], f"federation.peers[0].master_key: {BAD_B64}, got '{MASTER}='"),
        (
            [peer(master_key=32)],
            "federation.peers[0].master_key: expected an Ed25519 public key (unpadded base64), got 32",
        ),
        (
            [peer(device_keys=[DEV1, "x" * 42])],
            f"federation.peers[0].device_keys[1]: {BAD_B64}, got '{'x' * 42}'",
        ),
        (
            [peer(master_key=None)],
            "federation.peers[0]: needs master_key (the peer bot's cross-signing master key) or device_keys "
            "(its devices' ed25519 keys): paste what `visio-matrix identity` prints on its side",
        ),
        (
            [peer(), peer(server_name="B.gouv.fr", bot_user_id="@other:B.gouv.fr")],
            "federation.peers[1].server_name: B.gouv.fr is already the server of federation.peers[0]",
        ),
    ],
)
def test_peer_errors_name_the_key(tmp_path: Path, peers: object, expected: str) -> None:
    assert errors_of(config_data(federation={"peers": peers}), tmp_path) == [expected]


def test_unknown_peer_and_section_keys_are_warnings(tmp_path: Path) -> None:
    data = config_data(federation={"peers": [peer(master_kye="x")], "peer": []})
    _config, warnings = parse_config(data, tmp_path)
    assert warnings == [
        "unknown key 'federation.peers[0].master_kye' (did you mean 'federation.peers[0].master_key'?); it is ignored",
        "unknown key 'federation.peer' (did you mean 'federation.peers'?); it is ignored",
    ]


def test_ed25519_key_problem() -> None:
    assert ed25519_key_problem(MASTER) is None
    assert ed25519_key_problem("A" * 42 + "B") is not None  # non-zero trailing bits: not canonical
    assert ed25519_key_problem("A" * 43) is None
    assert ed25519_key_problem("-" * 43) is not None  # url-safe alphabet is not Matrix's


def test_errors_in_a_file_carry_their_line(tmp_path: Path) -> None:
    text = generate_config_text(federation_peers=[peer(master_key="abc")])
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, tmp_path)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if '"master_key": "abc"' in t)
    assert info.value.errors == [f"federation.peers[0].master_key: {BAD_B64}, got 'abc' (line {line})"]


def test_generated_config_takes_the_federation_overrides(tmp_path: Path) -> None:
    identity = BotIdentity("@visio:b.gouv.fr", "b.gouv.fr", MASTER, {"DEV": DEV1}, frozenset())
    text = generate_config_text(
        server_name=SERVER,
        link_servers=["b.gouv.fr", "*.example.gouv.fr"],
        federation_peers=[
            identity.peer_entry(),
            peer(server_name="c.gouv.fr", bot_user_id="@visio:c.gouv.fr"),
        ],
        relay_onwards=True,
        remote_guests=True,
        max_participants=12,
    )
    config, warnings = parse_config_text(text, tmp_path)
    assert warnings == []
    assert config.policy.link_servers == ("b.gouv.fr", "*.example.gouv.fr")
    assert (config.policy.relay_onwards, config.policy.remote_guests, config.policy.max_participants) == (
        True,
        True,
        12,
    )
    assert config.federation.peers == (
        PeerConfig("b.gouv.fr", "@visio:b.gouv.fr", MASTER, (DEV1,)),
        PeerConfig("c.gouv.fr", "@visio:c.gouv.fr", MASTER, ()),
    )
    # One string is one server.
    config, _ = parse_config_text(generate_config_text(link_servers="b.gouv.fr"), tmp_path)
    assert config.policy.link_servers == ("b.gouv.fr",)


def test_generated_config_without_overrides_has_no_peers(tmp_path: Path) -> None:
    config, _ = parse_config_text(generate_config_text(), tmp_path)
    assert config.federation.peers == () and config.policy.link_servers == ()
