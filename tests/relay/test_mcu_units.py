"""Pure parts of the MCU path: mixing, FIFOs, levels, active speaker, layout, tick schedule, compositor."""

from __future__ import annotations

import math

import av
import numpy as np
import pytest
from aiortc.codecs import depayload, get_decoder, get_encoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from visio_matrix.relay.mcu import McuSession
from visio_matrix.relay.mcu.compositor import Compositor
from visio_matrix.relay.mcu.decoder import Picture
from visio_matrix.relay.mcu.layout import Rect, fit, grid, grid_shape
from visio_matrix.relay.mcu.levels import SILENCE_DBOV, LevelMeter, dbov, to_rfc6464
from visio_matrix.relay.mcu.mixer import FRAME_SAMPLES, SampleFifo, mix, soft_limit
from visio_matrix.relay.mcu.ticks import next_deadline


def tone(freq: float, amplitude: float, n: int = FRAME_SAMPLES) -> np.ndarray:
    t = np.arange(n) / 48000
    return (amplitude * np.sin(2 * math.pi * freq * t)).astype(np.int16)


# -- mixing -------------------------------------------------------------------------------------


def test_mix_excludes_exactly_the_sinks_own_contribution() -> None:
    a, b, c = tone(500, 3000), tone(900, 3000), tone(1300, 3000)
    result = mix({"a": a, "b": b, "c": c})
    assert np.array_equal(result.for_sink("a"), b.astype(np.int32) + c)
    assert np.array_equal(result.for_sink("b"), a.astype(np.int32) + c)
    # A sink that is not a source hears everyone.
    assert np.array_equal(result.for_sink("listener"), a.astype(np.int32) + b + c)


def test_mix_of_nothing_is_silence_and_wrong_sizes_are_rejected() -> None:
    assert not mix({}).for_sink("x").any()
    with pytest.raises(ValueError, match="expected 960"):
        mix({"a": np.zeros(480, np.int16)})


def test_soft_limit_never_wraps_and_is_transparent_below_the_knee() -> None:
    loud = np.array([32767 * 3, -32768 * 3, 40000, -40000, 1000, -1000], np.int32)
    out = soft_limit(loud)
    assert out.dtype == np.int16
    assert out[0] > 30000 and out[1] < -30000  # saturates with the sign kept, no wrap-around
    assert out[2] > 24576 and out[3] < -24576
    assert out[4] == 1000 and out[5] == -1000
    quiet = np.array([24000, -24000, 0], np.int32)
    assert np.array_equal(soft_limit(quiet), quiet.astype(np.int16))


def test_fifo_prebuffers_then_releases_frames() -> None:
    fifo = SampleFifo(prebuffer=2 * FRAME_SAMPLES, capacity=4 * FRAME_SAMPLES)
    fifo.push(np.ones(FRAME_SAMPLES, np.int16))
    assert fifo.pop() is None  # still priming
    fifo.push(np.full(FRAME_SAMPLES, 2, np.int16))
    first = fifo.pop()
    assert first is not None and (first == 1).all()
    second = fifo.pop()
    assert second is not None and (second == 2).all()
    assert fifo.pop() is None and fifo.underruns == 1


def test_fifo_splits_odd_chunks_and_drops_the_oldest_when_full() -> None:
    fifo = SampleFifo(prebuffer=FRAME_SAMPLES, capacity=2 * FRAME_SAMPLES)
    for value in range(1, 6):  # 5 chunks of 480: 2400 samples, 480 too many
        fifo.push(np.full(480, value, np.int16))
    assert fifo.dropped_samples == 480 and len(fifo) == 2 * FRAME_SAMPLES
    out = fifo.pop()
    assert out is not None and (out[:480] == 2).all() and (out[480:] == 3).all()


# -- levels ------------------------------------------------------------------


def test_dbov_of_known_signals() -> None:
    assert dbov(np.zeros(960, np.int16)) == SILENCE_DBOV
    assert dbov(np.array([], np.int16)) == SILENCE_DBOV
    # A full-scale sine has an RMS of 1/sqrt(2): -3.01 dBov.
    assert dbov(tone(1000, 32767)) == pytest.approx(-3.01, abs=0.05)
    assert dbov(tone(1000, 3277)) == pytest.approx(-23.0, abs=0.1)


def test_level_meter_follows_peaks_and_decays_slowly() -> None:
    meter = LevelMeter(decay_db_per_update=1.0)
    assert meter.update(-20.0) == -20.0
    assert meter.update(SILENCE_DBOV) == -21.0
    assert meter.update(-30.0) == -22.0
    assert meter.update(-10.0) == -10.0


def test_rfc6464_scale_conversion() -> None:
    assert [to_rfc6464(v) for v in (0.0, -3.01, -23.4, SILENCE_DBOV, -200.0, 5.0)] == [0, 3, 23, 127, 127, 0]


# -- layout and schedule ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "shape"),
    [(0, (0, 0)), (1, (1, 1)), (2, (2, 1)), (3, (2, 2)), (4, (2, 2)), (5, (3, 2)), (9, (3, 3))],
)
def test_grid_shape(count: int, shape: tuple[int, int]) -> None:
    assert grid_shape(count) == shape


def test_grid_cells_are_even_disjoint_and_inside_the_canvas() -> None:
    for count in range(1, 10):
        cells = grid(count, 640, 360)
        assert len(cells) == count
        for cell in cells:
            assert all(v % 2 == 0 for v in (cell.x, cell.y, cell.width, cell.height))
            assert cell.x + cell.width <= 640 and cell.y + cell.height <= 360
        for i, a in enumerate(cells):
            for b in cells[i + 1 :]:
                assert (
                    a.x + a.width <= b.x
                    or b.x + b.width <= a.x
                    or a.y + a.height <= b.y
                    or b.y + b.height <= a.y
                )
    assert grid(2, 640, 360) == [Rect(0, 0, 320, 360), Rect(320, 0, 320, 360)]


def test_fit_keeps_the_aspect_ratio_centred() -> None:
    assert fit(Rect(0, 0, 320, 360), 320, 180) == Rect(0, 90, 320, 180)
    assert fit(Rect(320, 0, 320, 360), 160, 90) == Rect(320, 90, 320, 180)
    assert fit(Rect(0, 0, 640, 360), 90, 160) == Rect(218, 0, 202, 360)


def test_next_deadline_keeps_cadence_and_resyncs_after_a_stall() -> None:
    assert next_deadline(10.0, 0.02, now=10.021) == pytest.approx(10.02)  # late wake-up: catch up
    assert next_deadline(10.0, 0.02, now=10.5) == 10.5  # far behind: restart from now


# -- compositor (no codec involved) -------------------------------------------------------------


def solid(rgb: tuple[int, int, int], width: int = 320, height: int = 180) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(np.full((height, width, 3), rgb, np.uint8), format="rgb24").reformat(
        format="yuv420p"
    )


def centre(rgb: np.ndarray, cell: Rect) -> np.ndarray:
    cx, cy = cell.x + cell.width // 2, cell.y + cell.height // 2
    return rgb[cy - 5 : cy + 5, cx - 5 : cx + 5].reshape(-1, 3).mean(axis=0)


def test_compositor_places_each_picture_in_its_cell_and_caches_scaling() -> None:
    compositor = Compositor(640, 360)
    red, blue = Picture(0, solid((220, 20, 20)), 0.0), Picture(0, solid((20, 20, 220)), 0.0)
    out = compositor.compose([("r", red), ("b", blue), ("none", None)])
    assert (out.width, out.height, out.format.name) == (640, 360, "yuv420p")
    rgb = out.to_ndarray(format="rgb24")
    cells = grid(3, 640, 360)
    assert np.allclose(centre(rgb, cells[0]), (220, 20, 20), atol=12)
    assert np.allclose(centre(rgb, cells[1]), (20, 20, 220), atol=12)
    assert np.allclose(centre(rgb, cells[2]), (0, 0, 0), atol=12)
    assert compositor.scaled == 2
    compositor.compose([("r", red), ("b", blue), ("none", None)])
    assert (compositor.scaled, compositor.composed) == (2, 2)  # same pictures: no new scaling
    compositor.compose([("r", Picture(1, solid((20, 220, 20)), 0.1)), ("b", blue), ("none", None)])
    assert compositor.scaled == 3  # only the new picture is scaled


# -- keyframe requests (the decoder thread's callback, driven directly with a fake clock) ----------


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def wall_ms(self) -> int:
        return int(self.t * 1000)


async def test_keyframe_requests_are_throttled_per_source_on_the_injected_clock() -> None:
    clock, calls = FakeClock(), list[str]()
    mcu = McuSession(calls.append, clock, keyframe_interval=0.5)
    vp8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    try:
        mcu.add_source("v", "video", vp8)
        mcu.add_source("w", "video", vp8)
        for t in (0.0, 0.1, 0.49, 0.5, 0.6, 1.2):
            clock.t = t
            mcu._keyframe_needed("v")
        mcu._keyframe_needed("w")  # another source has its own budget
        mcu._keyframe_needed("gone")  # a source that left (or never was): nothing
        assert calls == ["v", "v", "v", "w"]
        assert mcu.stats().keyframe_requests == 4
    finally:
        await mcu.close()


# -- the aiortc internals the decoder relies on (aiortc is pinned; these fail loudly on an upgrade) -


def test_aiortc_jitter_buffer_reassembles_frames_from_packet_data() -> None:
    buffer = JitterBuffer(capacity=128, is_video=True)
    out = []
    for seq, timestamp, data in ((10, 3000, b"ab"), (11, 3000, b"cd"), (12, 6000, b"ef")):
        packet = RtpPacket(sequence_number=seq, timestamp=timestamp)
        packet._data = data  # type: ignore[attr-defined]
        lost, frame = buffer.add(packet)
        assert lost is False
        out.append(frame)
    assert out[:2] == [None, None]
    assert isinstance(out[2], JitterFrame) and (out[2].data, out[2].timestamp) == (b"abcd", 3000)
    # A jump beyond the capacity is reported as loss (the decoder then waits for a keyframe).
    packet = RtpPacket(sequence_number=12 + 400, timestamp=9000)
    packet._data = b"gh"  # type: ignore[attr-defined]
    assert buffer.add(packet)[0] is True


def test_aiortc_codec_helpers_used_by_the_decoder() -> None:
    vp8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    opus = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
    assert depayload(vp8, b"\x90\x80\x92\x34XYZ") == b"XYZ"  # VP8 descriptor with a 15-bit picture id
    with pytest.raises(ValueError):
        depayload(vp8, b"")
    assert depayload(opus, b"opaque") == b"opaque"
    frames = get_decoder(opus).decode(JitterFrame(get_encoder(opus).encode(_opus_input())[0][0], 0))
    assert frames and isinstance(frames[0], av.AudioFrame) and frames[0].sample_rate == 48000
    with pytest.raises(ValueError):
        get_decoder(RTCRtpCodecParameters(mimeType="video/AV1", clockRate=90000, payloadType=45))


def _opus_input() -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(tone(440, 5000).reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate, frame.pts = 48000, 0
    return frame
