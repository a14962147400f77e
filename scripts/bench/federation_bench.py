"""``scripts/bench-federation``: what a relay-to-relay link (federation, issue 5) carries and costs.

In one process: relay A and relay B, one conference each, linked as the bots link them (A offers,
B answers only; ``tests/relay/link_shuttle.py``). One publisher on A (video + audio, aiortc), one
direct subscriber on A (the baseline) and N subscribers on B, for N in 1, 3, 6, 10 (``--quick``:
1, 3). Per N, after a warm-up:

- **link rate**: bytes/s and packets/s A's link participant sent over ``--seconds`` (its
  ``ParticipantStats.bytes_out``, RTP payload bytes, and ``packets_out``). It must not grow with N.
- **federated hop**: for every packet, its arrival time at each B subscriber minus its arrival at
  the direct A subscriber; both run in this process, on one clock, so the difference is the extra
  one-way delay of going A -> link -> B -> subscriber instead of A -> subscriber. Packets are
  matched by a hash of their RTP payload, which the relays forward unchanged (they rewrite SSRC,
  sequence numbers and timestamps, so those cannot be used); arrivals are recorded in each
  subscriber's ``RTCRtpReceiver._handle_rtp_packet`` (after SRTP, before the jitter buffer), first
  arrival only. Payloads seen more than once at the baseline (a constant tone can repeat an Opus
  packet) are left out. p50 and p99 over all B subscribers' packets.
- **multi_sfu**: Element Call's multi-SFU mode has every far-side subscriber pull each publisher's
  streams from the publisher's own SFU, so the cross-ministry traffic is publishers x far
  subscribers x per-stream rate (per-stream rate = measured link rate / streams on the link).
  Printed as bytes/s and as the ratio multi_sfu / link.

Medians over ``--runs`` runs (each run sets everything up afresh). Human-readable lines, then one
JSON line per N. Figures: docs/performance.md ("Federation link").
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from tests.relay.link_shuttle import LinkShuttle
from visio_matrix.client.media import ColorVideoTrack, ToneAudioTrack
from visio_matrix.clock import SystemClock
from visio_matrix.relay import Conference, NegotiationNeeded, Relay, RelayEvent, RelayOptions, restrict_ice

LINK = "link"
PUBLISHER = {"user_id": "@alice:a.example", "device_id": "ALICEDEV"}


class Subscriber:
    """An aiortc peer that only receives and records when each RTP payload first arrived."""

    def __init__(self, name: str) -> None:
        self.name = name
        config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        self.pc = restrict_ice(RTCPeerConnection(config), ["127.0.0.1"])
        self.arrivals: dict[bytes, float] = {}
        self.repeated: set[bytes] = set()
        self.packets = 0
        self._drains: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        receiver = next(t.receiver for t in self.pc.getTransceivers() if t.receiver.track is track)
        original = receiver._handle_rtp_packet

        async def handle(packet: Any, arrival_time_ms: int) -> None:
            now = time.monotonic()
            key = hashlib.blake2b(packet.payload, digest_size=12).digest()
            self.packets += 1
            if key in self.arrivals:
                self.repeated.add(key)
            else:
                self.arrivals[key] = now
            await original(packet, arrival_time_ms)

        receiver._handle_rtp_packet = handle
        self._drains.append(asyncio.get_running_loop().create_task(_drain(track)))

    async def answer(self, offer_sdp: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return str(self.pc.localDescription.sdp)

    async def close(self) -> None:
        for task in self._drains:
            task.cancel()
        await asyncio.gather(*self._drains, return_exceptions=True)
        await self.pc.close()


async def _drain(track: MediaStreamTrack) -> None:
    """Consume decoded frames so aiortc's queues stay short (decoding happens anyway)."""
    try:
        while True:
            await track.recv()
    except Exception:
        return


class Side:
    """One relay's event pump: the link's events go to the shuttle, offers to subscribers are answered."""

    def __init__(self, relay: Relay, conference: Conference, on_link: Callable[[RelayEvent], Any]) -> None:
        self.relay, self.conference, self.on_link = relay, conference, on_link
        self.subscribers: dict[str, Subscriber] = {}
        self.task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        while True:
            event = await self.relay.events.get()
            if await self.on_link(event):
                continue
            if isinstance(event, NegotiationNeeded) and event.participant_id in self.subscribers:
                answer = await self.subscribers[event.participant_id].answer(event.offer_sdp)
                await self.conference.accept_answer(event.participant_id, answer)

    async def add_subscriber(self, sub: Subscriber) -> None:
        self.subscribers[sub.name] = sub
        negotiated = await self.conference.add_participant(sub.name, metadata={"user_id": f"@{sub.name}:x"})
        await self.conference.accept_answer(sub.name, await sub.answer(negotiated.sdp))

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        for sub in self.subscribers.values():
            await sub.close()


@dataclass(frozen=True)
class Sample:
    subscribers: int
    link_bytes_s: float
    link_packets_s: float
    link_streams: int
    hop_p50_ms: float
    hop_p99_ms: float
    matched: int


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def run_once(n: int, seconds: float, warmup: float, port_base: int) -> Sample:
    clock = SystemClock()
    relay_a = Relay(RelayOptions(("127.0.0.1",), port_base, port_base + 499), clock)
    relay_b = Relay(RelayOptions(("127.0.0.1",), port_base + 500, port_base + 999), clock)
    a, b = await relay_a.create_conference("fed"), await relay_b.create_conference("fed")
    shuttle = LinkShuttle(a, b, LINK)
    side_a, side_b = Side(relay_a, a, shuttle.on_a_event), Side(relay_b, b, shuttle.on_b_event)
    config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    publisher = restrict_ice(RTCPeerConnection(config), ["127.0.0.1"])
    try:
        publisher.addTrack(ToneAudioTrack(440.0))
        publisher.addTrack(ColorVideoTrack((230, 20, 20)))
        await publisher.setLocalDescription(await publisher.createOffer())
        negotiated = await a.add_participant(
            "alice", offer_sdp=publisher.localDescription.sdp, metadata=PUBLISHER
        )
        await publisher.setRemoteDescription(RTCSessionDescription(negotiated.sdp, "answer"))
        direct = Subscriber("direct")
        await side_a.add_subscriber(direct)
        await shuttle.connect()
        far = [Subscriber(f"far{i}") for i in range(n)]
        for sub in far:
            await side_b.add_subscriber(sub)
        everyone = [direct, *far]
        await wait_until(lambda: all(s.packets > 50 for s in everyone), 30, "media at every subscriber")
        await asyncio.sleep(warmup)

        def link_out() -> tuple[int, int]:
            stats = next(p for p in a.stats().participants if p.participant_id == LINK)
            return stats.bytes_out, stats.packets_out

        bytes0, packets0 = link_out()
        t0 = time.monotonic()
        marks = {s.name: set(s.arrivals) for s in everyone}
        await asyncio.sleep(seconds)
        bytes1, packets1 = link_out()
        elapsed = time.monotonic() - t0
        await asyncio.sleep(0.5)  # let the last packets of the window reach B

        hops = []
        for sub in far:
            for key, at in sub.arrivals.items():
                if key in marks[sub.name] or key in direct.repeated or key in sub.repeated:
                    continue
                base = direct.arrivals.get(key)
                if base is not None and key not in marks["direct"]:
                    hops.append((at - base) * 1000.0)
        if not hops:
            raise RuntimeError("no packet matched between the direct and the far subscribers")
        return Sample(
            subscribers=n,
            link_bytes_s=(bytes1 - bytes0) / elapsed,
            link_packets_s=(packets1 - packets0) / elapsed,
            link_streams=len(a.streams_for(LINK)),
            hop_p50_ms=percentile(hops, 0.5),
            hop_p99_ms=percentile(hops, 0.99),
            matched=len(hops),
        )
    finally:
        await side_a.close()
        await side_b.close()
        await publisher.close()
        await relay_a.close()
        await relay_b.close()


async def main_async(args: argparse.Namespace) -> int:
    counts = (1, 3) if args.quick else (1, 3, 6, 10)
    publishers = 1
    results: dict[int, list[Sample]] = {n: [] for n in counts}
    for run in range(args.runs):
        for n in counts:
            sample = await run_once(n, args.seconds, args.warmup, args.port_base)
            results[n].append(sample)
            print(
                f"run {run + 1}/{args.runs} N={n}: link {sample.link_bytes_s / 1000:.1f} kB/s "
                f"{sample.link_packets_s:.0f} pkt/s, hop p50 {sample.hop_p50_ms:.2f} ms "
                f"p99 {sample.hop_p99_ms:.2f} ms ({sample.matched} packets)",
                file=sys.stderr,
                flush=True,
            )
    print(f"Federation link, 1 publisher on A (video+audio), N subscribers on B; medians of {args.runs} runs")
    print(
        f"{'N':>3} {'link kB/s':>10} {'link pkt/s':>10} {'streams':>7} {'hop p50 ms':>10} "
        f"{'hop p99 ms':>10} {'multi_sfu kB/s':>14} {'multi/link':>10}"
    )
    rows = []
    for n in counts:
        samples = results[n]
        link_bytes = statistics.median(s.link_bytes_s for s in samples)
        link_packets = statistics.median(s.link_packets_s for s in samples)
        streams = samples[0].link_streams
        per_stream = link_bytes / streams
        multi_sfu = publishers * n * streams * per_stream
        row = {
            "scenario": "federation",
            "publishers": publishers,
            "far_subscribers": n,
            "runs": args.runs,
            "link_bytes_s": round(link_bytes, 1),
            "link_packets_s": round(link_packets, 1),
            "link_streams": streams,
            "hop_p50_ms": round(statistics.median(s.hop_p50_ms for s in samples), 3),
            "hop_p99_ms": round(statistics.median(s.hop_p99_ms for s in samples), 3),
            "multi_sfu_bytes_s": round(multi_sfu, 1),
            "multi_sfu_over_link": round(multi_sfu / link_bytes, 2),
        }
        rows.append(row)
        print(
            f"{n:>3} {link_bytes / 1000:>10.1f} {link_packets:>10.0f} {streams:>7} "
            f"{row['hop_p50_ms']:>10.2f} {row['hop_p99_ms']:>10.2f} {multi_sfu / 1000:>14.1f} "
            f"{row['multi_sfu_over_link']:>10.2f}"
        )
    rates = [r["link_bytes_s"] for r in rows]
    spread = (max(rates) - min(rates)) / statistics.median(rates)
    print(f"link rate spread across N: {spread * 100:.1f} % ({'flat' if spread < 0.15 else 'NOT flat'})")
    for row in rows:
        print(json.dumps(row))
    return 0 if spread < 0.15 else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="N = 1, 3 only")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement window per N")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--port-base", type=int, default=45000, help="UDP ports port-base..+999")
    args = parser.parse_args()
    if args.runs < 1 or args.seconds <= 0:
        parser.error("--runs must be >= 1 and --seconds > 0")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
