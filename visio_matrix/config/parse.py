"""Validation of the parsed YAML document into ``Config``: pure, no file or YAML access here.

``SCHEMA`` lists every section and key (the docs and the example are tested against it). Each
``_section`` function reads one section; all problems are collected and raised together.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import cast, get_args
from urllib.parse import urlsplit

from visio_matrix.config.errors import ConfigError, Issue
from visio_matrix.config.federation import FEDERATION_KEYS, parse_federation
from visio_matrix.config.model import (
    AppserviceConfig,
    Config,
    CryptoConfig,
    DatabaseConfig,
    FocusConfig,
    GuestsConfig,
    HomeserverConfig,
    LogFormat,
    LoggingConfig,
    LogLevel,
    MetricsConfig,
    PolicyConfig,
    RelayConfig,
)
from visio_matrix.config.names import is_hostname, server_name_problem
from visio_matrix.config.reader import Problems, Section, describe
from visio_matrix.web.guest_links import load_private_key, load_public_key

SCHEMA: dict[str, tuple[str, ...]] = {
    "homeserver": ("url", "server_name"),
    "appservice": (
        "id",
        "host",
        "port",
        "public_url",
        "as_token",
        "as_token_file",
        "hs_token",
        "hs_token_file",
        "bot_localpart",
        "user_prefix",
        "bot_displayname",
    ),
    "database": ("url",),
    "crypto": ("store_path", "pickle_key", "pickle_key_file"),
    "relay": ("bind_address", "public_addresses", "udp_port_min", "udp_port_max"),
    "policy": (
        "allowed_servers",
        "start_power_level",
        "stop_power_level",
        "open_call_servers",
        "admit_power_level",
        "link_servers",
        "max_participants",
        "remote_guests",
        "relay_onwards",
    ),
    "logging": ("level", "format"),
    "metrics": ("enabled",),
    "focus": (
        "enabled",
        "public_url",
        "livekit_url",
        "api_key",
        "api_secret",
        "api_secret_file",
        "token_lifetime",
        "verify_federation_tls",
        "homeserver_urls",
    ),
    "guests": ("enabled", "signing_key", "signing_key_file", "old_public_keys", "link_lifetime", "max_wait"),
    "federation": FEDERATION_KEYS,
}

DEFAULT_DATABASE_URL = "sqlite:///visio.db"
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
# Matrix power levels are integers in the canonical-JSON range.
POWER_LEVEL_BOUND = 2**53 - 1

_LOCALPART = re.compile(r"[a-z0-9._=/+-]+")
_APPSERVICE_ID = re.compile(r"[A-Za-z0-9._~-]+")
_SERVER_PATTERN = re.compile(r"[A-Za-z0-9.*:\[\]-]+")
_API_KEY = re.compile(r"[A-Za-z0-9._~-]+")
# HS256 wants a key of at least 256 bits (RFC 7518 3.2).
MIN_FOCUS_SECRET_LENGTH = 32
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def url_problem(text: str) -> str | None:
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "expected an http:// or https:// URL"
    if not parts.hostname:
        return "the URL has no host"
    if parts.query or parts.fragment:
        return "the URL must not have a query or fragment"
    return None


def parse_duration(value: object) -> float:
    """Seconds from ``90`` (an integer: seconds), ``"30s"``, ``"15m"``, ``"1h"``, ``"1h30m"``,
    ``"500ms"`` or ``"1d"``; ``ValueError`` for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and _DURATION.fullmatch(value.strip()):
        return sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(value.strip()))
    raise ValueError(f"expected a duration such as 30s, 15m or 1h, got {describe(value)}")


def _duration_text(seconds: float) -> str:
    for unit in ("d", "h", "m"):
        if seconds >= _DURATION_UNITS[unit] and seconds % _DURATION_UNITS[unit] == 0:
            return f"{seconds / _DURATION_UNITS[unit]:.0f}{unit}"
    return f"{seconds:g}s"


def _duration(section: Section, key: str, default: float, *, low: float, high: float) -> float:
    if not section.has(key) or section.raw(key) is None:
        return default
    try:
        seconds = parse_duration(section.raw(key))
    except ValueError as exc:
        section.error(key, str(exc))
        return default
    if not low <= seconds <= high:
        section.error(
            key,
            f"expected a duration from {_duration_text(low)} to {_duration_text(high)}, "
            f"got {describe(section.raw(key))}",
        )
        return default
    return seconds


def websocket_url(http_url: str) -> str:
    """``https://host/path`` -> ``wss://host/path`` (``http`` -> ``ws``); ``""`` for a non-URL."""
    if "://" not in http_url:
        return ""
    scheme, rest = http_url.split("://", 1)
    return f"{'wss' if scheme.lower() == 'https' else 'ws'}://{rest}"


def ws_url_problem(text: str) -> str | None:
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme not in ("ws", "wss"):
        return "expected a ws:// or wss:// URL"
    if not parts.hostname:
        return "the URL has no host"
    if parts.query or parts.fragment:
        return "the URL must not have a query or fragment"
    return None


def _url(section: Section, key: str, default: str | None = None) -> str:
    text = section.string(key, default, what="an http(s) URL")
    if section.ok(key) and text:
        problem = url_problem(text)
        if problem:
            section.error(key, f"{problem}, got {describe(text)}")
        return text.rstrip("/")
    return text


def _ip(section: Section, key: str, default: str) -> str:
    text = section.string(key, default, what="an IP address")
    if not section.ok(key):
        return default
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        section.error(key, f"expected an IP address, got {describe(text)}")
        return default


def _homeserver(top: Section) -> HomeserverConfig:
    s = top.section("homeserver", SCHEMA["homeserver"])
    url = _url(s, "url")
    server_name = s.string("server_name", what="the homeserver's server name (e.g. example.org)")
    if s.ok("server_name") and server_name:
        problem = server_name_problem(server_name)
        if problem:
            s.error("server_name", f"{problem}, got {describe(server_name)}")
    s.warn_unknown()
    return HomeserverConfig(url=url, server_name=server_name)


def _appservice(top: Section, base_dir: Path) -> AppserviceConfig:
    s = top.section("appservice", SCHEMA["appservice"])
    as_id = s.string("id", "visio-matrix")
    if s.ok("id") and not _APPSERVICE_ID.fullmatch(as_id):
        s.error("id", f"expected letters, digits and . _ ~ - only, got {describe(as_id)}")
    host = s.string("host", "127.0.0.1", what="a host name or IP address")
    if s.ok("host") and not (is_hostname(host) or _is_ip(host)):
        s.error("host", f"expected a host name or IP address, got {describe(host)}")
    port = s.integer("port", 29380, low=1, high=65535)
    url_host = f"[{host}]" if ":" in host else host
    public_url = _url(s, "public_url", f"http://{url_host}:{port}")
    if (
        s.raw("public_url") is None
        and s.ok("host")
        and _is_ip(host)
        and ipaddress.ip_address(host).is_unspecified
    ):
        s.problems.warn(
            "appservice.public_url",
            f"not set, so the homeserver is told to use {public_url}; set it to an address it can reach",
        )
    as_token = s.secret("as_token", base_dir)
    hs_token = s.secret("hs_token", base_dir)
    if as_token and hs_token and as_token == hs_token:
        s.error("hs_token", "must differ from appservice.as_token")
    localparts = {}
    for key, default in (("bot_localpart", "visio"), ("user_prefix", "_visio_")):
        value = s.string(key, default, what="a Matrix user ID localpart")
        if s.ok(key) and not _LOCALPART.fullmatch(value):
            s.error(key, f"expected lower-case letters, digits and . _ = - / + only, got {describe(value)}")
        localparts[key] = value
    displayname = s.string("bot_displayname", "Visio")
    s.warn_unknown()
    return AppserviceConfig(
        id=as_id,
        host=host,
        port=port,
        public_url=public_url,
        as_token=as_token,
        hs_token=hs_token,
        bot_localpart=localparts["bot_localpart"],
        user_prefix=localparts["user_prefix"],
        bot_displayname=displayname,
    )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _database(top: Section, base_dir: Path) -> DatabaseConfig:
    s = top.section("database", SCHEMA["database"])
    url = s.string("url", DEFAULT_DATABASE_URL, what="a database URL")
    s.warn_unknown()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    expected = "sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
            s.error("url", f"expected sqlite:///PATH (three slashes, then the file), got {describe(url)}")
            return DatabaseConfig(url=url, kind="sqlite", sqlite_path=base_dir / "visio.db")
        # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute/path.db.
        return DatabaseConfig(url=url, kind="sqlite", sqlite_path=base_dir / url[len("sqlite:///") :])
    if scheme in ("postgresql", "postgres"):
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            # The URL may hold a password: never echo it.
            s.error("url", "not a valid PostgreSQL URL (check the host and port)")
        else:
            if parts.path.strip("/") == "" and not parts.query:
                s.error(
                    "url",
                    "the PostgreSQL URL names no database (postgresql://USER:PASSWORD@HOST:PORT/DATABASE)",
                )
        return DatabaseConfig(url=url, kind="postgresql", sqlite_path=None)
    shown = f"a URL starting with {scheme + '://'!r}" if scheme else describe(url)
    s.error("url", f"expected {expected}, got {shown}")
    return DatabaseConfig(url=url, kind="sqlite", sqlite_path=None)


def _crypto(top: Section, base_dir: Path) -> CryptoConfig:
    s = top.section("crypto", SCHEMA["crypto"])
    store_path = s.path_value("store_path", "crypto", base_dir)
    pickle_key = s.secret("pickle_key", base_dir)
    s.warn_unknown()
    return CryptoConfig(store_path=store_path, pickle_key=pickle_key)


def _relay(top: Section) -> RelayConfig:
    s = top.section("relay", SCHEMA["relay"])
    bind = _ip(s, "bind_address", "127.0.0.1")
    unspecified = ipaddress.ip_address(bind).is_unspecified
    if s.has("public_addresses") and s.raw("public_addresses") is not None:
        addresses = s.string_list("public_addresses", None, what="a list of IP addresses")
        public: list[str] = []
        for index, text in addresses:
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                s.problems.error(
                    f"relay.public_addresses[{index}]", f"expected an IP address, got {describe(text)}"
                )
                continue
            if address.is_unspecified:
                s.problems.error(
                    f"relay.public_addresses[{index}]", f"{text} cannot be reached: give a real address"
                )
            public.append(str(address))
        if s.raw("public_addresses") == []:
            s.error("public_addresses", "expected at least one IP address")
    elif unspecified and s.ok("bind_address"):
        s.error(
            "public_addresses", f"required when relay.bind_address is {bind}: the addresses clients can reach"
        )
        public = []
    else:
        public = [bind]
    port_min = s.integer("udp_port_min", 40000, low=1024, high=65535)
    port_max = s.integer("udp_port_max", 40999, low=1024, high=65535)
    if s.ok("udp_port_min") and s.ok("udp_port_max") and port_min > port_max:
        s.error("udp_port_min", f"must not be above relay.udp_port_max ({port_max}), got {port_min}")
    s.warn_unknown()
    return RelayConfig(
        bind_address=bind, public_addresses=tuple(public), udp_port_min=port_min, udp_port_max=port_max
    )


def _server_patterns(s: Section, key: str, default: list[str]) -> tuple[list[str], int]:
    """The valid patterns of a server-name list, and how many non-empty strings it had."""
    items = s.string_list(key, default, what="a list of server names (* as wildcard)")
    patterns = []
    for index, pattern in items:
        # The default (the server name) was checked in its own section: never report it twice.
        if _SERVER_PATTERN.fullmatch(pattern) or s.raw(key) is None:
            patterns.append(pattern)
        else:
            s.problems.error(
                f"{s.key_path(key)}[{index}]",
                f"expected a server name, '*' allowed as wildcard, got {describe(pattern)}",
            )
    return patterns, len(items)


def _policy(top: Section, server_name: str) -> PolicyConfig:
    s = top.section("policy", SCHEMA["policy"])
    default = [server_name] if server_name else []
    patterns, items = _server_patterns(s, "allowed_servers", default)
    if s.has("allowed_servers") and s.ok("allowed_servers") and not items:
        s.problems.warn("policy.allowed_servers", "empty: no user may use the service")
    bound = POWER_LEVEL_BOUND
    what = "an integer (a room power level, e.g. 0, 50, 100)"
    start = s.integer("start_power_level", 0, low=-bound, high=bound, what=what)
    stop = s.integer("stop_power_level", 50, low=-bound, high=bound, what=what)
    open_calls, _ = _server_patterns(s, "open_call_servers", default)
    admit = s.integer("admit_power_level", 0, low=-bound, high=bound, what=what)
    link_servers, _ = _server_patterns(s, "link_servers", [])
    max_participants = s.integer("max_participants", 100, low=2)
    remote_guests = s.boolean("remote_guests", False)
    relay_onwards = s.boolean("relay_onwards", False)
    s.warn_unknown()
    return PolicyConfig(
        allowed_servers=tuple(patterns),
        start_power_level=start,
        stop_power_level=stop,
        open_call_servers=tuple(open_calls),
        admit_power_level=admit,
        link_servers=tuple(link_servers),
        max_participants=max_participants,
        remote_guests=remote_guests,
        relay_onwards=relay_onwards,
    )


def _logging(top: Section) -> LoggingConfig:
    s = top.section("logging", SCHEMA["logging"])
    level = s.choice("level", LOG_LEVELS, "INFO", upper=True)
    fmt = s.choice("format", ("text", "json"), "text")
    s.warn_unknown()
    return LoggingConfig(level=cast(LogLevel, level), format=cast(LogFormat, fmt))


def _metrics(top: Section) -> MetricsConfig:
    s = top.section("metrics", SCHEMA["metrics"])
    enabled = s.boolean("enabled", True)
    s.warn_unknown()
    return MetricsConfig(enabled=enabled)


def _focus(top: Section, base_dir: Path, appservice: AppserviceConfig) -> FocusConfig:
    s = top.section("focus", SCHEMA["focus"])
    enabled = s.boolean("enabled", True)
    # The default was checked in its own section: never report it twice.
    public_url = _url(s, "public_url") if s.raw("public_url") is not None else appservice.public_url
    if s.raw("livekit_url") is not None:
        livekit_url = s.string("livekit_url", what="a ws:// or wss:// URL")
        if s.ok("livekit_url"):
            problem = ws_url_problem(livekit_url)
            if problem:
                s.error("livekit_url", f"{problem}, got {describe(livekit_url)}")
            livekit_url = livekit_url.rstrip("/")
    else:
        livekit_url = websocket_url(public_url)
    api_key = s.string("api_key", "visio", what="an API key (the tokens' issuer)")
    if s.ok("api_key") and not _API_KEY.fullmatch(api_key):
        s.error("api_key", f"expected letters, digits and . _ ~ - only, got {describe(api_key)}")
    given = [k for k in ("api_secret", "api_secret_file") if s.raw(k) is not None]
    api_secret = ""
    if given:
        api_secret = s.secret("api_secret", base_dir)
        if api_secret and len(api_secret) < MIN_FOCUS_SECRET_LENGTH:
            s.error(
                given[0],
                f"too short: at least {MIN_FOCUS_SECRET_LENGTH} characters (an HS256 key), got {len(api_secret)}",
            )
            api_secret = ""
    elif enabled:
        s.error(
            "api_secret",
            "required while focus.enabled is true: set focus.api_secret or focus.api_secret_file "
            "(generate-config writes a random one), or set focus.enabled: false",
        )
    lifetime = _duration(s, "token_lifetime", 3600.0, low=60.0, high=86400.0)
    verify_tls = s.boolean("verify_federation_tls", True)
    if not verify_tls:
        s.problems.warn(
            "focus.verify_federation_tls",
            "false: OpenID tokens are checked with homeservers whose TLS certificates are not verified; "
            "use this only with test homeservers",
        )
    urls: dict[str, str] = {}
    raw_urls = s.raw("homeserver_urls")
    if raw_urls is not None and not isinstance(raw_urls, dict):
        s.error("homeserver_urls", f"expected a mapping of server name -> URL, got {describe(raw_urls)}")
    elif isinstance(raw_urls, dict):
        for name, url in raw_urls.items():
            where = f"{s.key_path('homeserver_urls')}.{name}"
            problem = server_name_problem(name) if isinstance(name, str) else "expected a server name"
            if problem:
                s.problems.error(where, f"{problem}, got {describe(name)}")
                continue
            problem = url_problem(url) if isinstance(url, str) else "expected an http(s) URL"
            if problem:
                s.problems.error(where, f"{problem}, got {describe(url)}")
                continue
            urls[name] = url.rstrip("/")
    s.warn_unknown()
    return FocusConfig(
        enabled=enabled,
        public_url=public_url,
        livekit_url=livekit_url,
        api_key=api_key,
        api_secret=api_secret,
        token_lifetime=lifetime,
        verify_federation_tls=verify_tls,
        homeserver_urls=urls,
    )


def _guest_key_text(s: Section, base_dir: Path) -> tuple[str, str]:
    """``(key text, the key path it came from)``; ``("", "")`` when neither key is set."""
    inline = s.raw("signing_key") is not None
    from_file = s.raw("signing_key_file") is not None
    if inline and from_file:
        s.error("signing_key", f"set either {s.key_path('signing_key')} or {s.key_path('signing_key_file')}")
        return "", ""
    if inline:
        value = s.raw("signing_key")
        if not isinstance(value, str):
            s.error("signing_key", "expected the Ed25519 private key as text (PEM or base64)")
            return "", ""
        return value, "signing_key"
    if from_file:
        name = s.raw("signing_key_file")
        if not isinstance(name, str) or not name.strip():
            s.error("signing_key_file", f"expected a path, got {describe(name)}")
            return "", ""
        file_path = base_dir / Path(name.strip()).expanduser()
        try:
            return file_path.read_text(encoding="utf-8"), "signing_key_file"
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            s.error("signing_key_file", f"cannot read {str(file_path)!r}: {reason}")
            return "", ""
    return "", ""


def _guests(top: Section, base_dir: Path) -> GuestsConfig:
    s = top.section("guests", SCHEMA["guests"])
    enabled = s.boolean("enabled", True)
    key_text, key_name = _guest_key_text(s, base_dir)
    if key_text:
        try:
            load_private_key(key_text)
        except ValueError as exc:  # the message never quotes the key
            s.error(key_name, str(exc))
            key_text = ""
    old: list[str] = []
    for index, text in s.string_list("old_public_keys", [], what="a list of Ed25519 public keys (PEM)"):
        try:
            load_public_key(text)
        except ValueError as exc:
            s.problems.error(f"{s.key_path('old_public_keys')}[{index}]", str(exc))
            continue
        old.append(text)
    lifetime = _duration(s, "link_lifetime", 3600.0, low=60.0, high=30 * 86400.0)
    max_wait = _duration(s, "max_wait", 600.0, low=10.0, high=86400.0)
    s.warn_unknown()
    # A configuration without the section (older than guest links) loads quietly with guests off.
    section_given = top.raw("guests") is not None
    if (
        enabled
        and section_given
        and not key_text
        and not s.problems.errors_at(s.key_path(key_name or "signing_key"))
    ):
        s.problems.warn(
            "guests.signing_key",
            "not set: guest links are disabled (visio-matrix generate-config writes a key; "
            "or set guests.enabled: false)",
        )
        enabled = False
    return GuestsConfig(
        enabled=enabled and bool(key_text),
        signing_key=key_text if enabled else "",
        old_public_keys=tuple(old),
        link_lifetime=lifetime,
        max_wait=max_wait,
    )


def validate(data: object, base_dir: Path) -> tuple[Config | None, Problems]:
    """Read everything; the config is None when there were errors (see ``problems.errors``)."""
    problems = Problems()
    if data is None:
        problems.error("", "the configuration is empty: expected a mapping with homeserver, appservice, ...")
        return None, problems
    if not isinstance(data, dict):
        problems.error(
            "", f"the top level must be a mapping of sections ({', '.join(SCHEMA)}), got {describe(data)}"
        )
        return None, problems
    top = Section(problems, "", data, SCHEMA)
    homeserver = _homeserver(top)
    appservice = _appservice(top, base_dir)
    config = Config(
        homeserver=homeserver,
        appservice=appservice,
        database=_database(top, base_dir),
        crypto=_crypto(top, base_dir),
        relay=_relay(top),
        policy=_policy(top, homeserver.server_name),
        logging=_logging(top),
        metrics=_metrics(top),
        focus=_focus(top, base_dir, appservice),
        guests=_guests(top, base_dir),
        federation=parse_federation(top.section("federation", SCHEMA["federation"]), homeserver.server_name),
    )
    top.warn_unknown()
    return (None if problems.errors else config), problems


def raise_for(
    problems: Problems, errors: list[Issue] | None = None, warnings: list[Issue] | None = None
) -> None:
    error_issues = problems.errors if errors is None else errors
    warning_issues = problems.warnings if warnings is None else warnings
    if error_issues:
        raise ConfigError([str(e) for e in error_issues], [str(w) for w in warning_issues])


def parse_config(data: object, base_dir: Path) -> tuple[Config, list[str]]:
    """Validate an already-loaded YAML document; relative paths are taken from ``base_dir``.

    Returns ``(config, warnings)``; raises ``ConfigError`` listing every error.
    """
    config, problems = validate(data, base_dir)
    raise_for(problems)
    assert config is not None
    return config, [str(w) for w in problems.warnings]
