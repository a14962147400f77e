"""The configuration as files: YAML problems with lines, the example, generated configs, docs, registration."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from visio_matrix.config import (
    OVERRIDES,
    SCHEMA,
    ConfigError,
    generate_config_text,
    load_config,
    parse_config_text,
    registration_dict,
    registration_text,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "example.yaml"
DOCS = ROOT / "docs" / "configuration.md"
ALL_KEYS = [f"{section}.{key}" for section, keys in SCHEMA.items() for key in keys]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_example_config_is_valid_without_warnings() -> None:
    config, warnings = load_config(EXAMPLE)
    assert warnings == []
    assert config.homeserver.server_name == "example.org"
    # Relative paths are resolved from the example's own folder.
    assert config.database.sqlite_path == EXAMPLE.parent / "visio.db"


def _mentioned_keys(text: str) -> set[str]:
    """Key paths written in a YAML text, commented-out alternatives (``# as_token_file: ...``) included."""
    found, section = set(), ""
    for line in text.splitlines():
        top = re.match(r"^([a-z_]+):", line)
        if top:
            section = top.group(1)
            continue
        nested = re.match(r"^\s+(?:#\s*)?([a-z_]+):(?:\s|$)", line)
        if nested and section:
            found.add(f"{section}.{nested.group(1)}")
    return found


@pytest.mark.parametrize("source", ["example", "generated"])
def test_every_key_appears_in_the_example_and_the_generated_config(source: str) -> None:
    text = EXAMPLE.read_text() if source == "example" else generate_config_text()
    mentioned = _mentioned_keys(text)
    # The secret files are alternatives: the generated file points at them in comments only.
    missing = [
        k for k in ALL_KEYS if k not in mentioned and not (source == "generated" and k.endswith("_file"))
    ]
    assert missing == []
    assert mentioned - set(ALL_KEYS) == set()


def test_every_key_is_documented() -> None:
    docs = DOCS.read_text()
    missing = [key for key in ALL_KEYS if f"| `{key}` |" not in docs]
    assert missing == []


def test_generated_configs_validate_and_never_share_secrets(tmp_path: Path) -> None:
    first, second = generate_config_text(), generate_config_text()
    c1, w1 = parse_config_text(first, tmp_path)
    c2, w2 = parse_config_text(second, tmp_path)
    assert w1 == w2 == []
    secrets1 = {c1.appservice.as_token, c1.appservice.hs_token, c1.crypto.pickle_key}
    secrets2 = {c2.appservice.as_token, c2.appservice.hs_token, c2.crypto.pickle_key}
    assert len(secrets1) == 3 and len(secrets2) == 3
    assert secrets1.isdisjoint(secrets2)
    assert all(len(s) >= 32 for s in secrets1)


def test_generate_overrides_are_applied(tmp_path: Path) -> None:
    text = generate_config_text(
        server_name="localhost:8481",
        homeserver_url="http://127.0.0.1:8481",
        port=29999,
        host="127.0.0.1",
        relay_bind_address="0.0.0.0",
        relay_public_addresses=["192.0.2.7"],
        allowed_servers=["localhost:8481", "*.example.org"],
        database_url="sqlite:///state/visio.db",
        log_format="json",
        metrics_enabled=False,
    )
    config, warnings = parse_config_text(text, tmp_path)
    assert warnings == []
    assert config.homeserver.server_name == "localhost:8481"
    assert config.appservice.public_url == "http://127.0.0.1:29999"
    assert config.relay.public_addresses == ("192.0.2.7",)
    assert config.policy.allowed_servers == ("localhost:8481", "*.example.org")
    assert config.database.sqlite_path == tmp_path / "state" / "visio.db"
    assert config.logging.format == "json"
    assert config.metrics.enabled is False


def test_generate_rejects_unknown_overrides() -> None:
    with pytest.raises(TypeError, match="unknown override"):
        generate_config_text(servername="x")
    assert "server_name" in OVERRIDES


def test_errors_carry_the_line_of_the_key_or_its_section(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "homeserver:\n"
        "  url: http://127.0.0.1:8008\n"
        "appservice:\n"
        "  as_token: aaaaaaaaaaaaaaaaaaaaaaaa\n"
        "  hs_token: hhhhhhhhhhhhhhhhhhhhhhhh\n"
        "  port: abc\n"
        "crypto:\n"
        "  pickle_key: pppppppppppppppppppppppp\n"
        "focus:\n"
        "  api_secret: ffffffffffffffffffffffffffffffffffffffff\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [
        "homeserver.server_name: required: the homeserver's server name (e.g. example.org) (line 1)",
        "appservice.port: expected an integer 1-65535, got 'abc' (line 6)",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "homeserver: [1\nappservice: {}\n",
            r"config\.yaml: line 2, column 11: invalid YAML: .*expected ',' or ']'",
        ),
        ("homeserver:\n\turl: x\n", r"config\.yaml: line 2, column 1: invalid YAML: .*found character '\\t'"),
        ("a: 1\n---\nb: 2\n", r"config\.yaml: line 2, column 1: invalid YAML: .*single document"),
        (
            "- homeserver\n- appservice\n",
            r"the top level must be a mapping of sections .* got a list \(line 1\)",
        ),
        ("", r"the configuration is empty"),
        ("# only a comment\n", r"the configuration is empty"),
    ],
)
def test_yaml_problems_are_one_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert len(info.value.errors) == 1
    assert re.search(expected, info.value.errors[0]), info.value.errors[0]


def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml")
    assert info.value.errors == [
        f"{tmp_path / 'absent.yaml'}: cannot read the configuration file: No such file or directory"
    ]


def test_duplicate_and_unknown_keys_are_warnings_with_lines(tmp_path: Path) -> None:
    text = generate_config_text() + "relay:\n  bind_adress: 10.0.0.1\nmetrics:\n  enabled: false\n"
    path = write(tmp_path, text)
    config, warnings = load_config(path)
    lines = text.splitlines()
    first_relay = lines.index("relay:") + 1
    second_relay = len(lines) - 3
    first_metrics = lines.index("metrics:") + 1
    assert warnings == [
        f"relay: written twice (lines {first_relay} and {second_relay}); the last one is used",
        f"metrics: written twice (lines {first_metrics} and {len(lines) - 1}); the last one is used",
        f"unknown key 'relay.bind_adress' (did you mean 'relay.bind_address'?); it is ignored (line {second_relay + 1})",
    ]
    assert config.metrics.enabled is False


def test_paths_are_relative_to_the_config_file_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "pickle").write_text("k" * 40 + "\n")
    text = generate_config_text().replace('  pickle_key: "', '  pickle_key_file: "pickle"\n  # was: "')
    (folder / "config.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    config, _ = load_config(Path("etc/config.yaml"))
    assert config.crypto.pickle_key == "k" * 40
    assert config.crypto.store_path == folder / "crypto"
    assert config.database.sqlite_path == folder / "visio.db"


def test_registration_content(tmp_path: Path) -> None:
    text = generate_config_text(server_name="localhost:8481", public_url="http://127.0.0.1:29381")
    config, _ = parse_config_text(text, tmp_path)
    reg = registration_dict(config)
    assert reg == {
        "id": "visio-matrix",
        "url": "http://127.0.0.1:29381",
        "as_token": config.appservice.as_token,
        "hs_token": config.appservice.hs_token,
        # Not the bot: Synapse refuses /sync to the sender, and the bot's E2EE device needs /sync.
        "sender_localpart": "_visio_appservice",
        "namespaces": {
            "users": [
                {"exclusive": True, "regex": r"@visio:localhost:8481"},
                {"exclusive": True, "regex": r"@_visio_.*:localhost:8481"},
            ],
            "aliases": [],
            "rooms": [],
        },
        "rate_limited": False,
        "receive_ephemeral": True,
        "de.sorunome.msc2409.push_ephemeral": True,
        "org.matrix.msc3202": True,
        "io.element.msc4190": False,
    }
    assert yaml.safe_load(registration_text(config)) == reg


def test_registration_regexes_escape_dots(tmp_path: Path) -> None:
    config, _ = parse_config_text(generate_config_text(server_name="matrix.example.org"), tmp_path)
    users = registration_dict(config)["namespaces"]["users"]  # type: ignore[index]
    assert [u["regex"] for u in users] == [r"@visio:matrix\.example\.org", r"@_visio_.*:matrix\.example\.org"]
    assert re.fullmatch(users[1]["regex"], "@_visio_bob:matrix.example.org")
    assert not re.fullmatch(users[1]["regex"], "@_visio_bob:matrixXexample.org")


def test_registration_is_accepted_by_synapse(tmp_path: Path) -> None:
    """Synapse's own loader parses the registration (namespaces, flags) without complaint."""
    from synapse.config import appservice  # matrix-synapse is a dev dependency: never skipped
    from synapse.types import UserID

    config, _ = parse_config_text(generate_config_text(server_name="localhost:8481"), tmp_path)
    reg_file = tmp_path / "registration.yaml"
    reg_file.write_text(registration_text(config))

    [service] = appservice.load_appservices("localhost:8481", [str(reg_file)])
    assert service.id == "visio-matrix"
    assert service.rate_limited is False
    assert service.is_interested_in_user("@_visio_alice:localhost:8481")
    assert service.is_exclusive_user("@visio:localhost:8481")
    assert not service.is_exclusive_user("@alice:localhost:8481")
    assert service.is_exclusive_user("@_visio_appservice:localhost:8481")
    assert service.sender == UserID.from_string("@_visio_appservice:localhost:8481")
