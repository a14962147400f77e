"""Calls benchmark: time from ``!visio start`` to first frame, and many participants joining at once.

Runs a real Synapse (SQLite) and the real service in this process, with reference clients
(``visio_matrix.client``) on loopback; every signaling message is Olm-encrypted to-device.

1. ``--runs`` three-participant calls in an encrypted room (``devstack.call_check.run_call``): for each
   participant, the time from ``!visio start`` to media from both others (content-checked). Prints
   p50/p95 over all participants of all runs. Aim: < 1.5 s on loopback.
2. N participants joining the running call at the same moment (N = 10, 25 by default): join latency
   (``join()`` called -> the bot's answer applied) p50/p95, failures, and the time until each one
   decodes video from the first participant. All publish audio, only ``--video-publishers`` (default
   1) also video: aiortc decodes every video it receives, and N clients decoding N-1 videos each in
   one Python process on 2 cores measure the test clients, not the service.
Baseline in the same run: the time one to-device round trip takes through this homeserver (bot ->
participant -> bot), the floor under any join latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from aiortc.mediastreams import MediaStreamTrack

from visio_matrix.app import Service
from visio_matrix.client.matrix import VisioMatrixClient, login_client
from visio_matrix.client.media import ColorVideoTrack, MediaProbe, ToneAudioTrack
from visio_matrix.client.session import ConferenceClient
from visio_matrix.config import load_config
from visio_matrix.devstack.call_check import loopback_pc, run_call
from visio_matrix.devstack.service_files import write_service_files
from visio_matrix.devstack.synapse import LocalSynapse, free_port
from visio_matrix.devstack.user import MatrixUser

PASSWORD = "bench password 1"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def ping_roundtrip(a: VisioMatrixClient, b: VisioMatrixClient, rounds: int = 10) -> float:
    """Median time of an Olm to-device message a -> b -> a through the homeserver (the floor)."""
    back: asyncio.Queue[object] = asyncio.Queue()

    async def on_b(msg: object) -> None:
        await b.to_device.send(
            a.user_id, a.device_id, "m.call.sdp_stream_metadata_changed", {"call_id": "bench-pong"}
        )

    a.to_device.add_handler(back.put)
    b.to_device.add_handler(on_b)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        await a.to_device.send(
            b.user_id, b.device_id, "m.call.sdp_stream_metadata_changed", {"call_id": "bench-ping"}
        )
        await asyncio.wait_for(back.get(), 10)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


async def join_at_once(
    hs: LocalSynapse, bot: str, room_id: str, users: list[str], root: Path, video_publishers: int
) -> tuple[list[float], list[float], int]:
    matrix = await asyncio.gather(
        *(
            login_client(hs.base_url, u, PASSWORD, root / f"{i}-{time.time_ns()}", "bench")
            for i, u in enumerate(users)
        )
    )
    # Everyone publishes audio; the first ``video_publishers`` also video. aiortc decodes every video
    # it receives, so N clients each decoding N-1 videos in this one process would saturate the 2
    # cores and measure the test clients, not the service.
    tracks: list[list[MediaStreamTrack]] = [
        [ToneAudioTrack(300 + 10 * i)]
        + ([ColorVideoTrack((200, 40 + i * 5 % 200, 40))] if i < video_publishers else [])
        for i in range(len(users))
    ]
    calls = [
        ConferenceClient(
            m.client, room_id, bot, channel=m.to_device, peer_connection_factory=loopback_pc, join_timeout=60
        )
        for m in matrix
    ]
    probe = MediaProbe()
    joins: list[float] = []
    firsts: list[float] = []
    failures = 0
    t0 = time.perf_counter()

    async def one(i: int) -> None:
        nonlocal failures
        try:
            await calls[i].join(tracks[i])
            joins.append(time.perf_counter() - t0)
            if i == 0:
                return
            remote = await calls[i].wait_for_track(users[0], "video", 60)
            received = probe.watch(remote.track)
            await asyncio.wait_for(received.got_frame.wait(), 60)
            firsts.append(time.perf_counter() - t0)
        except Exception as exc:
            failures += 1
            print(f"  participant {i} failed: {type(exc).__name__}: {exc}")

    await asyncio.gather(*(one(i) for i in range(len(users))))
    await asyncio.gather(*(c.leave() for c in calls), return_exceptions=True)
    await probe.close()
    for published in tracks:
        for track in published:
            track.stop()
    await asyncio.gather(*(m.close() for m in matrix), return_exceptions=True)
    return joins, firsts, failures


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="visio-bench-calls-"))
    client_port, service_port = free_port(), free_port()
    config_path, registration = write_service_files(
        work,
        homeserver_url=f"http://127.0.0.1:{client_port}",
        server_name=f"localhost:{client_port}",
        port=service_port,
    )
    hs = LocalSynapse(
        work / "hs", f"localhost:{client_port}", client_port, appservice_registration_files=[registration]
    )
    await hs.start()
    service = Service(load_config(config_path)[0])
    await service.start()
    results: dict[str, object] = {}
    try:
        most = max(args.n) if args.n else 3
        users = [await hs.register_user(f"u{i}{uuid.uuid4().hex[:4]}", PASSWORD) for i in range(max(3, most))]
        owner = await MatrixUser.login(hs.base_url, users[0], PASSWORD, work / "owner")
        room_id = await owner.create_room("bench", invite=[service.bot_user_id, *users[1:]], encrypted=True)
        for u in users[1:]:
            member = await MatrixUser.login(hs.base_url, u, PASSWORD, work / f"m-{u}")
            await member.join(room_id)
            await member.close()
        await owner.wait_for_membership(room_id, service.bot_user_id, "join", timeout=60)

        a = await login_client(hs.base_url, users[1], PASSWORD, work / "ping-a")
        b = await login_client(hs.base_url, users[2], PASSWORD, work / "ping-b")
        floor = await ping_roundtrip(a, b)
        await a.close()
        await b.close()
        print(f"baseline: Olm to-device round trip through the homeserver, median {floor * 1000:.0f} ms")
        results["todevice_roundtrip_ms"] = round(floor * 1000, 1)

        firsts: list[float] = []
        failed_runs = 0
        for run in range(args.runs):
            result = await run_call(
                hs.base_url,
                service.bot_user_id,
                room_id,
                owner,
                [(u, PASSWORD) for u in users[:3]],
                work / f"run{run}",
                listen_s=0.5,
            )
            if not result.ok:
                failed_runs += 1
            firsts += [r.first_frame_after_s for r in result.reports if r.first_frame_after_s is not None]
        print(
            f"3 participants, {args.runs} runs: start -> first frame from both others: "
            f"p50 {statistics.median(firsts):.2f}s p95 {pct(firsts, 0.95):.2f}s (aim < 1.5 s), failed runs {failed_runs}"
        )
        results["first_frame_s"] = {
            "p50": round(statistics.median(firsts), 3),
            "p95": round(pct(firsts, 0.95), 3),
            "failed_runs": failed_runs,
        }

        for n in args.n:
            await owner.send_text(room_id, "!visio start")
            await asyncio.sleep(1.0)
            joins, video, failures = await join_at_once(
                hs, service.bot_user_id, room_id, users[:n], work / f"n{n}", args.video_publishers
            )
            await owner.send_text(room_id, "!visio stop")
            await asyncio.sleep(1.0)
            line = (
                f"{n} joining at once: join p50 {statistics.median(joins):.2f}s p95 {pct(joins, 0.95):.2f}s"
                if joins
                else f"{n} joining at once: no join succeeded"
            )
            if video:
                line += f" | first video from participant 0: p50 {statistics.median(video):.2f}s p95 {pct(video, 0.95):.2f}s"
            print(
                line
                + f" | failures {failures}/{n} | join p50 = {statistics.median(joins) / floor if joins else 0:.0f}x the to-device round trip"
            )
            results[f"join_{n}"] = {
                "join_p50": round(statistics.median(joins), 3) if joins else None,
                "join_p95": round(pct(joins, 0.95), 3) if joins else None,
                "video_p50": round(statistics.median(video), 3) if video else None,
                "failures": failures,
            }
        await owner.close()
    finally:
        await service.stop()
        await hs.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="three-participant calls to time (default 5)")
    parser.add_argument("--n", type=int, nargs="*", default=[10, 25], help="participants joining at once")
    parser.add_argument(
        "--video-publishers", type=int, default=1, help="of the N, how many also publish video (default 1)"
    )
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("nio").setLevel(logging.ERROR)
    print(json.dumps(asyncio.run(main_async(args))))


if __name__ == "__main__":
    main()
