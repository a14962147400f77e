"""A real Synapse homeserver run as a subprocess, for integration tests and `scripts/demo`.

`LocalSynapse` writes a loopback-only, SQLite-backed configuration tuned for tests (high rate limits,
cheap bcrypt, no outbound traffic except optional federation with other local servers), starts
`python -m synapse.app.homeserver`, waits until the client API answers, registers users through the
shared-secret admin API, and stops the process again.

The process is a plain `subprocess.Popen` (not an asyncio subprocess) so that one homeserver can be
shared by tests that each run on their own event loop; only HTTP is asyncio-bound.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import yaml

log = logging.getLogger(__name__)

LOOPBACK_RANGES = ["127.0.0.0/8", "::1/128"]
_HIGH_RATE = {"per_second": 1000, "burst_count": 10000}


class SynapseError(RuntimeError):
    """Synapse failed to start, or refused an admin request."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`base` updated with `extra`; nested mappings are merged, everything else is replaced."""
    merged = dict(base)
    for key, value in extra.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged


def rate_limit_config() -> dict[str, Any]:
    """Every `rc_*` section Synapse 1.163 reads, set far above what a test suite does."""
    high = dict(_HIGH_RATE)
    return {
        "rc_message": high,
        "rc_registration": high,
        "rc_registration_token_validity": high,
        "rc_login": {"address": high, "account": high, "failed_attempts": high},
        "rc_admin_redaction": high,
        "rc_joins": {"local": high, "remote": high},
        "rc_joins_per_room": high,
        "rc_key_requests": high,
        "rc_3pid_validation": high,
        "rc_invites": {"per_room": high, "per_user": high, "per_issuer": high},
        "rc_third_party_invite": high,
        "rc_media_create": high,
        "rc_presence": {"per_user": high},
        "rc_delayed_event_mgmt": high,
        "rc_room_creation": high,
        "rc_reports": high,
        "rc_user_directory": high,
        "rc_profile": high,
        "rc_federation": {
            "window_size": 1000,
            "sleep_limit": 10000,
            "sleep_delay": 0,
            "reject_limit": 10000,
            "concurrent": 100,
        },
        "federation_rr_transactions_per_room_per_second": 1000,
    }


def matrix_rtc_config(livekit_service_url: str) -> dict[str, Any]:
    """Synapse 1.163 options that make Element Call use our focus: MSC4143 transport discovery
    (``GET /_matrix/client/unstable/org.matrix.msc4143/rtc/transports``), delayed events (the
    call-member leave event) and MSC4222 ``state_after`` in sync."""
    return {
        "experimental_features": {"msc4143_enabled": True, "msc4222_enabled": True},
        "max_event_delay_duration": "24h",
        "matrix_rtc": {"transports": [{"type": "livekit", "livekit_service_url": livekit_service_url}]},
    }


def log_config(log_path: Path) -> dict[str, Any]:
    """A Python logging dictConfig for Synapse: INFO and above to one file."""
    return {
        "version": 1,
        "formatters": {
            "precise": {
                "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"
            }
        },
        "filters": {"context": {"()": "synapse.logging.context.LoggingContextFilter", "request": ""}},
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filters": ["context"],
                "filename": str(log_path),
                "encoding": "utf8",
            }
        },
        "loggers": {"synapse.storage.SQL": {"level": "WARNING"}},
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


def write_self_signed_cert(cert_path: Path, key_path: Path, hostname: str = "localhost") -> None:
    """A self-signed certificate for `hostname` and 127.0.0.1, valid ten years (federation TLS)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def registration_mac(shared_secret: str, nonce: str, username: str, password: str, admin: bool) -> str:
    """The HMAC-SHA1 that Synapse's `/_synapse/admin/v1/register` expects."""
    mac = hmac.new(shared_secret.encode(), digestmod=hashlib.sha1)
    for part in (nonce, username, password):
        mac.update(part.encode("utf8"))
        mac.update(b"\x00")
    mac.update(b"admin" if admin else b"notadmin")
    return mac.hexdigest()


class LocalSynapse:
    """One Synapse homeserver in `workdir`, listening on loopback only."""

    def __init__(
        self,
        workdir: Path,
        server_name: str | None = None,
        client_port: int | None = None,
        federation_port: int | None = None,
        appservice_registration_files: Sequence[Path] = (),
        extra_config: Mapping[str, object] | None = None,
        rtc_focus_url: str | None = None,
    ) -> None:
        """``rtc_focus_url``: advertise that MatrixRTC focus (``livekit_service_url``) to clients."""
        self.workdir = Path(workdir).resolve()
        self.client_port = client_port if client_port is not None else free_port()
        self.federation_port = federation_port
        self.server_name = server_name or f"localhost:{federation_port or self.client_port}"
        self.appservice_registration_files = [Path(p).resolve() for p in appservice_registration_files]
        self.extra_config: Mapping[str, object] = extra_config or {}
        self.rtc_focus_url = rtc_focus_url
        self._process: subprocess.Popen[bytes] | None = None
        self._stdout_file: Any = None

    # -- paths -------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def federation_url(self) -> str | None:
        return f"https://127.0.0.1:{self.federation_port}" if self.federation_port else None

    @property
    def config_path(self) -> Path:
        return self.workdir / "homeserver.yaml"

    @property
    def database_path(self) -> Path:
        return self.workdir / "homeserver.db"

    @property
    def log_path(self) -> Path:
        return self.workdir / "homeserver.log"

    @property
    def stdout_path(self) -> Path:
        return self.workdir / "stdout.log"

    @property
    def signing_key_path(self) -> Path:
        return self.workdir / "signing.key"

    @property
    def tls_cert_path(self) -> Path:
        return self.workdir / "tls.crt"

    @property
    def tls_key_path(self) -> Path:
        return self.workdir / "tls.key"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- configuration -----------------------------------------------------------------------------

    def _secrets(self) -> dict[str, str]:
        """Secrets made once per workdir and kept, so rewriting the config keeps tokens valid."""
        path = self.workdir / "secrets.json"
        if path.exists():
            stored: dict[str, str] = json.loads(path.read_text())
            return stored
        made = {name: secrets.token_urlsafe(32) for name in ("registration", "macaroon", "form")}
        self.workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(made))
        path.chmod(0o600)
        return made

    @property
    def registration_shared_secret(self) -> str:
        return self._secrets()["registration"]

    def config(self) -> dict[str, Any]:
        """The homeserver.yaml content (before `write_config` writes it)."""
        keys = self._secrets()
        federating = self.federation_port is not None
        # `openid` on the client listener: a focus can check OpenID tokens
        # (/_matrix/federation/v1/openid/userinfo) there without a federation listener.
        client_resources = ["client", "openid"] if federating else ["client", "federation", "openid"]
        listeners: list[dict[str, Any]] = [
            {
                "port": self.client_port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": client_resources, "compress": False}],
            }
        ]
        if federating:
            listeners.append(
                {
                    "port": self.federation_port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": True,
                    "x_forwarded": False,
                    "resources": [{"names": ["federation", "openid"], "compress": False}],
                }
            )
        config: dict[str, Any] = {
            "server_name": self.server_name,
            "public_baseurl": f"{self.base_url}/",
            "pid_file": str(self.workdir / "homeserver.pid"),
            "listeners": listeners,
            "database": {"name": "sqlite3", "args": {"database": str(self.database_path)}},
            "log_config": str(self.workdir / "log.yaml"),
            "media_store_path": str(self.workdir / "media_store"),
            "signing_key_path": str(self.signing_key_path),
            "registration_shared_secret": keys["registration"],
            "macaroon_secret_key": keys["macaroon"],
            "form_secret": keys["form"],
            "enable_registration": False,
            "report_stats": False,
            "bcrypt_rounds": 4,
            "suppress_key_server_warning": True,
            "trusted_key_servers": [],
            # Loopback is on Synapse's default blocklist; tests federate and call appservices there.
            # (Synapse 1.163 reads `ip_range_whitelist` for federation, identity servers and
            # appservices; `federation_ip_range_whitelist` was never an option.)
            "ip_range_whitelist": list(LOOPBACK_RANGES),
            "serve_server_wellknown": False,
            "url_preview_enabled": False,
            "presence": {"enabled": False},
            "enable_metrics": False,
            "app_service_config_files": [str(p) for p in self.appservice_registration_files],
            "experimental_features": {},
            **rate_limit_config(),
        }
        if federating:
            config["tls_certificate_path"] = str(self.tls_cert_path)
            config["tls_private_key_path"] = str(self.tls_key_path)
            config["federation_verify_certificates"] = False
            # A peer that was down is retried after 10 minutes by default: too long for a local stack
            # where tests stop and restart homeservers (Synapse also retries at once when the peer
            # contacts it again).
            config["federation"] = {
                "destination_min_retry_interval": "1s",
                "destination_max_retry_interval": "5s",
            }
        if self.rtc_focus_url is not None:
            config = deep_merge(config, matrix_rtc_config(self.rtc_focus_url))
        return deep_merge(config, self.extra_config)

    def write_config(self) -> Path:
        """Write homeserver.yaml, the log config and any missing key material; returns the config path."""
        from signedjson.key import generate_signing_key, write_signing_keys

        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "media_store").mkdir(exist_ok=True)
        if not self.signing_key_path.exists():
            with self.signing_key_path.open("w") as key_file:
                write_signing_keys(key_file, [generate_signing_key("a_" + secrets.token_hex(2))])
        if self.federation_port is not None and not (
            self.tls_cert_path.exists() and self.tls_key_path.exists()
        ):
            write_self_signed_cert(self.tls_cert_path, self.tls_key_path)
        (self.workdir / "log.yaml").write_text(yaml.safe_dump(log_config(self.log_path)))
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        return self.config_path

    # -- process -----------------------------------------------------------------------------------

    async def start(self, timeout: float = 60) -> None:
        """Start Synapse and return once its client API answers; raise `SynapseError` with its log tail."""
        if self.running:
            return
        self.write_config()
        started = time.monotonic()
        self._stdout_file = self.stdout_path.open("ab")
        # Popen (not asyncio's subprocess) so the process outlives the event loop that started it.
        self._process = subprocess.Popen(
            [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout_file,
            stderr=subprocess.STDOUT,
        )
        try:
            await self._wait_ready(timeout)
        except BaseException:
            self.terminate()
            raise
        log.info("Synapse %s up at %s in %.1fs", self.server_name, self.base_url, time.monotonic() - started)

    async def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"{self.base_url}/_matrix/client/versions"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while True:
                assert self._process is not None
                code = self._process.poll()
                if code is not None:
                    raise SynapseError(f"Synapse exited with code {code} during start-up:\n{self.log_tail()}")
                try:
                    async with session.get(url) as response:
                        if response.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise SynapseError(f"Synapse not ready after {timeout}s:\n{self.log_tail()}")
                await asyncio.sleep(0.1)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of Synapse's stdout/stderr and of its log file."""
        parts = []
        for path in (self.stdout_path, self.log_path):
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts) or "(no log written)"

    async def stop(self, timeout: float = 15) -> None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Does nothing when not running."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, timeout)
            except subprocess.TimeoutExpired:
                log.warning("Synapse %s ignored SIGTERM for %ss; killing it", self.server_name, timeout)
        self.terminate()

    def terminate(self, timeout: float = 15) -> None:
        """Blocking stop (for fixture teardown outside an event loop): SIGTERM, wait, SIGKILL."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if self._stdout_file is not None:
            self._stdout_file.close()
            self._stdout_file = None

    # -- admin API ---------------------------------------------------------------------------------

    def user_id(self, localpart: str) -> str:
        return f"@{localpart.lower()}:{self.server_name}"

    async def register_user(
        self, localpart: str, password: str, admin: bool = False, displayname: str | None = None
    ) -> str:
        """Register a user with the shared-secret admin API; an existing user just gives its ID."""
        url = f"{self.base_url}/_synapse/admin/v1/register"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            async with session.get(url) as response:
                nonce = (await response.json())["nonce"]
            body: dict[str, Any] = {
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "inhibit_login": True,
                "mac": registration_mac(self.registration_shared_secret, nonce, localpart, password, admin),
            }
            if displayname is not None:
                body["displayname"] = displayname
            async with session.post(url, json=body) as response:
                result = await response.json()
                if response.status == 200:
                    return str(result["user_id"])
                if result.get("errcode") == "M_USER_IN_USE":
                    return self.user_id(localpart)
                raise SynapseError(f"register {localpart}: HTTP {response.status} {result}")
