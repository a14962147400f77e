"""Process plumbing for the bench: peer worker pool, the relay process, CPU sampling from /proc.

Kept apart from the orchestration logic (``relay_bench``) and the pure analysis (``analysis``).
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

from .peer_worker import worker_main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime + stime, stime) of a whole process (all its threads, live and exited), in seconds.

    stime is kernel time: for a relay on loopback it includes delivering each sent datagram to the
    receiving socket (the loopback device runs the receive path in the sender's context)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    user, system = int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK
    return user + system, system


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class WorkerError(RuntimeError):
    pass


class WorkerPool:
    """Peer processes (``spawn``ed, so they share nothing with the orchestrator) driven over pipes."""

    def __init__(self, count: int, host: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, host), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def __len__(self) -> int:
        return len(self.conns)

    def call(self, calls: list[tuple[int, str, dict[str, Any]]], timeout: float = 180.0) -> list[Any]:
        """Send every call first (workers run them concurrently), then collect replies in order."""
        for w, name, kwargs in calls:
            self.conns[w].send((name, kwargs))
        results = []
        deadline = time.monotonic() + timeout
        for w, name, _ in calls:
            if not self.conns[w].poll(max(0.0, deadline - time.monotonic())):
                raise WorkerError(f"worker {w}: {name} timed out after {timeout}s")
            status, value = self.conns[w].recv()
            if status != "ok":
                raise WorkerError(f"worker {w}: {name} failed:\n{value}")
            results.append(value)
        return results

    def all(self, name: str, timeout: float = 180.0, **kwargs: Any) -> list[Any]:
        return self.call([(w, name, kwargs) for w in range(len(self))], timeout)

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("exit", {}))
            except (BrokenPipeError, OSError):
                continue
        for conn, proc in zip(self.conns, self.procs, strict=True):
            if conn.poll(20):
                try:
                    conn.recv()
                except EOFError:
                    pass
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            conn.close()


class RelayProcess:
    """``relay_server`` in its own process: its CPU is the relay's CPU."""

    def __init__(self, backend: str, host: str, udp_ports: str, profile: str | None = None) -> None:
        self.port = free_tcp_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable, "-m", "scripts.bench.relay_server",
            "--backend", backend, "--host", host, "--port", str(self.port), "--udp-ports", udp_ports,
        ]  # fmt: skip
        if profile:
            cmd += ["--profile", profile]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=None, stdin=subprocess.DEVNULL, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "READY":
            self.stop()
            raise RuntimeError(f"relay process ({backend}) did not start (exit {self.proc.returncode})")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
