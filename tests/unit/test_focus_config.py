"""The ``focus`` section and ``policy.open_call_servers``: defaults, every error with its key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from visio_matrix.config import ConfigError, generate_config_text, parse_config, parse_config_text
from visio_matrix.config.parse import parse_duration

SECRET = "f" * 40


def config_data(focus: dict[str, Any] | None = None, **sections: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "homeserver": {"url": "http://127.0.0.1:8008", "server_name": "example.org"},
        "appservice": {"as_token": "a" * 32, "hs_token": "h" * 32},
        "crypto": {"pickle_key": "p" * 32},
        "focus": {"api_secret": SECRET} if focus is None else focus,
    }
    data.update(sections)
    return data


def errors_of(data: dict[str, Any], tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, tmp_path)
    return info.value.errors


def test_defaults(tmp_path: Path) -> None:
    config, warnings = parse_config(config_data(), tmp_path)
    assert warnings == []
    f = config.focus
    assert f.enabled is True
    assert f.public_url == "http://127.0.0.1:29380" == config.appservice.public_url
    assert f.livekit_url == "ws://127.0.0.1:29380"
    assert (f.api_key, f.api_secret) == ("visio", SECRET)
    assert f.token_lifetime == 3600
    assert f.verify_federation_tls is True
    assert f.homeserver_urls == {}
    assert f.signing_keys() == {"visio": SECRET}
    assert config.policy.open_call_servers == ("example.org",)


def test_https_public_url_gives_wss(tmp_path: Path) -> None:
    config, _ = parse_config(
        config_data(
            appservice={"as_token": "a" * 32, "hs_token": "h" * 32, "public_url": "https://v.example.org/"}
        ),
        tmp_path,
    )
    assert (config.focus.public_url, config.focus.livekit_url) == (
        "https://v.example.org",
        "wss://v.example.org",
    )
    config, _ = parse_config(
        config_data({"api_secret": SECRET, "public_url": "https://calls.example.org/visio"}), tmp_path
    )
    assert config.focus.livekit_url == "wss://calls.example.org/visio"


def test_explicit_values(tmp_path: Path) -> None:
    focus = {
        "enabled": True,
        "public_url": "https://visio.example.org",
        "livekit_url": "wss://sfu.example.org/",
        "api_key": "key-1",
        "api_secret": SECRET,
        "token_lifetime": "15m",
        "verify_federation_tls": True,
        "homeserver_urls": {
            "partner.example.net": "https://hs.partner.example.net:8448/",
            "[::1]:8448": "http://[::1]:8008",
        },
    }
    config, warnings = parse_config(config_data(focus), tmp_path)
    assert warnings == []
    f = config.focus
    assert (f.public_url, f.livekit_url, f.api_key, f.token_lifetime) == (
        "https://visio.example.org",
        "wss://sfu.example.org",
        "key-1",
        900,
    )
    assert f.homeserver_urls == {
        "partner.example.net": "https://hs.partner.example.net:8448",
        "[::1]:8448": "http://[::1]:8008",
    }


def test_secret_is_required_while_enabled(tmp_path: Path) -> None:
    assert errors_of(config_data({}), tmp_path) == [
        "focus.api_secret: required while focus.enabled is true: set focus.api_secret or "
        "focus.api_secret_file (generate-config writes a random one), or set focus.enabled: false"
    ]
    # A config without any focus section says the same.
    data = config_data()
    del data["focus"]
    assert len(errors_of(data, tmp_path)) == 1


def test_disabled_focus_needs_no_secret(tmp_path: Path) -> None:
    config, _ = parse_config(config_data({"enabled": False}), tmp_path)
    assert config.focus.enabled is False
    assert config.focus.api_secret == ""


def test_secret_from_file(tmp_path: Path) -> None:
    (tmp_path / "focus.key").write_text(SECRET + "\n")
    config, _ = parse_config(config_data({"api_secret_file": "focus.key"}), tmp_path)
    assert config.focus.api_secret == SECRET


@pytest.mark.parametrize(
    ("focus", "expected"),
    [
        (
            {"api_secret": "x" * 20},
            "focus.api_secret: too short: at least 32 characters (an HS256 key), got 20",
        ),
        ({"api_secret": "x" * 10}, "focus.api_secret: too short: at least 16 characters, got 10"),
        (
            {"api_secret": 12345},
            "focus.api_secret: expected a string, got a number (put the secret in quotes)",
        ),
        (
            {"api_secret": SECRET, "api_secret_file": "k"},
            "focus.api_secret: set either focus.api_secret or focus.api_secret_file, not both",
        ),
        ({"api_secret_file": "absent.key"}, "focus.api_secret_file: cannot read"),
        ({"api_secret": SECRET, "enabled": "yes"}, "focus.enabled: expected true or false, got 'yes'"),
        (
            {"api_secret": SECRET, "public_url": "visio.example.org"},
            "focus.public_url: expected an http:// or https:// URL",
        ),
        (
            {"api_secret": SECRET, "livekit_url": "https://sfu.example.org"},
            "focus.livekit_url: expected a ws:// or wss:// URL, got 'https://sfu.example.org'",
        ),
        ({"api_secret": SECRET, "livekit_url": "wss://"}, "focus.livekit_url: the URL has no host"),
        (
            {"api_secret": SECRET, "livekit_url": "wss://x.org/?a=1"},
            "focus.livekit_url: the URL must not have a query",
        ),
        (
            {"api_secret": SECRET, "api_key": "my key"},
            "focus.api_key: expected letters, digits and . _ ~ - only",
        ),
        (
            {"api_secret": SECRET, "token_lifetime": "soon"},
            "focus.token_lifetime: expected a duration such as 30s",
        ),
        (
            {"api_secret": SECRET, "token_lifetime": "10s"},
            "focus.token_lifetime: expected a duration from 1m to 1d, got '10s'",
        ),
        (
            {"api_secret": SECRET, "token_lifetime": "2d"},
            "focus.token_lifetime: expected a duration from 1m to 1d",
        ),
        ({"api_secret": SECRET, "token_lifetime": True}, "focus.token_lifetime: expected a duration"),
        (
            {"api_secret": SECRET, "verify_federation_tls": "no"},
            "focus.verify_federation_tls: expected true or false",
        ),
        (
            {"api_secret": SECRET, "homeserver_urls": ["x"]},
            "focus.homeserver_urls: expected a mapping of server name -> URL",
        ),
        (
            {"api_secret": SECRET, "homeserver_urls": {"bad name": "https://x.org"}},
            "focus.homeserver_urls.bad name: expected a host name",
        ),
        (
            {"api_secret": SECRET, "homeserver_urls": {"ok.example.org": "ftp://x.org"}},
            "focus.homeserver_urls.ok.example.org: expected an http:// or https:// URL, got 'ftp://x.org'",
        ),
        (
            {"api_secret": SECRET, "homeserver_urls": {"ok.example.org": 5}},
            "focus.homeserver_urls.ok.example.org: expected an http(s) URL, got 5",
        ),
    ],
)
def test_each_mistake_names_its_key_path(focus: dict[str, Any], expected: str, tmp_path: Path) -> None:
    errors = errors_of(config_data(focus), tmp_path)
    assert len(errors) == 1, errors
    assert errors[0].startswith(expected), errors[0]


def test_secrets_never_appear_in_messages_or_repr(tmp_path: Path) -> None:
    short = "Sup3rSecretButShort!"
    errors = errors_of(config_data({"api_secret": short}), tmp_path)
    assert short not in " ".join(errors)
    config, _ = parse_config(config_data(), tmp_path)
    assert SECRET not in repr(config)


def test_insecure_tls_is_a_warning(tmp_path: Path) -> None:
    _config, warnings = parse_config(
        config_data({"api_secret": SECRET, "verify_federation_tls": False}), tmp_path
    )
    assert len(warnings) == 1 and warnings[0].startswith("focus.verify_federation_tls: false:")


def test_unknown_focus_key_is_a_warning(tmp_path: Path) -> None:
    _config, warnings = parse_config(config_data({"api_secret": SECRET, "livekit_ur": "wss://x"}), tmp_path)
    assert warnings == ["unknown key 'focus.livekit_ur' (did you mean 'focus.livekit_url'?); it is ignored"]


def test_open_call_servers(tmp_path: Path) -> None:
    policy = {
        "allowed_servers": ["example.org", "*.gouv.fr"],
        "open_call_servers": ["example.org", "agent.*.gouv.fr"],
    }
    config, _ = parse_config(config_data(policy=policy), tmp_path)
    p = config.policy
    assert p.open_call_servers == ("example.org", "agent.*.gouv.fr")
    assert p.server_may_open_calls("EXAMPLE.org") and p.server_may_open_calls("agent.x.gouv.fr")
    assert not p.server_may_open_calls("other.gouv.fr") and p.server_allowed("other.gouv.fr")
    # A single string is a one-item list; an empty list lets nobody open a call.
    config, _ = parse_config(config_data(policy={"open_call_servers": "*"}), tmp_path)
    assert config.policy.server_may_open_calls("anything.example")
    config, _ = parse_config(config_data(policy={"open_call_servers": []}), tmp_path)
    assert config.policy.open_call_servers == ()


def test_bad_open_call_server_pattern(tmp_path: Path) -> None:
    errors = errors_of(config_data(policy={"open_call_servers": ["example.org", "bad/name", 3]}), tmp_path)
    assert errors == [
        "policy.open_call_servers[2]: expected a string, got 3",
        "policy.open_call_servers[1]: expected a server name, '*' allowed as wildcard, got 'bad/name'",
    ]


def test_errors_carry_lines_through_the_yaml(tmp_path: Path) -> None:
    text = (
        generate_config_text(server_name="example.org") + "  homeserver_urls:\n    bad name: https://x.org\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, tmp_path)
    line = len(text.splitlines())
    assert info.value.errors == [
        f"focus.homeserver_urls.bad name: expected a host name, IPv4 address or [IPv6] address, optionally with :port, got 'bad name' (line {line})"
    ]


def test_generated_config_has_a_fresh_focus_secret(tmp_path: Path) -> None:
    c1, w1 = parse_config_text(generate_config_text(), tmp_path)
    c2, _ = parse_config_text(generate_config_text(), tmp_path)
    assert w1 == []
    assert c1.focus.enabled and len(c1.focus.api_secret) >= 32
    assert c1.focus.api_secret != c2.focus.api_secret
    assert c1.focus.api_secret not in {c1.appservice.as_token, c1.appservice.hs_token, c1.crypto.pickle_key}


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90.0),
        ("90s", 90.0),
        ("15m", 900.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        ("1d", 86400.0),
        ("1.5h", 5400.0),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "h", "1 h", "1H", "-1h", "1h-", True, 1.5, None, "1w"])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(value)
