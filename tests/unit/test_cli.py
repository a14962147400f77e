"""The ``visio-matrix`` command line, driven through ``main([...])`` and once as ``python -m visio_matrix``."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from visio_matrix.cli import main
from visio_matrix.config import Config, LoggingConfig, load_config
from visio_matrix.logging_setup import configure_logging

ROOT = Path(__file__).resolve().parents[2]

# Three independent mistakes: a port that is not a number, a missing required key, a bad enum.
THREE_MISTAKES = """\
homeserver:
  url: http://127.0.0.1:8008
appservice:
  port: abc
  as_token: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
  hs_token: hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh
crypto:
  pickle_key: pppppppppppppppppppppppppppppppp
logging:
  level: LOUD
relay:
  bind_adress: 10.0.0.1
focus:
  api_secret: ffffffffffffffffffffffffffffffffffffffff
"""
EXPECTED_ERRORS = [
    "error: homeserver.server_name: required: the homeserver's server name (e.g. example.org) (line 1)",
    "error: appservice.port: expected an integer 1-65535, got 'abc' (line 4)",
    "error: logging.level: expected one of DEBUG, INFO, WARNING, ERROR, got 'LOUD' (line 10)",
]
EXPECTED_WARNING = (
    "warning: unknown key 'relay.bind_adress' (did you mean 'relay.bind_address'?); it is ignored (line 12)"
)


def _generate(tmp_path: Path, name: str = "config.yaml", *extra: str) -> Path:
    path = tmp_path / name
    assert main(["generate-config", "-o", str(path), "--server-name", "localhost:8481", *extra]) == 0
    return path


def test_check_config_reports_three_mistakes_with_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(THREE_MISTAKES)
    assert main(["check-config", "-c", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{path}: 3 errors"
    assert [line for line in err if line.startswith("error: ")] == EXPECTED_ERRORS
    assert [line for line in err if line.startswith("warning: ")] == [EXPECTED_WARNING]


def test_python_dash_m_check_config_three_mistakes(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(THREE_MISTAKES)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "visio_matrix", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error: ")] == EXPECTED_ERRORS
    assert proc.stdout == ""


def test_check_config_valid_prints_warnings_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _generate(tmp_path)
    capsys.readouterr()
    assert main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr()
    assert out.out == f"{path}: valid\n"
    assert out.err == ""
    path.write_text(path.read_text() + "extra: 1\n")
    assert main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr()
    assert out.out == f"{path}: valid (1 warning)\n"
    assert out.err.startswith("warning: unknown key 'extra'; it is ignored")


def test_generate_config_twice_gives_different_secrets_both_valid(tmp_path: Path) -> None:
    first, second = _generate(tmp_path, "one.yaml"), _generate(tmp_path, "two.yaml")
    c1, w1 = load_config(first)
    c2, w2 = load_config(second)
    assert w1 == w2 == []
    assert c1.appservice.as_token != c2.appservice.as_token
    assert c1.appservice.hs_token != c2.appservice.hs_token
    assert c1.crypto.pickle_key != c2.crypto.pickle_key
    assert c1.homeserver.server_name == "localhost:8481"


def test_generate_config_file_is_private_and_not_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _generate(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_text()
    assert main(["generate-config", "-o", str(path)]) == 1
    assert "exists; use --force" in capsys.readouterr().err
    assert path.read_text() == before
    path.chmod(0o644)
    assert main(["generate-config", "-o", str(path), "--force"]) == 0
    assert path.read_text() != before
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temporary file left


def test_generate_config_options_become_keys(tmp_path: Path) -> None:
    path = _generate(
        tmp_path,
        "config.yaml",
        "--homeserver-url",
        "http://127.0.0.1:8481",
        "--port",
        "29555",
        "--relay-bind-address",
        "0.0.0.0",
        "--relay-public-address",
        "192.0.2.1",
        "--allowed-server",
        "localhost:8481",
        "--allowed-server",
        "*.example.org",
        "--log-format",
        "json",
    )
    config, warnings = load_config(path)
    assert warnings == []
    assert config.homeserver.url == "http://127.0.0.1:8481"
    assert config.appservice.port == 29555
    assert config.relay.public_addresses == ("192.0.2.1",)
    assert config.policy.allowed_servers == ("localhost:8481", "*.example.org")
    assert config.logging.format == "json"


def test_generate_config_refuses_options_that_make_an_invalid_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    assert main(["generate-config", "-o", str(path), "--server-name", "bad name", "--port", "70000"]) == 1
    err = capsys.readouterr().err
    assert "error: homeserver.server_name: expected a host name" in err
    assert "error: appservice.port: expected an integer 1-65535, got 70000" in err
    assert not path.exists()


def test_generate_registration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = _generate(tmp_path)
    config, _ = load_config(config_path)
    reg_path = tmp_path / "registration.yaml"
    assert main(["generate-registration", "-c", str(config_path), "-o", str(reg_path)]) == 0
    assert stat.S_IMODE(reg_path.stat().st_mode) == 0o600
    reg = yaml.safe_load(reg_path.read_text())
    assert (reg["as_token"], reg["hs_token"]) == (config.appservice.as_token, config.appservice.hs_token)
    assert reg["rate_limited"] is False
    assert reg["namespaces"]["users"][1] == {"exclusive": True, "regex": "@_visio_.*:localhost:8481"}
    capsys.readouterr()
    assert main(["generate-registration", "-c", str(config_path)]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == reg


def test_generate_registration_from_an_invalid_config_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(THREE_MISTAKES)
    out = tmp_path / "registration.yaml"
    assert main(["generate-registration", "-c", str(bad), "-o", str(out)]) == 1
    assert "error: appservice.port" in capsys.readouterr().err
    assert not out.exists()


def test_usage_errors_return_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["check-config"]) == 2
    assert main(["frobnicate"]) == 2
    assert "usage: visio-matrix" in capsys.readouterr().err
    assert main(["--help"]) == 0


def test_run_validates_configures_logging_and_calls_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _generate(tmp_path, "config.yaml", "--log-level", "WARNING")
    seen: list[Config] = []

    async def run_service(config: Config) -> int:
        seen.append(config)
        return 7

    fake_app = types.ModuleType("visio_matrix.app")
    fake_app.run_service = run_service  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "visio_matrix.app", fake_app)
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        assert main(["run", "-c", str(path)]) == 7
        assert root.level == logging.WARNING
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert len(seen) == 1 and seen[0].homeserver.server_name == "localhost:8481"


def test_run_with_an_invalid_config_does_not_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(THREE_MISTAKES)
    fake_app = types.ModuleType("visio_matrix.app")  # no run_service: importing it would fail the test
    monkeypatch.setitem(sys.modules, "visio_matrix.app", fake_app)
    assert main(["run", "-c", str(bad)]) == 1


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_configure_logging_formats(fmt: str, tmp_path: Path) -> None:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    stream_path = tmp_path / "log.txt"
    try:
        with stream_path.open("w") as stream:
            # A second call replaces the first handler instead of adding one.
            configure_logging(LoggingConfig(level="ERROR", format="text"), stream)
            configure_logging(LoggingConfig(level="INFO", format="json" if fmt == "json" else "text"), stream)
            log = logging.getLogger("visio_matrix.test")
            log.debug("hidden")
            log.info("hello %s", "world", extra={"room_id": "!r:x"})
            try:
                raise ValueError("boom")
            except ValueError:
                log.exception("failed")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    lines = stream_path.read_text().splitlines()
    if fmt == "json":
        records = [json.loads(line) for line in lines]
        # Called twice, installed once: two records, not four.
        assert [(r["level"], r["logger"], r["msg"]) for r in records] == [
            ("INFO", "visio_matrix.test", "hello world"),
            ("ERROR", "visio_matrix.test", "failed"),
        ]
        assert records[0]["room_id"] == "!r:x"
        assert "ValueError: boom" in records[1]["exc"]
        assert records[0]["ts"].endswith("+00:00")
    else:
        assert "INFO    visio_matrix.test: hello world" in lines[0]
        assert sum("hello world" in line for line in lines) == 1
        assert "ValueError: boom" in "\n".join(lines)
