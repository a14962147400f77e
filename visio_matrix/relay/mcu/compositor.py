"""The composite picture: a grid of source pictures, each scaled into its cell, on a black canvas.

Works in YUV 4:2:0 with numpy plane copies, so the only per-pixel work is the scaling (FFmpeg's
swscale through `VideoFrame.reformat`), and each source picture is scaled once per cell size,
however many composites include it. No asyncio, no threads: the session calls `compose()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import av
import numpy as np
import numpy.typing as npt

from .decoder import Picture
from .layout import fit, grid

BLACK_Y, BLACK_UV = 16, 128  # limited-range black
Plane = npt.NDArray[np.uint8]


def _planes(frame: av.VideoFrame) -> tuple[Plane, Plane, Plane]:
    """Y, U, V planes of a yuv420p frame without line padding (views where possible)."""
    out = []
    for index, (height, width) in enumerate(
        (
            (frame.height, frame.width),
            (frame.height // 2, frame.width // 2),
            (frame.height // 2, frame.width // 2),
        )
    ):
        plane = frame.planes[index]
        data = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)
        out.append(data[:height, :width])
    return out[0], out[1], out[2]


@dataclass(frozen=True)
class _Scaled:
    seq: int
    planes: tuple[Plane, Plane, Plane]


MAX_SIZES_PER_SOURCE = 4  # a source seen in composites with different grids has several cell sizes


class Compositor:
    """Grid composer with a per-source cache of scaled pictures."""

    def __init__(self, width: int = 640, height: int = 360) -> None:
        if width % 4 or height % 4:
            raise ValueError("composite width and height must be multiples of 4")
        self.width, self.height = width, height
        self._black = np.empty((height * 3 // 2, width), np.uint8)
        self._black[:height] = BLACK_Y
        self._black[height:] = BLACK_UV
        self._scaled: dict[tuple[str, int, int], _Scaled] = {}
        self.composed = 0
        self.scaled = 0

    def compose(self, tiles: Sequence[tuple[str, Picture | None]]) -> av.VideoFrame:
        """One composite of `tiles` (source id, latest picture or None for a black cell), in order."""
        canvas = self._black.copy()
        w, h = self.width, self.height
        y_plane = canvas[:h]
        u_plane = canvas[h : h + h // 4].reshape(h // 2, w // 2)
        v_plane = canvas[h + h // 4 :].reshape(h // 2, w // 2)
        for (source_id, picture), cell in zip(tiles, grid(len(tiles), w, h), strict=True):
            if picture is None:
                continue
            r = fit(cell, picture.frame.width, picture.frame.height)
            sy, su, sv = self._scale(source_id, picture, r.width, r.height)
            y_plane[r.y : r.y + r.height, r.x : r.x + r.width] = sy
            cy, cx, ch, cw = r.y // 2, r.x // 2, r.height // 2, r.width // 2
            u_plane[cy : cy + ch, cx : cx + cw] = su
            v_plane[cy : cy + ch, cx : cx + cw] = sv
        self.composed += 1
        return av.VideoFrame.from_ndarray(canvas, format="yuv420p")

    def forget(self, source_id: str) -> None:
        """Drop the cached pictures of a source that left."""
        for key in [k for k in self._scaled if k[0] == source_id]:
            del self._scaled[key]

    def _scale(self, source_id: str, picture: Picture, width: int, height: int) -> tuple[Plane, Plane, Plane]:
        key = (source_id, width, height)
        cached = self._scaled.pop(key, None)
        if cached is None or cached.seq != picture.seq:
            small = picture.frame.reformat(width=width, height=height, format="yuv420p")
            cached = _Scaled(seq=picture.seq, planes=_planes(small))
            self.scaled += 1
            sizes = [k for k in self._scaled if k[0] == source_id]
            for stale in sizes[: max(0, len(sizes) - MAX_SIZES_PER_SOURCE + 1)]:
                del self._scaled[stale]
        self._scaled[key] = cached  # re-inserted last: the oldest size is evicted first
        return cached.planes
