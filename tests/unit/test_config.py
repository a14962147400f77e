"""Validation of the configuration: defaults, every error with its key path, secrets, helpers."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from visio_matrix.config import SCHEMA, Config, ConfigError, parse_config

AS = "a" * 20 + "as-token-xyz"
HS = "h" * 20 + "hs-token-xyz"
PICKLE = "p" * 32
FOCUS_SECRET = "f" * 40
_DELETE = object()


def minimal() -> dict[str, Any]:
    return {
        "homeserver": {"url": "http://127.0.0.1:8008", "server_name": "localhost:8481"},
        "appservice": {"as_token": AS, "hs_token": HS},
        "crypto": {"pickle_key": PICKLE},
        "focus": {"api_secret": FOCUS_SECRET},
    }


def with_value(path: str, value: object) -> dict[str, Any]:
    data = minimal()
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return data


def errors_of(data: object, base_dir: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir)
    return info.value.errors


def test_minimal_config_gets_documented_defaults(tmp_path: Path) -> None:
    config, warnings = parse_config(minimal(), tmp_path)
    assert warnings == []
    assert config.homeserver.url == "http://127.0.0.1:8008"
    assert config.homeserver.server_name == "localhost:8481"
    a = config.appservice
    assert (a.id, a.host, a.port, a.public_url) == (
        "visio-matrix",
        "127.0.0.1",
        29380,
        "http://127.0.0.1:29380",
    )
    assert (a.bot_localpart, a.user_prefix, a.bot_displayname) == ("visio", "_visio_", "Visio")
    assert (a.as_token, a.hs_token) == (AS, HS)
    assert config.database.kind == "sqlite"
    assert config.database.sqlite_path == tmp_path / "visio.db"
    assert config.crypto.store_path == tmp_path / "crypto"
    assert config.crypto.pickle_key == PICKLE
    r = config.relay
    assert (r.bind_address, r.public_addresses, r.udp_port_min, r.udp_port_max) == (
        "127.0.0.1",
        ("127.0.0.1",),
        40000,
        40999,
    )
    assert config.policy.allowed_servers == ("localhost:8481",)
    assert (config.policy.start_power_level, config.policy.stop_power_level) == (0, 50)
    assert (config.logging.level, config.logging.format) == ("INFO", "text")
    assert config.metrics.enabled is True


# (key path set, value, expected error: "path: message fragment")
INVALID_CASES: list[tuple[str, object, str]] = [
    ("homeserver.url", _DELETE, "homeserver.url: required"),
    ("homeserver.url", "ftp://example.org", "homeserver.url: expected an http:// or https:// URL"),
    ("homeserver.url", "http://", "homeserver.url: the URL has no host"),
    ("homeserver.url", "http://h:99999", "homeserver.url: not a valid URL"),
    ("homeserver.url", 42, "homeserver.url: expected an http(s) URL, got 42"),
    ("homeserver.server_name", _DELETE, "homeserver.server_name: required"),
    ("homeserver.server_name", "bad name", "homeserver.server_name: expected a host name"),
    ("homeserver.server_name", "example.org:0", "homeserver.server_name: a port after ':' must be"),
    ("homeserver.server_name", "example.org:x", "homeserver.server_name: a port after ':' must be"),
    ("homeserver.server_name", "[::1", "homeserver.server_name: an IPv6 address must be written"),
    ("appservice.id", "has space", "appservice.id: expected letters, digits"),
    ("appservice.host", "not a host!", "appservice.host: expected a host name or IP address"),
    ("appservice.port", "abc", "appservice.port: expected an integer 1-65535, got 'abc'"),
    ("appservice.port", 0, "appservice.port: expected an integer 1-65535, got 0"),
    ("appservice.port", 65536, "appservice.port: expected an integer 1-65535, got 65536"),
    ("appservice.port", True, "appservice.port: expected an integer 1-65535, got true"),
    ("appservice.port", 80.5, "appservice.port: expected an integer 1-65535, got 80.5"),
    ("appservice.public_url", "somewhere", "appservice.public_url: expected an http:// or https:// URL"),
    ("appservice.as_token", _DELETE, "appservice.as_token: required: set appservice.as_token or"),
    ("appservice.as_token", "short", "appservice.as_token: too short: at least 16 characters, got 5"),
    (
        "appservice.as_token",
        12345678901234567890,
        "appservice.as_token: expected a string, got a number (put the secret in quotes)",
    ),
    ("appservice.as_token", "with space inside 1234", "appservice.as_token: must not contain spaces"),
    ("appservice.as_token_file", "x", "appservice.as_token: set either appservice.as_token or"),
    ("appservice.hs_token", AS, "appservice.hs_token: must differ from appservice.as_token"),
    ("appservice.hs_token_file", "missing.txt", "appservice.hs_token: set either"),
    ("appservice.bot_localpart", "Visio", "appservice.bot_localpart: expected lower-case letters"),
    ("appservice.user_prefix", "", "appservice.user_prefix: expected a Matrix user ID localpart, got ''"),
    ("appservice.bot_displayname", ["x"], "appservice.bot_displayname: expected a string, got a list"),
    ("database.url", "mysql://u:pw@h/db", "database.url: expected sqlite:///PATH or postgresql://"),
    ("database.url", "sqlite://visio.db", "database.url: expected sqlite:///PATH (three slashes"),
    ("database.url", "sqlite:///", "database.url: expected sqlite:///PATH (three slashes"),
    ("database.url", "postgresql://u:pw@h:port/db", "database.url: not a valid PostgreSQL URL"),
    ("database.url", "postgresql://u:pw@h:5432", "database.url: the PostgreSQL URL names no database"),
    ("crypto.pickle_key", _DELETE, "crypto.pickle_key: required"),
    ("crypto.pickle_key_file", "nope.key", "crypto.pickle_key: set either"),
    ("crypto.store_path", 3, "crypto.store_path: expected a path, got 3"),
    ("relay.bind_address", "localhost", "relay.bind_address: expected an IP address, got 'localhost'"),
    ("relay.bind_address", "0.0.0.0", "relay.public_addresses: required when relay.bind_address is 0.0.0.0"),
    ("relay.public_addresses", ["10.0.0.1", "nope"], "relay.public_addresses[1]: expected an IP address"),
    ("relay.public_addresses", ["0.0.0.0"], "relay.public_addresses[0]: 0.0.0.0 cannot be reached"),
    ("relay.public_addresses", [], "relay.public_addresses: expected at least one IP address"),
    ("relay.public_addresses", {"a": 1}, "relay.public_addresses: expected a list of IP addresses"),
    ("relay.udp_port_min", 80, "relay.udp_port_min: expected an integer 1024-65535, got 80"),
    ("relay.udp_port_max", 70000, "relay.udp_port_max: expected an integer 1024-65535, got 70000"),
    (
        "relay.udp_port_min",
        41000,
        "relay.udp_port_min: must not be above relay.udp_port_max (40999), got 41000",
    ),
    ("policy.allowed_servers", ["ok.org", 7], "policy.allowed_servers[1]: expected a string, got 7"),
    ("policy.allowed_servers", ["bad server"], "policy.allowed_servers[0]: expected a server name"),
    ("policy.start_power_level", "10", "policy.start_power_level: expected an integer (a room power level"),
    ("policy.stop_power_level", 2**60, "policy.stop_power_level: expected an integer"),
    ("logging.level", "verbose", "logging.level: expected one of DEBUG, INFO, WARNING, ERROR, got 'verbose'"),
    ("logging.format", "xml", "logging.format: expected one of text, json, got 'xml'"),
    ("metrics.enabled", "yes", "metrics.enabled: expected true or false, got 'yes'"),
    ("metrics", ["enabled"], "metrics: expected a mapping of keys (enabled), got a list"),
    ("appservice", "oops", "appservice: expected a mapping of keys"),
]


@pytest.mark.parametrize(
    ("path", "value", "expected"), INVALID_CASES, ids=[c[0] + ":" + c[2] for c in INVALID_CASES]
)
def test_each_mistake_gives_one_error_naming_its_path(
    tmp_path: Path, path: str, value: object, expected: str
) -> None:
    errors = errors_of(with_value(path, value), tmp_path)
    if path == "appservice" and value == "oops":
        # The section is gone, so the required tokens are reported as well.
        assert errors[0].startswith(expected), errors
        return
    assert len(errors) == 1, errors
    assert errors[0].startswith(expected), errors


# (key path, value as written, attribute getter, expected parsed value)
VALID_CASES: list[tuple[str, object, str, object]] = [
    ("homeserver.url", "https://matrix.example.org/", "homeserver.url", "https://matrix.example.org"),
    ("homeserver.server_name", "[::1]:8448", "homeserver.server_name", "[::1]:8448"),
    ("homeserver.server_name", "10.0.0.1", "homeserver.server_name", "10.0.0.1"),
    ("appservice.port", 8080, "appservice.public_url", "http://127.0.0.1:8080"),
    ("appservice.host", "::1", "appservice.public_url", "http://[::1]:29380"),
    ("appservice.public_url", "http://visio:29380", "appservice.public_url", "http://visio:29380"),
    ("database.url", "sqlite:///data/v.db", "database.sqlite_path", "BASE/data/v.db"),
    ("database.url", "sqlite:////var/lib/v.db", "database.sqlite_path", Path("/var/lib/v.db")),
    ("database.url", "postgresql://u:pw@127.0.0.1:5432/visio", "database.kind", "postgresql"),
    ("database.url", "postgres://u@h/visio", "database.sqlite_path", None),
    ("crypto.store_path", "/srv/keys", "crypto.store_path", Path("/srv/keys")),
    ("relay.bind_address", "0:0::0:1", "relay.public_addresses", ("::1",)),
    ("relay.public_addresses", "192.0.2.1", "relay.public_addresses", ("192.0.2.1",)),
    ("relay.udp_port_min", 40999, "relay.udp_port_min", 40999),
    ("policy.allowed_servers", ["*.gouv.fr"], "policy.allowed_servers", ("*.gouv.fr",)),
    ("policy.stop_power_level", 100, "policy.stop_power_level", 100),
    ("logging.level", "debug", "logging.level", "DEBUG"),
    ("logging.format", "json", "logging.format", "json"),
    ("metrics.enabled", False, "metrics.enabled", False),
    ("metrics", None, "metrics.enabled", True),
]


@pytest.mark.parametrize(("path", "value", "attr", "expected"), VALID_CASES)
def test_valid_values_are_parsed(
    tmp_path: Path, path: str, value: object, attr: str, expected: object
) -> None:
    config, warnings = parse_config(with_value(path, value), tmp_path)
    assert warnings == []
    got: Any = config
    for part in attr.split("."):
        got = getattr(got, part)
    if expected == "BASE/data/v.db":
        expected = tmp_path / "data" / "v.db"
    assert got == expected


def test_all_errors_are_reported_together(tmp_path: Path) -> None:
    data = minimal()
    data["appservice"]["port"] = "abc"
    data["relay"] = {"udp_port_min": 5}
    data["logging"] = {"format": "xml"}
    del data["homeserver"]["server_name"]
    errors = errors_of(data, tmp_path)
    assert [e.split(":", 1)[0] for e in errors] == [
        "homeserver.server_name",
        "appservice.port",
        "relay.udp_port_min",
        "logging.format",
    ]


def test_unknown_keys_are_warnings_with_a_suggestion(tmp_path: Path) -> None:
    data = minimal()
    data["relay"] = {"bind_adress": "10.0.0.1"}
    data["metric"] = {}
    data["homeserver"]["zzz"] = 1
    _config, warnings = parse_config(data, tmp_path)
    assert warnings == [
        "unknown key 'homeserver.zzz'; it is ignored",
        "unknown key 'relay.bind_adress' (did you mean 'relay.bind_address'?); it is ignored",
        "unknown key 'metric' (did you mean 'metrics'?); it is ignored",
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (None, "the configuration is empty"),
        ([1, 2], "the top level must be a mapping of sections"),
        ("text", "the top level must be a mapping of sections"),
    ],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, data: object, expected: str) -> None:
    errors = errors_of(data, tmp_path)
    assert len(errors) == 1 and errors[0].startswith(expected)


def test_secrets_from_files_are_stripped_and_relative_to_base_dir(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "as").write_text(AS + "\n")
    (tmp_path / "hs").write_text(f"  {HS}  \n")
    (tmp_path / "pk").write_text(PICKLE)
    data = minimal()
    data["appservice"] = {"as_token_file": "secrets/as", "hs_token_file": str(tmp_path / "hs")}
    data["crypto"] = {"pickle_key_file": "pk"}
    config, _ = parse_config(data, tmp_path)
    assert (config.appservice.as_token, config.appservice.hs_token) == (AS, HS)
    assert config.crypto.pickle_key == PICKLE


def test_secret_file_problems_name_the_file_key(tmp_path: Path) -> None:
    (tmp_path / "short").write_text("tiny\n")
    data = minimal()
    data["appservice"] = {"as_token_file": "short", "hs_token_file": "absent"}
    errors = errors_of(data, tmp_path)
    assert errors[0].startswith("appservice.as_token_file: too short in ")
    assert errors[0].endswith("at least 16 characters, got 4")
    assert errors[1].startswith("appservice.hs_token_file: cannot read ")
    assert "No such file" in errors[1]
    assert len(errors) == 2


def test_secrets_never_appear_in_repr_or_errors(tmp_path: Path) -> None:
    data = minimal()
    data["database"] = {"url": "postgresql://visio:dbpassword123@127.0.0.1/visio"}
    config, _ = parse_config(data, tmp_path)
    text = repr(config) + str(config)
    for secret in (AS, HS, PICKLE, "dbpassword123"):
        assert secret not in text
    assert config.database.redacted_url == "postgresql://visio:***@127.0.0.1/visio"
    bad = minimal()
    bad["appservice"]["as_token"] = "secret word 123456"
    bad["database"] = {"url": "mysql://u:dbpassword123@h/db"}
    message = "\n".join(errors_of(bad, tmp_path))
    assert "secret word" not in message and "dbpassword123" not in message


def test_config_is_frozen(tmp_path: Path) -> None:
    config, _ = parse_config(minimal(), tmp_path)
    with pytest.raises(AttributeError):
        config.appservice.port = 1  # type: ignore[misc]


def test_bot_user_id_and_owned_users(tmp_path: Path) -> None:
    config, _ = parse_config(minimal(), tmp_path)
    a, server = config.appservice, config.homeserver.server_name
    assert a.bot_user_id(server) == "@visio:localhost:8481"
    assert a.owns_user("@visio:localhost:8481", server)
    assert a.owns_user("@_visio_abc:localhost:8481", server)
    assert not a.owns_user("@visio2:localhost:8481", server)
    assert not a.owns_user("@_visio_abc:localhostX8481", server)
    assert not a.owns_user("@alice:localhost:8481", server)


@pytest.mark.parametrize(
    ("patterns", "server", "allowed"),
    [
        (["example.org"], "example.org", True),
        (["example.org"], "EXAMPLE.org", True),
        (["example.org"], "example.org:8448", False),
        (["example.org"], "sub.example.org", False),
        (["example.org"], "exampleXorg", False),
        (["agent.*.example.gouv.fr"], "agent.dinum.example.gouv.fr", True),
        (["agent.*.example.gouv.fr"], "agent.example.gouv.fr", False),
        (["agent.*.example.gouv.fr"], "agent.x.example.gouv.fr.evil.com", False),
        (["*.gouv.fr"], "a.b.gouv.fr", True),
        (["*.gouv.fr"], "gouv.fr", False),
        (["*"], "anything:1234", True),
        (["localhost:8481", "other.org"], "other.org", True),
        ([], "example.org", False),
    ],
)
def test_policy_server_allowed(tmp_path: Path, patterns: list[str], server: str, allowed: bool) -> None:
    config, _ = parse_config(with_value("policy.allowed_servers", patterns), tmp_path)
    assert config.policy.server_allowed(server) is allowed
    assert config.policy.user_allowed(f"@alice:{server}") is allowed


def test_unspecified_host_without_public_url_is_a_warning(tmp_path: Path) -> None:
    config, warnings = parse_config(with_value("appservice.host", "0.0.0.0"), tmp_path)
    assert config.appservice.public_url == "http://0.0.0.0:29380"
    assert warnings == [
        "appservice.public_url: not set, so the homeserver is told to use http://0.0.0.0:29380; "
        "set it to an address it can reach"
    ]
    data = with_value("appservice.host", "0.0.0.0")
    data["appservice"]["public_url"] = "http://10.0.0.2:29380"
    assert parse_config(data, tmp_path)[1] == []


def test_empty_allowed_servers_is_a_warning(tmp_path: Path) -> None:
    _config, warnings = parse_config(with_value("policy.allowed_servers", []), tmp_path)
    assert warnings == ["policy.allowed_servers: empty: no user may use the service"]


def test_schema_matches_the_dataclasses(tmp_path: Path) -> None:
    config, _ = parse_config(minimal(), tmp_path)
    assert list(SCHEMA) == [f for f in Config.__dataclass_fields__]
    for section, keys in SCHEMA.items():
        fields = set(type(getattr(config, section)).__dataclass_fields__)
        # *_file keys feed the secret fields; every other key is a field.
        assert {k for k in keys if not k.endswith("_file")} == fields - {"kind", "sqlite_path"}, section


def test_input_data_is_not_modified(tmp_path: Path) -> None:
    data = with_value("relay.public_addresses", ["192.0.2.1"])
    before = copy.deepcopy(data)
    parse_config(data, tmp_path)
    assert data == before


def test_registration_regexes_escape_the_server_name(tmp_path: Path) -> None:
    config, _ = parse_config(with_value("homeserver.server_name", "my.server:8481"), tmp_path)
    regex = config.appservice.virtual_user_regex("my.server:8481")
    assert re.fullmatch(regex, "@_visio_x:my.server:8481")
    assert not re.fullmatch(regex, "@_visio_x:myXserver:8481")
