"""MCU mode end to end: real aiortc peers through the relay's public API. A single-stream endpoint
("mcu" mode) hears the other participants' tones (spectrum) and sees their tiles in the composite,
and neither hears nor sees itself."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame

from visio_matrix.relay import Relay
from visio_matrix.relay.mcu.layout import grid

from .peers import Peer, Signaling

pytestmark = pytest.mark.media

COLOURS = {"alice": (230, 20, 20), "bob": (20, 230, 20), "carol": (20, 20, 230)}
TONES = {"alice": 440.0, "bob": 1000.0, "carol": 2500.0}


class SingleStreamPeer(Peer):
    """A peer that keeps all the audio it decodes and the last whole picture (the composite)."""

    def __init__(self, name: str) -> None:
        super().__init__(name, COLOURS[name], TONES[name])
        self.samples: list[np.ndarray] = []
        self.pictures = 0
        self.last_picture: VideoFrame | None = None

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if isinstance(frame, AudioFrame):
                    channels = len(frame.layout.channels)
                    self.samples.append(frame.to_ndarray().reshape(-1, channels)[:, 0].copy())
                elif isinstance(frame, VideoFrame):
                    self.pictures += 1
                    self.last_picture = frame
        except MediaStreamError:
            return


def band(samples: np.ndarray, freq: float) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1 / 48000)
    return float(spectrum[np.abs(freqs - freq) < 25].sum())


def tiles(picture: VideoFrame, count: int) -> list[np.ndarray]:
    rgb = picture.to_ndarray(format="rgb24")
    out = []
    for cell in grid(count, picture.width, picture.height):
        cx, cy = cell.x + cell.width // 2, cell.y + cell.height // 2
        out.append(rgb[cy - 8 : cy + 8, cx - 8 : cx + 8].reshape(-1, 3).mean(axis=0))
    return out


def matches(colour: np.ndarray, name: str) -> bool:
    return bool(np.all(np.abs(colour - np.array(COLOURS[name])) < 45))


async def test_mcu_endpoint_hears_and_sees_the_others_but_not_itself(relay: Relay) -> None:
    conference = await relay.create_conference("mcu-room")
    signaling = Signaling(relay, conference)
    carol = SingleStreamPeer("carol")
    try:
        for name in ("alice", "bob"):
            await signaling.join(Peer(name, COLOURS[name], TONES[name]))
        signaling.peers["carol"] = carol
        negotiated = await conference.add_participant("carol", offer_sdp=await carol.offer(), mode="mcu")
        await carol.accept(negotiated.sdp)

        def composite_complete() -> bool:
            picture = carol.last_picture
            if picture is None or len(carol.samples) < 75:
                return False
            found = tiles(picture, 2)
            return {n for n in ("alice", "bob") if any(matches(c, n) for c in found)} == {"alice", "bob"}

        await signaling.wait_for(composite_complete, 30, "carol's composite showing alice and bob")
        await asyncio.sleep(0)  # let readers append what is already decoded
        heard = np.concatenate(carol.samples[-50:]).astype(np.float64)  # the last second
        energy = {name: band(heard, freq) for name, freq in TONES.items()}
        assert energy["alice"] > 30 * energy["carol"] and energy["bob"] > 30 * energy["carol"], energy
        picture = carol.last_picture
        assert picture is not None and (picture.width, picture.height) == (640, 360)
        rgb = picture.to_ndarray(format="rgb24").reshape(-1, 3).astype(int)
        own = np.all(np.abs(rgb - np.array(COLOURS["carol"])) < 45, axis=1).mean()
        assert own == 0.0, f"{own:.1%} of carol's composite has her own colour"
        # The SFU participants still get carol's own media (she is a publisher too).
        await signaling.wait_for(
            lambda: all(
                any(r.kind == "audio" and len(r.audio) >= 25 for r in signaling.peers[n].received.values())
                for n in ("alice", "bob")
            ),
            30,
            "alice and bob receiving audio",
        )
    finally:
        await signaling.close()
