"""Profile and A/B-measure the relay's per-packet forwarding path (issue 3), in-process.

The relay runs in this process; one publisher and N subscribers (real aiortc peers on 127.0.0.1) run
in one spawned peer process. The publisher replays a pre-encoded VP8 + Opus clip (``clip.py``), the
subscribers' receivers are tapped (no jitter buffer, no decoding), so the peer process stays cheap.

Each round builds a fresh relay with one *variant* of the forwarding path, connects everyone, warms
up, then measures this process's CPU time (``time.process_time``: every thread) over a window and
divides it by the packets the relay sent in that window. Variants alternate round by round (ABBA...)
so both see the same machine load; the summary gives per-variant medians.

- ``current``: the code in ``visio_matrix/relay/forwarding.py`` as it is.
- ``baseline``: the forwarding path before issue 3's optimizations (``BaselineWriter`` below: a
  queue + writer task per subscriber and aiortc's awaited ``RTCDtlsTransport._send_rtp``).

``--profile`` adds one round per variant under cProfile (thread CPU time, measurement window only)
and prints microseconds per packet out, per function.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import multiprocessing
import os
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from multiprocessing.connection import Connection
from typing import Any, ClassVar

from aiortc import RTCRtpSender
from aiortc.clock import current_ntp_time
from aiortc.rtp import RtpPacket, wrap_rtx

from visio_matrix.clock import SystemClock
from visio_matrix.relay import NegotiationNeeded, Relay, RelayOptions, forwarding, participant
from visio_matrix.relay import aiortc_hooks as hooks

from .clip import ClipSpec

CONNECT_TIMEOUT_S = 120.0


# ---- the pre-optimization forwarding path (variant "baseline") ------------------------------------


class BaselineWriter:
    """``forwarding.SubscriberWriter`` as it was before issue 3's work (queue + task + awaited send)."""

    # The relay no longer closes its writers (they own nothing now): the driver closes these.
    instances: ClassVar[list[BaselineWriter]] = []

    def __init__(self, counters: forwarding.Counters, queue_size: int) -> None:
        self.counters = counters
        self._queue: asyncio.Queue[tuple[Any, RtpPacket, bool]] = asyncio.Queue(queue_size)
        self._task: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(self._run())
        BaselineWriter.instances.append(self)

    def full(self) -> bool:
        return self._queue.full()

    def put(self, down: Any, packet: RtpPacket, keep: bool) -> None:
        self._queue.put_nowait((down, packet, keep))

    async def _run(self) -> None:
        while True:
            down, packet, keep = await self._queue.get()
            data = packet.serialize(down.extensions)
            try:
                await down.sender.transport._send_rtp(data)
            except ConnectionError:
                self.counters.drops += 1
                continue
            if keep:
                down.history.put(packet.sequence_number, packet)
                hooks.record_sent(down.sender, packet.timestamp, len(packet.payload), current_ntp_time())
            self.counters.packets_out += 1
            self.counters.bytes_out += len(packet.payload)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def baseline_offer(self: Any, packet: RtpPacket, keyframe: bool) -> None:
    """``forwarding.DownTrack.offer`` as it was before issue 3's work."""
    if not self._started:
        return
    if self._waiting_keyframe:
        if not keyframe:
            self._drop(packet.sequence_number)
            return
        self._waiting_keyframe = False
    if self._writer.full():
        self._drop(packet.sequence_number)
        if self._video:
            self._waiting_keyframe = True
            self.up.request_keyframe()
        return
    seq = self._seq.rewrite(packet.sequence_number)
    if seq is None:
        self._counters.drops += 1
        return
    out = RtpPacket(
        payload_type=self._pt,
        marker=packet.marker,
        sequence_number=seq,
        timestamp=self._ts.rewrite(packet.timestamp),
        ssrc=self._ssrc,
        payload=packet.payload,
    )
    out.extensions.mid = self._mid
    out.extensions.audio_level = packet.extensions.audio_level
    self._writer.put(self, out, True)


def baseline_on_feedback(self: Any, kind: str, lost: list[int]) -> None:
    """``forwarding.DownTrack.on_feedback`` as it was before issue 3's work (history of RtpPackets)."""
    if kind == "pli":
        self._counters.keyframe_requests_received += 1
        self.up.request_keyframe()
        return
    self._counters.nacks_received += len(lost)
    for seq in lost:
        packet = self.history.get(seq)
        if packet is None or self._writer.full():
            continue
        if self._rtx_pt is not None:
            packet = wrap_rtx(
                packet, payload_type=self._rtx_pt, sequence_number=self._rtx_seq, ssrc=self._rtx_ssrc
            )
            self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
        self._counters.retransmissions += 1
        self._writer.put(self, packet, False)


@contextlib.asynccontextmanager
async def variant(name: str) -> AsyncIterator[None]:
    """Install one forwarding variant for the relays created inside the block."""
    if name == "current":
        yield
        return
    if name != "baseline":
        raise ValueError(f"unknown variant {name!r}")
    down = forwarding.DownTrack
    saved = participant.SubscriberWriter, down.offer, down.on_feedback
    participant.SubscriberWriter = BaselineWriter  # type: ignore[misc,assignment]
    down.offer, down.on_feedback = baseline_offer, baseline_on_feedback  # type: ignore[method-assign]
    try:
        yield
    finally:
        participant.SubscriberWriter, down.offer, down.on_feedback = saved  # type: ignore[misc,method-assign]
        writers, BaselineWriter.instances = BaselineWriter.instances, []
        for writer in writers:
            await writer.close()


# ---- the peer process ---------------------------------------------------------------------------


def peers_main(conn: Connection, spec: ClipSpec) -> None:
    asyncio.run(_peers(conn, spec))


async def _peers(conn: Connection, spec: ClipSpec) -> None:
    from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from .clip import EncodedClipTrack, encode_clip

    clip = encode_clip(spec, seed=1)
    loop = asyncio.get_running_loop()
    pcs: dict[str, RTCPeerConnection] = {}
    received = {"packets": 0}

    def count(packet: RtpPacket, codec: Any) -> None:
        received["packets"] += 1

    def new_pc(name: str) -> RTCPeerConnection:
        config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        pc = hooks.restrict_ice(RTCPeerConnection(config), ["127.0.0.1"])
        pcs[name] = pc
        return pc

    async def handle(cmd: str, args: dict[str, Any]) -> Any:
        if cmd == "publisher_offer":
            pc = new_pc("publisher")
            audio = EncodedClipTrack("audio", clip.audio, clip.fps)
            video = EncodedClipTrack("video", clip.video, clip.fps)
            pc.addTransceiver(audio, direction="sendonly")
            tv = pc.addTransceiver(video, direction="sendonly")
            caps = RTCRtpSender.getCapabilities("video").codecs
            tv.setCodecPreferences([c for c in caps if c.mimeType.lower() in ("video/vp8", "video/rtx")])
            tv.sender._send_keyframe = video.request_keyframe  # type: ignore[method-assign]
            await pc.setLocalDescription(await pc.createOffer())
            return pc.localDescription.sdp
        if cmd == "publisher_accept":
            await pcs["publisher"].setRemoteDescription(RTCSessionDescription(args["sdp"], "answer"))
            return None
        if cmd == "answer":
            pc = pcs.get(args["name"]) or new_pc(args["name"])
            await pc.setRemoteDescription(RTCSessionDescription(args["sdp"], "offer"))
            for transceiver in pc.getTransceivers():
                hooks.tap_receiver(transceiver.receiver, count)
            await pc.setLocalDescription(await pc.createAnswer())
            return pc.localDescription.sdp
        if cmd == "received":
            return received["packets"]
        if cmd == "reset":
            await asyncio.gather(*(pc.close() for pc in pcs.values()), return_exceptions=True)
            pcs.clear()
            return None
        raise ValueError(cmd)

    while True:
        cmd, args = await loop.run_in_executor(None, conn.recv)
        if cmd == "exit":
            await handle("reset", {})
            conn.send(("ok", None))
            return
        try:
            conn.send(("ok", await handle(cmd, args)))
        except Exception as exc:  # reported to the driver, which stops
            conn.send(("error", repr(exc)))


class Peers:
    """The driver's end of the peer process."""

    def __init__(self, spec: ClipSpec) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=peers_main, args=(child, spec), daemon=True)
        self._proc.start()
        child.close()
        self._lock = asyncio.Lock()

    async def call(self, cmd: str, **args: Any) -> Any:
        async with self._lock:  # one request in flight on the pipe
            loop = asyncio.get_running_loop()
            self._conn.send((cmd, args))
            status, value = await loop.run_in_executor(None, self._conn.recv)
        if status != "ok":
            raise RuntimeError(f"peer process: {cmd} failed: {value}")
        return value

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.call("exit"), 30)
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        self._conn.close()


# ---- one round ----------------------------------------------------------------------------------


async def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def run_round(
    peers: Peers,
    name: str,
    subscribers: int,
    warmup: float,
    seconds: float,
    profile: cProfile.Profile | None,
    py_spy: str | None = None,
    burst: int = 0,
) -> dict[str, Any]:
    async with variant(name):
        relay = Relay(
            RelayOptions(host_addresses=("127.0.0.1",), udp_port_min=43000, udp_port_max=43999),
            SystemClock(),
        )
        conf = await relay.create_conference("profile")

        async def pump() -> None:
            while True:
                event = await relay.events.get()
                if isinstance(event, NegotiationNeeded):
                    answer = await peers.call("answer", name=event.participant_id, sdp=event.offer_sdp)
                    await conf.accept_answer(event.participant_id, answer)

        pump_task = asyncio.create_task(pump())
        try:
            offer = await peers.call("publisher_offer")
            negotiated = await conf.add_participant("publisher", offer_sdp=offer)
            await peers.call("publisher_accept", sdp=negotiated.sdp)
            for i in range(subscribers):
                sub = f"sub{i}"
                negotiated = await conf.add_participant(sub)
                answer = await peers.call("answer", name=sub, sdp=negotiated.sdp)
                await conf.accept_answer(sub, answer)

            def all_receiving() -> bool:
                stats = conf.stats().participants
                return sum(1 for p in stats if p.participant_id != "publisher" and p.packets_out > 0) == (
                    subscribers
                )

            await _wait(all_receiving, CONNECT_TIMEOUT_S, "every subscriber to receive")
            await asyncio.sleep(warmup)
            before, cpu0, wall0, times0 = conf.stats(), time.process_time(), time.monotonic(), os.times()
            if profile is not None:
                profile.enable()
            spy = start_py_spy(py_spy, seconds) if py_spy else None
            await asyncio.sleep(seconds)
            if profile is not None:
                profile.disable()
            after, cpu1, wall1, times1 = conf.stats(), time.process_time(), time.monotonic(), os.times()
            if spy is not None:
                await asyncio.get_running_loop().run_in_executor(None, spy.wait)
            sync_us = await measure_burst(conf, burst) if burst else None
        finally:
            pump_task.cancel()
            await asyncio.gather(pump_task, return_exceptions=True)
            await relay.close()
            await peers.call("reset")
    out = after.packets_out - before.packets_out
    return {
        "variant": name,
        "subscribers": subscribers,
        "cpu_s": cpu1 - cpu0,
        "system_s": times1.system - times0.system,  # kernel: includes loopback delivery of each datagram
        "wall_s": wall1 - wall0,
        "packets_in": after.packets_in - before.packets_in,
        "packets_out": out,
        "drops": after.drops - before.drops,
        "cpu_us_per_packet_out": (cpu1 - cpu0) * 1e6 / out if out else None,
        "sync_out_path_us_per_packet_out": sync_us,
    }


async def measure_burst(conf: Any, packets: int) -> float | None:
    """Thread CPU of ``UpTrack.on_packet`` alone, per packet out, for injected video packets.

    Only meaningful where the whole out path is synchronous (variant ``current``): the baseline's
    on_packet only enqueues. One packet per millisecond, so the subscribers' sockets keep up. The
    sequence numbers jump ahead of the publisher's: run it after the measurement window."""
    publisher = conf._participants["publisher"]
    up = next(u for u in publisher.ups.values() if u.info.kind == "video")
    if not up.downs or up._media_ssrc is None:
        return None
    outs0 = sum(d._counters.packets_out for d in up.downs)
    first = (getattr(up, "_last_seq", 0) + 5000) & 0xFFFF
    payload = bytes([0x90, 0x80, 0x01]) + bytes(range(256)) * 4  # VP8 descriptor, not a keyframe start
    spent = 0.0
    for i in range(packets):
        packet = RtpPacket(
            payload_type=96, sequence_number=(first + i) & 0xFFFF, timestamp=i, payload=payload
        )
        t0 = time.thread_time()
        up.on_packet(packet, up.codec)
        spent += time.thread_time() - t0
        await asyncio.sleep(0.001)
    outs = sum(d._counters.packets_out for d in up.downs) - outs0
    return round(spent * 1e6 / outs, 2) if outs else None


def start_py_spy(output: str, seconds: float) -> subprocess.Popen[bytes]:
    """Sample this process with py-spy (Python frames, non-blocking: little distortion) for the window."""
    exe = os.path.join(os.path.dirname(sys.executable), "py-spy")
    cmd = [exe, "record", "--pid", str(os.getpid()), "--duration", str(int(seconds)), "--rate", "250"]
    cmd += ["--nonblocking", "--format", "raw", "--output", output]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def profile_table(profile: cProfile.Profile, packets_out: int, top: int) -> str:
    """Microseconds per packet out by function (tottime = own time, cumtime = with callees)."""
    stats = pstats.Stats(profile, stream=io.StringIO())
    rows = []
    for (path, line, func), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = path.split("site-packages/")[-1].split("visio_matrix/")[-1]
        rows.append((tottime, cumtime, calls, f"{where}:{line}({func})"))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    lines = [f"total profiled CPU: {total * 1e6 / packets_out:.1f} us/packet out ({packets_out} packets out)"]
    lines.append(f"{'own us/pkt':>10} {'cum us/pkt':>10} {'calls/pkt':>9}  function")
    for tottime, cumtime, calls, label in rows[:top]:
        lines.append(
            f"{tottime * 1e6 / packets_out:10.2f} {cumtime * 1e6 / packets_out:10.2f} "
            f"{calls / packets_out:9.2f}  {label}"
        )
    return "\n".join(lines)


def summarize(results: list[dict[str, Any]], variants: list[str], counts: list[int]) -> dict[str, Any]:
    """Per variant and subscriber count: medians over rounds; plus the marginal cost per packet out."""
    summary: dict[str, Any] = {}
    for name in variants:
        per_count: dict[int, dict[str, Any]] = {}
        for n in counts:
            mine = [r for r in results if r["variant"] == name and r["subscribers"] == n and r["packets_out"]]
            if not mine:
                continue
            per_count[n] = {
                "rounds": len(mine),
                "cpu_us_per_packet_out_median": round(
                    statistics.median(r["cpu_us_per_packet_out"] for r in mine), 2
                ),
                "cpu_us_per_packet_out_all": [round(r["cpu_us_per_packet_out"], 2) for r in mine],
                "system_share_median": round(statistics.median(r["system_s"] / r["cpu_s"] for r in mine), 2),
                "cpu_ms_per_s_median": round(
                    statistics.median(r["cpu_s"] * 1e3 / r["wall_s"] for r in mine), 1
                ),
                "packets_out_per_s_median": round(
                    statistics.median(r["packets_out"] / r["wall_s"] for r in mine)
                ),
                "drops_total": sum(r["drops"] for r in mine),
            }
            syncs = [
                r["sync_out_path_us_per_packet_out"] for r in mine if r["sync_out_path_us_per_packet_out"]
            ]
            if syncs:
                per_count[n]["sync_out_path_us_per_packet_out_median"] = statistics.median(syncs)
        summary[name] = {"by_subscribers": per_count}
        if len(per_count) >= 2:
            hi, lo = per_count[max(per_count)], per_count[min(per_count)]
            extra_out = hi["packets_out_per_s_median"] - lo["packets_out_per_s_median"]
            if extra_out > 0:
                marginal = (hi["cpu_ms_per_s_median"] - lo["cpu_ms_per_s_median"]) * 1e3 / extra_out
                summary[name]["marginal_us_per_packet_out"] = round(marginal, 2)
    return summary


async def main_async(args: argparse.Namespace) -> None:
    spec = ClipSpec(width=640, height=360, fps=30, seconds=2.0, video_kbps=args.video_kbps)
    counts = [args.subscribers] + ([args.marginal] if args.marginal else [])
    peers = Peers(spec)
    results: list[dict[str, Any]] = []
    try:
        order = list(args.variants)
        for r in range(args.rounds):
            for n in counts:
                for name in order if r % 2 == 0 else list(reversed(order)):
                    burst = args.burst if name == "current" else 0
                    result = await run_round(peers, name, n, args.warmup, args.seconds, None, burst=burst)
                    result["round"] = r
                    results.append(result)
                    print(json.dumps(result), flush=True)
        if args.py_spy:
            result = await run_round(
                peers, args.variants[-1], args.subscribers, args.warmup, args.seconds, None, args.py_spy
            )
            print(
                f"py-spy ({args.variants[-1]}): {args.py_spy}, {result['packets_out']} packets out",
                flush=True,
            )
        if args.profile:
            for name in args.variants:
                profile = cProfile.Profile(time.thread_time)
                result = await run_round(peers, name, args.subscribers, args.warmup, args.seconds, profile)
                print(
                    f"\n== cProfile, variant {name}, {args.subscribers} subscribers (profiling inflates) =="
                )
                print(profile_table(profile, result["packets_out"], args.top), flush=True)
    finally:
        await peers.close()
    print("\n== summary (medians over rounds) ==")
    summary = summarize(results, list(args.variants), counts)
    print(json.dumps(summary, indent=1))
    if "baseline" in summary and "current" in summary:
        n = args.subscribers
        b = summary["baseline"]["by_subscribers"].get(n, {}).get("cpu_us_per_packet_out_median")
        c = summary["current"]["by_subscribers"].get(n, {}).get("cpu_us_per_packet_out_median")
        if b and c:
            print(f"1 -> {n}: current vs baseline: {c:.1f} / {b:.1f} us per packet out = {c / b:.2f}x")
        mb, mc = (summary[v].get("marginal_us_per_packet_out") for v in ("baseline", "current"))
        if mb and mc:
            print(f"marginal cost of one more packet out: current {mc:.1f} us, baseline {mb:.1f} us")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument(
        "--marginal", type=int, default=0, help="also run with this many subscribers: marginal us per packet"
    )
    parser.add_argument("--rounds", type=int, default=4, help="rounds per variant (ABBA order)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window per round")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--video-kbps", type=int, default=1200, help="publisher's clip bitrate")
    parser.add_argument("--variants", nargs="+", default=["baseline", "current"])
    parser.add_argument("--profile", action="store_true", help="add one cProfile round per variant")
    parser.add_argument(
        "--py-spy", metavar="FILE", help="one more round (last variant) sampled by py-spy: collapsed stacks"
    )
    parser.add_argument(
        "--burst",
        type=int,
        default=0,
        help="variant current: time on_packet alone for this many injected packets",
    )
    parser.add_argument("--top", type=int, default=30, help="functions shown per profile")
    asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
