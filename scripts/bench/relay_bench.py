"""``scripts/bench-relay``: relay CPU per forwarded packet, loss, added latency, join time.

Each scenario runs through our SFU (``visio_matrix.relay`` in the bench's relay process), through
aiortc's stock ``MediaRelay`` (decode + re-encode per subscriber) and, when installed, through
Janus's VideoRoom, one after the other in the same run; then the largest all-video call our relay
carries (< 1 % loss, p99 latency < 200 ms) is searched. Human-readable lines first, then one JSON
line per scenario. Definitions of every figure: docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from . import analysis
from .clip import ClipSpec
from .harness import RelayProcess, WorkerPool, free_tcp_port, process_cpu_seconds
from .janus_server import JANUS_ADDRESS, ROOM, JanusConfig, JanusProcess, janus_missing_reason

OURS = "visio"
TRANSCODING = "transcoding"
JANUS = "janus"
LOSS_LIMIT_PCT = 1.0
# A call is "carried" only if media also arrives in time: a standing queue (in the relay or in the
# peers sharing its 2 cores) shows up as latency long before packets are lost.
LATENCY_P99_LIMIT_MS = 200.0


@dataclass(frozen=True)
class Scenario:
    name: str
    publishers: tuple[int, ...]
    feeds: dict[int, tuple[int, ...]]  # subscriber id -> publisher ids it receives
    # participant (for worker placement) of each publisher / subscriber
    pub_home: dict[int, int]
    sub_home: dict[int, int]

    @property
    def participants(self) -> int:
        return len(set(self.pub_home.values()) | set(self.sub_home.values()))


def one_to_many(n: int) -> Scenario:
    return Scenario(f"1x{n}", (0,), {s: (0,) for s in range(n)}, {0: 0}, {s: s + 1 for s in range(n)})


def all_to_all(n: int, name: str | None = None) -> Scenario:
    pubs = tuple(range(n))
    return Scenario(
        name or f"{n}x{n}",
        pubs,
        {s: tuple(p for p in pubs if p != s) for s in pubs},
        {p: p for p in pubs},
        {s: s for s in pubs},
    )


@dataclass(frozen=True)
class Options:
    seconds: float
    window: float
    warmup: float
    workers: int
    spec: ClipSpec
    clip_dir: str
    janus_event_loops: int
    profile: str | None = None


@dataclass
class RunResult:
    backend: str
    scenario: str
    ok: bool
    error: str | None = None
    cpu: analysis.CpuResult | None = None
    loss_pct: float | None = None
    seq_loss_pct: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    join_p50_s: float | None = None
    join_max_s: float | None = None
    join_missing: int = 0
    frames_ratio: float | None = None
    unmatched: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _placement(scenario: Scenario, workers: int) -> tuple[dict[int, int], dict[int, int]]:
    homes = sorted(set(scenario.pub_home.values()) | set(scenario.sub_home.values()))
    where = {h: i % workers for i, h in enumerate(homes)}
    return (
        {p: where[h] for p, h in scenario.pub_home.items()},
        {s: where[h] for s, h in scenario.sub_home.items()},
    )


def _measure(
    pool: WorkerPool, pid: int, scenario: Scenario, opts: Options, backend: str, stats_url: str | None
) -> RunResult:
    """Connect everyone, let it settle, record while sampling the relay's CPU, then analyze."""
    pub_w, sub_w = _placement(scenario, len(pool))
    pool.call([(w, "prepare", {"pub_ids": [p for p in scenario.publishers if pub_w[p] == w]})
               for w in range(len(pool))])  # fmt: skip
    joining = time.monotonic()
    if backend == OURS:
        _join_participants(pool, scenario, pub_w, sub_w)
    else:
        pool.call([(w, "publish", {"pub_ids": [p for p in scenario.publishers if pub_w[p] == w]})
                   for w in range(len(pool))])  # fmt: skip
        subs = [(s, list(f)) for s, f in scenario.feeds.items()]
        pool.call(
            [(w, "subscribe", {"subs": [x for x in subs if sub_w[x[0]] == w]}) for w in range(len(pool))]
        )
    join_s = time.monotonic() - joining
    time.sleep(opts.warmup)
    t0 = max(pool.all("record", on=True))
    samples = [(time.monotonic(), *process_cpu_seconds(pid))]
    n_windows = max(1, round(opts.seconds / opts.window))
    for i in range(1, n_windows + 1):
        time.sleep(max(0.0, t0 + i * opts.window - time.monotonic()))
        samples.append((time.monotonic(), *process_cpu_seconds(pid)))
    t1 = min(pool.all("record", on=False))
    result = analyze(backend, scenario, pool.all("collect"), samples, (t0, t1))
    result.extra["phases_s"] = {"join": join_s}
    if stats_url:
        with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(stats_url, timeout=10) as resp:
            result.extra["relay_stats"] = json.load(resp)
    return result


def _join_participants(
    pool: WorkerPool, scenario: Scenario, pub_w: dict[int, int], sub_w: dict[int, int]
) -> None:
    """One connection per participant: publishers join first, then receive-only participants."""
    homes: dict[int, list[Any]] = {}
    for p, h in scenario.pub_home.items():
        homes.setdefault(h, [h, None, None, []])[1] = p
    for s, h in scenario.sub_home.items():
        entry = homes.setdefault(h, [h, None, None, []])
        entry[2], entry[3] = s, list(scenario.feeds[s])
    worker_of = {h: (pub_w[e[1]] if e[1] is not None else sub_w[e[2]]) for h, e in homes.items()}
    for publishing in (True, False):
        batch = [e for e in homes.values() if (e[1] is not None) == publishing]
        pool.call([(w, "join", {"participants": [tuple(e) for e in batch if worker_of[e[0]] == w]})
                   for w in range(len(pool))])  # fmt: skip
    pool.all("wait_receiving")


def analyze(
    backend: str,
    scenario: Scenario,
    collected: list[dict[str, Any]],
    samples: list[tuple[float, float, float]],
    span: tuple[float, float],
) -> RunResult:
    pub_logs: dict[int, Any] = {}
    subs: dict[int, Any] = {}
    for c in collected:
        pub_logs.update(c["publishers"])
        subs.update(c["subscribers"])
    sends = analysis.sends_from_logs(pub_logs)
    receives = {s: analysis.receives_from_log(d["log"]) for s, d in subs.items()}
    window = (span[0] + 0.5, span[1] - 1.0)
    deliv = analysis.delivery(sends, receives, scenario.feeds, window)
    cpu = analysis.cpu_per_packet(samples, [r.times for r in receives.values()])
    joins, missing = analysis.join_times(subs, scenario.feeds)
    frames_sent = {p: analysis.video_frames(sends.flags[sends.pubs == p]) for p in scenario.publishers}
    expected_frames = sum(frames_sent[p] for f in scenario.feeds.values() for p in f)
    got_frames = sum(analysis.video_frames(r.flags) for r in receives.values())
    payload_preserved = backend != TRANSCODING
    return RunResult(
        backend=backend,
        scenario=scenario.name,
        ok=True,
        cpu=cpu,
        loss_pct=deliv.loss_pct if payload_preserved else None,
        seq_loss_pct=analysis.seq_loss_pct(receives),
        latency_p50_ms=analysis.percentile_ms(deliv.latencies_s, 50) if payload_preserved else None,
        latency_p99_ms=analysis.percentile_ms(deliv.latencies_s, 99) if payload_preserved else None,
        join_p50_s=statistics.median(joins) if joins else None,
        join_max_s=max(joins) if joins else None,
        join_missing=missing,
        frames_ratio=got_frames / expected_frames if expected_frames else None,
        unmatched=deliv.unmatched_packets,
        extra={"plis_sent": sum(d["plis_sent"] for d in subs.values())},
    )


def run_backend(backend: str, scenario: Scenario, opts: Options) -> RunResult:
    workers = max(1, min(opts.workers, scenario.participants))
    janus: JanusProcess | None = None
    relay: RelayProcess | None = None
    pool: WorkerPool | None = None
    started = time.monotonic()
    phases: dict[str, float] = {}
    try:
        if backend == JANUS:
            janus = JanusProcess(
                tempfile.mkdtemp(prefix="janus-", dir=opts.clip_dir),
                JanusConfig(http_port=free_tcp_port(), event_loops=opts.janus_event_loops),
            )
            janus.start()
            pid, url, mode, host = janus.pid, janus.url, "janus", JANUS_ADDRESS
        else:
            profile = opts.profile if backend == OURS else None
            relay = RelayProcess(backend, "127.0.0.1", "41000-42999", profile)
            pid, url, mode, host = relay.pid, relay.url, "bench", "127.0.0.1"
        pool = WorkerPool(workers, host)
        pool.all("setup", mode=mode, url=url, room=ROOM, clip_dir=opts.clip_dir, spec=opts.spec)
        phases["start"] = time.monotonic() - started
        stats_url = None if backend == JANUS else f"{url}/stats"
        result = _measure(pool, pid, scenario, opts, backend, stats_url)
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}"
        if janus is not None:
            detail += "\n" + janus.log_tail()
        result = RunResult(backend, scenario.name, ok=False, error=detail)
    finally:
        closing = time.monotonic()
        if pool is not None:
            pool.close()
        phases["close_peers"] = time.monotonic() - closing
        closing = time.monotonic()
        if relay is not None:
            relay.stop()
        if janus is not None:
            janus.stop()
        phases["close_relay"] = time.monotonic() - closing
    result.extra["wall_s"] = round(time.monotonic() - started, 1)
    result.extra["phases_s"] = {
        k: round(v, 1) for k, v in {**phases, **result.extra.get("phases_s", {})}.items()
    }
    return result


def run_direct(opts: Options) -> RunResult:
    """Baseline path: one publisher straight to one subscriber (no relay), for the latency subtraction."""
    pool = WorkerPool(2, "127.0.0.1")
    scenario = Scenario("direct", (0,), {0: (0,)}, {0: 0}, {0: 1})
    try:
        pool.all("setup", mode="direct", url="", room=0, clip_dir=opts.clip_dir, spec=opts.spec)
        (offer,) = pool.call([(0, "direct_offer", {"pub_id": 0})])
        (answer,) = pool.call([(1, "direct_answer", {"sub_id": 0, "offer": offer})])
        pool.call([(0, "direct_finish", {"pub_id": 0, "answer": answer}), (1, "wait_direct_connected", {})])
        time.sleep(opts.warmup)
        t0 = max(pool.all("record", on=True))
        time.sleep(min(opts.seconds, 10.0))
        t1 = min(pool.all("record", on=False))
        return analyze("direct", scenario, pool.all("collect"), [], (t0, t1))  # no relay: no CPU samples
    except Exception as exc:
        return RunResult("direct", "direct", ok=False, error=f"{type(exc).__name__}: {exc}")
    finally:
        pool.close()


def _fmt(value: float | None, spec: str = ".1f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def describe(r: RunResult) -> str:
    if not r.ok:
        return f"  {r.backend:<12} FAILED: {r.error}"
    cpu = r.cpu
    assert cpu is not None
    frames_pct = None if r.frames_ratio is None else 100 * r.frames_ratio
    return (
        f"  {r.backend:<12} cpu {_fmt(cpu.cpu_pct, '.1f', '%')} of a core, "
        f"{_fmt(cpu.us_per_packet, '.1f')} us/packet (kernel {_fmt(cpu.sys_us_per_packet, '.1f')}), "
        f"{_fmt(cpu.packets_per_s, '.0f')} packets/s out, "
        f"loss {_fmt(r.loss_pct, '.2f', '%')} (seq gaps {_fmt(r.seq_loss_pct, '.2f', '%')}), "
        f"video frames delivered {_fmt(frames_pct, '.1f', '%')}, "
        f"latency p50/p99 {_fmt(r.latency_p50_ms, '.2f')}/{_fmt(r.latency_p99_ms, '.2f')} ms, "
        f"join->first keyframe p50 {_fmt(r.join_p50_s, '.2f')} s max {_fmt(r.join_max_s, '.2f')} s"
        f"{f' ({r.join_missing} streams without keyframe)' if r.join_missing else ''}, "
        f"[{cpu.windows} windows, {r.extra.get('wall_s')} s wall, phases {r.extra.get('phases_s')}]"
        + (f"\n      relay counters: {r.extra['relay_stats']}" if r.extra.get("relay_stats") else "")
    )


def ratio(baseline: RunResult | None, ours: RunResult | None) -> float | None:
    """CPU per delivered packet of the baseline divided by ours (> 1: ours is cheaper)."""
    if not (baseline and ours and baseline.ok and ours.ok and baseline.cpu and ours.cpu):
        return None
    b, o = baseline.cpu.us_per_packet, ours.cpu.us_per_packet
    return None if not b or not o else round(b / o, 2)


def added(value: float | None, direct: float | None) -> float | None:
    return None if value is None or direct is None else round(value - direct, 2)


def search_largest(
    opts: Options, start: int, limit: int, log: list[RunResult], backend: str = OURS
) -> int | None:
    """Grow N while the N-participant all-to-all call keeps loss < 1 % and p99 latency < 200 ms, then
    bisect the gap between the last N that passed and the first that failed."""

    trial = dataclasses.replace(opts, seconds=min(opts.seconds, 12.0))

    def passes(n: int) -> bool:
        r = run_backend(backend, all_to_all(n, f"call{n}"), trial)
        log.append(r)
        print(describe(r), flush=True)
        return (
            r.ok
            and r.loss_pct is not None
            and r.loss_pct < LOSS_LIMIT_PCT
            and r.latency_p99_ms is not None
            and r.latency_p99_ms < LATENCY_P99_LIMIT_MS
        )

    good: int | None = None
    bad: int | None = None
    n = start
    while n <= limit:
        if passes(n):
            good = n
            if n >= limit:
                break
            n = min(limit, int(n * 1.5) + 1)
        else:
            bad = n
            break
    if good is None:
        return None
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        if passes(mid):
            good = mid
        else:
            bad = mid
    return good


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench-relay", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short 1x10 only (< 2 minutes)")
    parser.add_argument("--scenario", choices=["1x10", "5x5", "largest", "all"], default="all")
    parser.add_argument("--seconds", type=float, help="measured seconds per run (default 20, quick 8)")
    parser.add_argument("--window", type=float, help="CPU sampling window in seconds (default 5, quick 4)")
    parser.add_argument("--warmup", type=float, help="seconds between connection and measurement")
    parser.add_argument("--workers", type=int, default=4, help="peer processes (default 4)")
    parser.add_argument("--backends", default="visio,transcoding,janus", help="comma-separated subset")
    parser.add_argument("--max-call", type=int, default=25, help="largest N tried by the call search")
    parser.add_argument(
        "--largest-janus", action="store_true", help="also search the largest call through Janus"
    )
    parser.add_argument("--janus-event-loops", type=int, default=0, help="0 = Janus's default")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="run our relay under cProfile (slower: CPU figures are then not comparable) and save pstats",
    )
    args = parser.parse_args(argv)

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    scenarios = (
        ["1x10"]
        if args.quick
        else (["1x10", "5x5", "largest"] if args.scenario == "all" else [args.scenario])
    )
    janus_reason = janus_missing_reason() if JANUS in backends else "not requested (--backends)"

    with tempfile.TemporaryDirectory(prefix="visio-bench-") as tmp:
        opts = Options(
            seconds=args.seconds or (8.0 if args.quick else 20.0),
            window=args.window or (4.0 if args.quick else 5.0),
            warmup=args.warmup if args.warmup is not None else (2.0 if args.quick else 3.0),
            workers=args.workers,
            spec=ClipSpec(),
            clip_dir=tmp,
            janus_event_loops=args.janus_event_loops,
            profile=os.path.abspath(args.profile) if args.profile else None,
        )
        print(
            f"visio-matrix relay bench: {ClipSpec().width}x{ClipSpec().height}@{ClipSpec().fps} VP8 "
            f"~{ClipSpec().video_kbps} kbit/s + Opus 20 ms per publisher; {opts.seconds:.0f} s measured in "
            f"{opts.window:.0f} s windows after {opts.warmup:.0f} s warm-up; {opts.workers} peer processes"
        )
        if janus_reason:
            print(f"Janus: not measured, ratio_cpu_vs_janus is null: {janus_reason}")
        elif JANUS in backends:
            print(f"Janus: {JanusConfig(0, event_loops=opts.janus_event_loops).describe()}")
        direct = run_direct(opts)
        print(
            f"direct publisher->subscriber path (no relay): latency p50/p99 "
            f"{_fmt(direct.latency_p50_ms, '.2f')}/{_fmt(direct.latency_p99_ms, '.2f')} ms"
            + ("" if direct.ok else f" FAILED: {direct.error}"),
            flush=True,
        )

        rows: list[dict[str, Any]] = []
        largest: int | None = None
        for name in scenarios:
            if name == "largest":
                print(
                    "largest all-video call through our relay (N all sending and receiving; carried = "
                    f"loss < {LOSS_LIMIT_PCT:g} % and p99 latency < {LATENCY_P99_LIMIT_MS:g} ms):"
                )
                log: list[RunResult] = []
                largest = search_largest(opts, 5, args.max_call, log)
                best = next((r for r in log if r.scenario == f"call{largest}"), None) if largest else None
                print(f"  largest call: {largest}")
                if args.largest_janus and not janus_reason:
                    print("the same search through Janus:")
                    janus_largest = search_largest(opts, 5, args.max_call, [], JANUS)
                    print(f"  largest call through Janus: {janus_largest}")
                rows.append(row("largest_call", best, None, None, direct))
                continue
            scenario = one_to_many(10) if name == "1x10" else all_to_all(5)
            print(f"scenario {scenario.name}:", flush=True)
            results: dict[str, RunResult] = {}
            for backend in backends:
                if backend == JANUS and janus_reason:
                    continue
                results[backend] = run_backend(backend, scenario, opts)
                print(describe(results[backend]), flush=True)
            r = row(
                scenario.name,
                results.get(OURS),
                results.get(TRANSCODING),
                results.get(JANUS),
                direct,
            )
            print(
                f"  ratio CPU/packet transcoding/ours: {r['ratio_cpu_vs_transcoding']}, "
                f"janus/ours: {r['ratio_cpu_vs_janus']}",
                flush=True,
            )
            rows.append(r)
        if opts.profile and os.path.exists(opts.profile):
            print(f"cProfile of our relay's process (top 25 by own time; full stats in {opts.profile}):")
            pstats.Stats(opts.profile, stream=sys.stdout).sort_stats("tottime").print_stats(25)
        for r in rows:
            r["largest_call"] = largest
            print(json.dumps(r))
    return 0


def row(
    name: str,
    ours: RunResult | None,
    transcoding: RunResult | None,
    janus: RunResult | None,
    direct: RunResult,
) -> dict[str, Any]:
    good = ours if ours is not None and ours.ok else None
    cpu = good.cpu if good is not None else None
    out: dict[str, Any] = {
        "scenario": name,
        "cpu_us_per_packet": None
        if cpu is None or cpu.us_per_packet is None
        else round(cpu.us_per_packet, 2),
        "packets_per_s_out": None
        if cpu is None or cpu.packets_per_s is None
        else round(cpu.packets_per_s, 1),
        "loss_pct": None if good is None or good.loss_pct is None else round(good.loss_pct, 3),
        "added_latency_ms_p50": added(good.latency_p50_ms, direct.latency_p50_ms) if good else None,
        "added_latency_ms_p99": added(good.latency_p99_ms, direct.latency_p99_ms) if good else None,
        "ratio_cpu_vs_transcoding": ratio(transcoding, ours),
        "ratio_cpu_vs_janus": ratio(janus, ours),
        "largest_call": None,
    }
    return out


if __name__ == "__main__":
    sys.exit(main())
