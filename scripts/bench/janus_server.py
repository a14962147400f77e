"""Janus 1.1.2 (Debian package) as a side-by-side baseline: config folder, veth, process lifetime.

Janus never gathers ICE candidates on a loopback interface, so (see RELAY-NOTES.md) the bench puts
127.0.0.2/32 on one end of a veth pair, restricts Janus to it (``ice_enforce_list``, ``interface``)
and runs the Janus peers on 127.0.0.2 as well; traffic never leaves the kernel. The veth is removed
on exit. The VideoRoom room has ``bitrate = 0`` (no REMB cap) and ``fir_freq = 0`` (no periodic
keyframe requests): Janus only relays the keyframe requests subscribers send.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

LIB = "/usr/lib/x86_64-linux-gnu/janus"
VETH = ("vmbench0", "vmbench1")
JANUS_ADDRESS = "127.0.0.2"
ROOM = 1234
OTHER_PLUGINS = (
    "audiobridge duktape echotest lua nosip recordplay sip streaming textroom videocall voicemail"
).split()
OTHER_TRANSPORTS = "mqtt nanomsg pfunix rabbitmq websockets".split()
EVENT_HANDLERS = "gelfevh mqttevh nanomsgevh rabbitmqevh sampleevh wsevh".split()


def janus_binary() -> str | None:
    return shutil.which("janus") or (os.path.exists("/usr/bin/janus") and "/usr/bin/janus") or None


def janus_missing_reason() -> str | None:
    """Why Janus cannot be compared on this machine, or None when it can."""
    if janus_binary() is None:
        return "janus is not installed (apt-get install -y --no-install-recommends janus)"
    if not os.path.exists(f"{LIB}/plugins/libjanus_videoroom.so"):
        return f"the Janus VideoRoom plugin is missing from {LIB}/plugins"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is needed for the 127.0.0.2 veth"
    if os.geteuid() != 0:
        return "creating the 127.0.0.2 veth needs root"
    return None


def _libs(names: list[str]) -> str:
    return ",".join(f"libjanus_{n}.so" for n in names)


@dataclass(frozen=True)
class JanusConfig:
    http_port: int
    rtp_ports: str = "43000-44999"
    event_loops: int = 0  # 0: Janus's default, one loop thread per handle

    def describe(self) -> str:
        loops = "default (one per handle)" if self.event_loops == 0 else str(self.event_loops)
        return (
            f"Janus 1.1.2 VideoRoom over its HTTP API on 127.0.0.1, ICE on {JANUS_ADDRESS} (veth), "
            f"room bitrate=0 fir_freq=0, event_loops={loops}, debug_level=3"
        )


def write_config(folder: str, cfg: JanusConfig) -> None:
    loops = f"\tevent_loops = {cfg.event_loops}\n" if cfg.event_loops else ""
    files = {
        "janus.jcfg": f"""general: {{
\tconfigs_folder = "{folder}"
\tplugins_folder = "{LIB}/plugins"
\ttransports_folder = "{LIB}/transports"
\tevents_folder = "{LIB}/events"
\tloggers_folder = "{LIB}/loggers"
\tdebug_level = 3
\tinterface = "{JANUS_ADDRESS}"
\tsession_timeout = 120
{loops}}}
certificates: {{
}}
media: {{
\trtp_port_range = "{cfg.rtp_ports}"
}}
nat: {{
\tnice_debug = false
\tignore_mdns = true
\tice_enforce_list = "{JANUS_ADDRESS}"
}}
plugins: {{
\tdisable = "{_libs(OTHER_PLUGINS)}"
}}
transports: {{
\tdisable = "{_libs(OTHER_TRANSPORTS)}"
}}
loggers: {{
\tdisable = "libjanus_jsonlog.so"
}}
events: {{
\tbroadcast = false
\tdisable = "{_libs(EVENT_HANDLERS)}"
}}
""",
        "janus.transport.http.jcfg": f"""general: {{
\tjson = "compact"
\tbase_path = "/janus"
\thttp = true
\tport = {cfg.http_port}
\tip = "127.0.0.1"
\thttps = false
}}
admin: {{
\tadmin_http = false
\tadmin_https = false
}}
""",
        "janus.plugin.videoroom.jcfg": f"""general: {{
}}
room-{ROOM}: {{
\tdescription = "visio-matrix bench"
\tpublishers = 100
\tbitrate = 0
\tfir_freq = 0
\taudiocodec = "opus"
\tvideocodec = "vp8"
\trecord = false
}}
""",
    }
    for name, text in files.items():
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)


def veth_up() -> None:
    a, b = VETH
    veth_down()  # a run killed before its cleanup leaves the (bench-owned) veth behind
    subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{JANUS_ADDRESS}/32", "dev", a], check=True)
        subprocess.run(["ip", "link", "set", a, "up"], check=True)
        subprocess.run(["ip", "link", "set", b, "up"], check=True)
    except subprocess.CalledProcessError:
        veth_down()
        raise


def veth_down() -> None:
    subprocess.run(["ip", "link", "del", VETH[0]], check=False, capture_output=True)


class JanusProcess:
    """Owns the veth, the config folder's Janus process and its log."""

    def __init__(self, folder: str, cfg: JanusConfig) -> None:
        self.folder = folder
        self.cfg = cfg
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{cfg.http_port}/janus"
        self.log_path = os.path.join(folder, "janus.log")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> None:
        write_config(self.folder, self.cfg)
        veth_up()
        binary = janus_binary()
        assert binary is not None
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [binary, "-F", self.folder, "-C", os.path.join(self.folder, "janus.jcfg"), "-o"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"janus exited with {self.proc.returncode}; see {self.log_path}")
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
                with urllib.request.urlopen(self.url.removesuffix("/janus") + "/janus/info", timeout=2) as r:
                    if json.load(r).get("janus") == "server_info":
                        return
            time.sleep(0.2)
        raise RuntimeError(f"janus did not answer on {self.url} within {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        finally:
            veth_down()

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError), open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
        return ""
