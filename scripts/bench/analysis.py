"""Pure analysis of one bench run: packet matching, latency, loss, CPU per packet, join time.

Input is what the probes recorded (numpy-convertible columns) plus the relay's CPU samples; no I/O.
Definitions (also in docs/performance.md):
- a received packet is matched to the latest send with the same payload key at most
  ``MATCH_HORIZON_S`` earlier (clips loop every few seconds, so keys repeat, never within that horizon);
- loss: over sends in the core of the recording window (``margin`` trimmed at each end), the share of
  (subscriber, send) pairs that the subscriber should get (it subscribed to that publisher) and never
  received;
- CPU per packet: relay CPU seconds in a window / packets received by all subscribers in that window;
  the median over windows is reported.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .rtpmeta import FLAG_KEYFRAME_START, FLAG_MARKER, FLAG_VIDEO

MATCH_HORIZON_S = 2.0


@dataclass(frozen=True)
class Sends:
    times: np.ndarray
    keys: np.ndarray
    pubs: np.ndarray
    flags: np.ndarray


@dataclass(frozen=True)
class Receives:
    times: np.ndarray
    keys: np.ndarray
    ssrcs: np.ndarray
    seqs: np.ndarray
    flags: np.ndarray


def sends_from_logs(logs: Mapping[int, Mapping[str, Any]]) -> Sends:
    parts = [
        (
            np.asarray(log["times"], dtype=np.float64),
            np.asarray(log["keys"], dtype=np.int64),
            np.full(len(log["times"]), pub, dtype=np.int64),
            np.asarray(log["flags"], dtype=np.uint8),
        )
        for pub, log in logs.items()
    ]
    if not parts:
        empty = np.zeros(0)
        return Sends(empty, empty.astype(np.int64), empty.astype(np.int64), empty.astype(np.uint8))
    return Sends(*(np.concatenate([p[i] for p in parts]) for i in range(4)))


def receives_from_log(log: Mapping[str, Any]) -> Receives:
    return Receives(
        np.asarray(log["times"], dtype=np.float64),
        np.asarray(log["keys"], dtype=np.int64),
        np.asarray(log["ssrcs"], dtype=np.int64),
        np.asarray(log["seqs"], dtype=np.int64),
        np.asarray(log["flags"], dtype=np.uint8),
    )


def match(sends: Sends, recv: Receives) -> np.ndarray:
    """Index into ``sends`` of the send each received packet is, or -1 (unknown payload)."""
    if len(sends.keys) == 0 or len(recv.keys) == 0:
        return np.full(len(recv.keys), -1, dtype=np.int64)
    uniq, inverse = np.unique(np.concatenate([sends.keys, recv.keys]), return_inverse=True)
    del uniq
    s_rank = inverse[: len(sends.keys)].astype(np.int64)
    r_rank = inverse[len(sends.keys) :].astype(np.int64)
    t0 = min(float(sends.times.min()), float(recv.times.min()))
    s_us = ((sends.times - t0) * 1e6).astype(np.int64)
    r_us = ((recv.times - t0) * 1e6).astype(np.int64)
    s_comp = (s_rank << 40) | s_us
    order = np.argsort(s_comp, kind="stable")
    sorted_comp = s_comp[order]
    pos = np.searchsorted(sorted_comp, (r_rank << 40) | r_us, side="right") - 1
    valid = pos >= 0
    cand = order[np.clip(pos, 0, None)]
    valid &= s_rank[cand] == r_rank
    valid &= (recv.times - sends.times[cand]) <= MATCH_HORIZON_S
    return np.where(valid, cand, -1)


@dataclass(frozen=True)
class DeliveryResult:
    latencies_s: np.ndarray
    expected: int
    delivered: int
    unmatched_packets: int

    @property
    def loss_pct(self) -> float | None:
        if self.expected == 0:
            return None
        return 100.0 * (1.0 - self.delivered / self.expected)


def delivery(
    sends: Sends,
    receives: Mapping[int, Receives],
    feeds: Mapping[int, Sequence[int]],
    window: tuple[float, float],
) -> DeliveryResult:
    """Latency and loss of packets whose send time falls in ``window``, over every subscription."""
    in_window = (sends.times >= window[0]) & (sends.times <= window[1])
    latencies: list[np.ndarray] = []
    expected = delivered = unmatched = 0
    for sub, recv in receives.items():
        wanted = np.isin(sends.pubs, np.asarray(list(feeds.get(sub, ())), dtype=np.int64)) & in_window
        expected += int(wanted.sum())
        idx = match(sends, recv)
        unmatched += int((idx < 0).sum())
        ok = idx >= 0
        ok[ok] &= wanted[idx[ok]]
        good_idx, first = np.unique(idx[ok], return_index=True)
        delivered += len(good_idx)
        latencies.append((recv.times[ok] - sends.times[idx[ok]])[first])
    lat = np.concatenate(latencies) if latencies else np.zeros(0)
    return DeliveryResult(lat, expected, delivered, unmatched)


def seq_loss_pct(receives: Mapping[int, Receives]) -> float | None:
    """Loss from RTP sequence gaps per received stream (works when payloads are re-encoded)."""
    expected = received = 0
    for recv in receives.values():
        for ssrc in np.unique(recv.ssrcs):
            seqs = recv.seqs[recv.ssrcs == ssrc]
            if len(seqs) < 2:
                continue
            ext = np.concatenate([[0], np.cumsum(((np.diff(seqs) + 32768) % 65536) - 32768)]) + seqs[0]
            expected += int(ext.max() - ext.min() + 1)
            received += len(np.unique(ext))
    if expected == 0:
        return None
    return 100.0 * max(0.0, 1.0 - received / expected)


def video_frames(flags: np.ndarray) -> int:
    return int(((flags & (FLAG_VIDEO | FLAG_MARKER)) == (FLAG_VIDEO | FLAG_MARKER)).sum())


def keyframes(flags: np.ndarray) -> int:
    return int(((flags & FLAG_KEYFRAME_START) != 0).sum())


@dataclass(frozen=True)
class CpuResult:
    us_per_packet: float | None
    sys_us_per_packet: float | None
    packets_per_s: float | None
    cpu_pct: float | None
    windows: int


def cpu_per_packet(
    cpu_samples: Sequence[tuple[float, float, float]], receive_times: Sequence[np.ndarray]
) -> CpuResult:
    """Median over windows of relay CPU / packets delivered (all, and kernel only), packets/s, CPU %."""
    all_times = np.sort(np.concatenate(list(receive_times))) if receive_times else np.zeros(0)
    per_packet: list[float] = []
    sys_per_packet: list[float] = []
    rates: list[float] = []
    cpu: list[float] = []
    for (ta, ca, sa), (tb, cb, sb) in itertools.pairwise(cpu_samples):
        n = int(np.searchsorted(all_times, tb) - np.searchsorted(all_times, ta))
        span = tb - ta
        cpu.append(100.0 * (cb - ca) / span)
        rates.append(n / span)
        if n:
            per_packet.append((cb - ca) * 1e6 / n)
            sys_per_packet.append((sb - sa) * 1e6 / n)
    return CpuResult(
        statistics.median(per_packet) if per_packet else None,
        statistics.median(sys_per_packet) if sys_per_packet else None,
        statistics.median(rates) if rates else None,
        statistics.median(cpu) if cpu else None,
        len(cpu),
    )


def percentile_ms(values_s: np.ndarray, q: float) -> float | None:
    if len(values_s) == 0:
        return None
    return float(np.percentile(values_s, q) * 1000.0)


def join_times(
    subs: Mapping[int, Mapping[str, Any]], feeds: Mapping[int, Sequence[int]]
) -> tuple[list[float], int]:
    """Seconds from each subscriber's join request to the first keyframe of each video stream; and
    the number of expected video streams that never showed a keyframe."""
    times: list[float] = []
    missing = 0
    for sub, data in subs.items():
        got = [t - data["join_started"] for t in data["first_keyframe"].values()]
        times.extend(got)
        missing += max(0, len(feeds.get(sub, ())) - len(got))
    return times, missing
