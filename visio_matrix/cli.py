"""The ``visio-matrix`` command: generate-config, generate-registration, check-config, identity, run.

Argument parsing and file writing only; what the commands produce lives in ``visio_matrix.config``
and the service itself in ``visio_matrix.app`` (imported lazily by ``run``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from visio_matrix import __version__
from visio_matrix.config import (
    Config,
    ConfigError,
    generate_config_text,
    load_config,
    parse_config_text,
    registration_text,
)
from visio_matrix.config.generate import peer_lines

if TYPE_CHECKING:
    from visio_matrix.crypto.peer_trust import BotIdentity

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visio-matrix", description="Sovereign video calls for Matrix: appservice bot and media relay."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser("generate-config", help="write a commented configuration with fresh secrets")
    gen.add_argument("-o", "--output", required=True, type=Path, help="file to write (mode 0600)")
    gen.add_argument("--force", action="store_true", help="overwrite an existing file")
    gen.add_argument("--server-name", help="homeserver.server_name (e.g. example.org or localhost:8481)")
    gen.add_argument("--homeserver-url", help="homeserver.url (e.g. http://127.0.0.1:8008)")
    gen.add_argument("--appservice-id", help="appservice.id")
    gen.add_argument("--host", help="appservice.host (listener address)")
    gen.add_argument("--port", type=int, help="appservice.port")
    gen.add_argument("--public-url", help="appservice.public_url (how the homeserver reaches the service)")
    gen.add_argument("--bot-localpart", help="appservice.bot_localpart")
    gen.add_argument("--user-prefix", help="appservice.user_prefix")
    gen.add_argument("--database-url", help="database.url (sqlite:///visio.db or postgresql://...)")
    gen.add_argument("--crypto-store-path", help="crypto.store_path")
    gen.add_argument("--relay-bind-address", help="relay.bind_address")
    gen.add_argument(
        "--relay-public-address",
        action="append",
        dest="relay_public_addresses",
        help="relay.public_addresses",
    )
    gen.add_argument("--udp-port-min", type=int, help="relay.udp_port_min")
    gen.add_argument("--udp-port-max", type=int, help="relay.udp_port_max")
    gen.add_argument(
        "--allowed-server",
        action="append",
        dest="allowed_servers",
        help="policy.allowed_servers (repeatable)",
    )
    gen.add_argument("--log-level", help="logging.level")
    gen.add_argument("--log-format", help="logging.format (text or json)")
    gen.set_defaults(handler=_generate_config)

    reg = commands.add_parser("generate-registration", help="write the appservice registration for Synapse")
    reg.add_argument("-c", "--config", required=True, type=Path, help="configuration file")
    reg.add_argument("-o", "--output", type=Path, help="file to write (mode 0600); default: standard output")
    reg.set_defaults(handler=_generate_registration)

    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("-c", "--config", required=True, type=Path, help="configuration file")
    check.set_defaults(handler=_check_config)

    ident = commands.add_parser(
        "identity",
        help="print the bot's keys and the federation.peers entry other ministries paste (asks the homeserver)",
    )
    ident.add_argument("-c", "--config", required=True, type=Path, help="configuration file")
    ident.set_defaults(handler=_identity)

    run = commands.add_parser("run", help="run the service until SIGINT/SIGTERM")
    run.add_argument("-c", "--config", required=True, type=Path, help="configuration file")
    run.set_defaults(handler=_run)
    return parser


_GENERATE_OPTIONS = (
    "server_name",
    "homeserver_url",
    "appservice_id",
    "host",
    "port",
    "public_url",
    "bot_localpart",
    "user_prefix",
    "database_url",
    "crypto_store_path",
    "relay_bind_address",
    "relay_public_addresses",
    "udp_port_min",
    "udp_port_max",
    "allowed_servers",
    "log_level",
    "log_format",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse already printed them
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler = args.handler
    code: int = handler(args)
    return code


def _print_errors(exc: ConfigError, source: Path) -> None:
    count = len(exc.errors)
    print(f"{source}: {count} error{'s' if count != 1 else ''}", file=sys.stderr)
    for error in exc.errors:
        print(f"error: {error}", file=sys.stderr)
    _print_warnings(exc.warnings)


def _print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def _load(path: Path) -> tuple[Config, list[str]] | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        _print_errors(exc, path)
        return None


def write_private(path: Path, text: str, *, force: bool) -> None:
    """Write ``text`` to ``path`` with mode 0600 (never readable by others, even briefly).

    Raises FileExistsError when the file exists and ``force`` is false.
    """
    if not force:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        return
    # mkstemp creates the file 0600; the rename replaces the old file in one step.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _generate_config(args: argparse.Namespace) -> int:
    overrides = {name: getattr(args, name) for name in _GENERATE_OPTIONS}
    text = generate_config_text(**overrides)
    output: Path = args.output
    try:
        # Check before writing, so that a bad --server-name never leaves a broken file behind.
        parse_config_text(text, output.absolute().parent, name=str(output))
    except ConfigError as exc:
        print("the options given make an invalid configuration:", file=sys.stderr)
        for error in exc.errors:
            print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    return _write_reporting(output, text, force=args.force)


def _write_reporting(output: Path, text: str, force: bool) -> int:
    """``write_private`` with the outcome told to the admin; returns the exit code."""
    try:
        write_private(output, text, force=force)
    except FileExistsError:
        print(f"error: {output} exists; use --force to overwrite it", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:
        print(f"error: cannot write {output}: {exc.strerror}", file=sys.stderr)
        return EXIT_INVALID
    print(f"wrote {output}", file=sys.stderr)
    return EXIT_OK


def _generate_registration(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    if loaded is None:
        return EXIT_INVALID
    config, warnings = loaded
    _print_warnings(warnings)
    text = registration_text(config)
    if args.output is None:
        sys.stdout.write(text)
        return EXIT_OK
    return _write_reporting(args.output, text, force=True)


def _check_config(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    if loaded is None:
        return EXIT_INVALID
    _config, warnings = loaded
    _print_warnings(warnings)
    suffix = f" ({len(warnings)} warning{'s' if len(warnings) != 1 else ''})" if warnings else ""
    print(f"{args.config}: valid{suffix}")
    return EXIT_OK


def identity_text(identity: BotIdentity) -> str:
    """What ``visio-matrix identity`` prints: the bot's keys, then a ready-to-paste YAML entry."""
    lines = [f"# Bot {identity.user_id} of {identity.server_name}"]
    if identity.master_key is not None:
        lines.append(f"# Cross-signing master key: {identity.master_key}")
    else:
        lines.append("# No cross-signing master key published: pin the device keys (start the service once")
        lines.append("# to create it, then run this again).")
    for device_id, ed25519 in sorted(identity.devices.items()):
        signed = " (cross-signed)" if device_id in identity.cross_signed else " (not cross-signed)"
        lines.append(f"# Device {device_id}: ed25519 {ed25519}{signed}")
    if not identity.devices:
        lines.append("# No device published yet: start the service once, then run this again.")
    lines.append("# For the other ministries' config.yaml (append the entry to their federation.peers):")
    lines.append("federation:")
    lines.append("  peers:")
    lines.extend(f"    {line}" for line in peer_lines([identity.peer_entry()]))
    return "\n".join(lines) + "\n"


def _identity(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    if loaded is None:
        return EXIT_INVALID
    config, warnings = loaded
    _print_warnings(warnings)
    import aiohttp

    from visio_matrix.appservice.homeserver import MatrixError
    from visio_matrix.crypto.peer_trust import fetch_bot_identity

    try:
        identity = asyncio.run(fetch_bot_identity(config))
    except MatrixError as exc:
        hint = " (the service registers its bot on first start: run it once)" if exc.status == 403 else ""
        print(
            f"error: the homeserver at {config.homeserver.url} refused the key query: {exc}{hint}",
            file=sys.stderr,
        )
        return EXIT_INVALID
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(
            f"error: cannot read the bot's keys from the homeserver at {config.homeserver.url}: "
            f"{exc or type(exc).__name__}",
            file=sys.stderr,
        )
        return EXIT_INVALID
    sys.stdout.write(identity_text(identity))
    if identity.master_key is None and not identity.devices:
        print(
            f"error: {identity.user_id} has no published keys: start the service once first", file=sys.stderr
        )
        return EXIT_INVALID
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    if loaded is None:
        return EXIT_INVALID
    config, warnings = loaded
    from visio_matrix.logging_setup import configure_logging

    configure_logging(config.logging)
    for warning in warnings:
        log.warning("configuration: %s", warning)
    # Imported here: the other commands must work without loading the whole service.
    from visio_matrix.app import run_service

    try:
        return asyncio.run(run_service(config))
    except KeyboardInterrupt:
        # Ctrl-C before the service installed its own signal handlers.
        return 130
