"""Pure grid layout of the composite picture: which rectangle each visible source gets.

Rectangles have even coordinates and sizes (YUV 4:2:0 chroma is subsampled by two), and a source's
picture is fitted into its cell keeping its aspect ratio (black bars around it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Rect:
    x: int
    y: int
    width: int
    height: int


def _even(value: float) -> int:
    return max(2, int(value) // 2 * 2)


def grid_shape(count: int) -> tuple[int, int]:
    """(columns, rows) for `count` tiles: 1 -> 1x1, 2 -> 2x1, 3-4 -> 2x2, 5-6 -> 3x2, 7-9 -> 3x3, ..."""
    if count <= 0:
        return (0, 0)
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    return (columns, rows)


def grid(count: int, width: int, height: int) -> list[Rect]:
    """The cells of `count` tiles on a `width` x `height` canvas, row by row."""
    columns, rows = grid_shape(count)
    if count <= 0:
        return []
    cell_w, cell_h = _even(width / columns), _even(height / rows)
    # Centre the whole grid (the even rounding can leave a few pixels).
    off_x, off_y = (width - cell_w * columns) // 4 * 2, (height - cell_h * rows) // 4 * 2
    return [
        Rect(off_x + (i % columns) * cell_w, off_y + (i // columns) * cell_h, cell_w, cell_h)
        for i in range(count)
    ]


def fit(cell: Rect, source_width: int, source_height: int) -> Rect:
    """The largest rectangle with the source's aspect ratio centred in `cell` (even-aligned)."""
    if source_width <= 0 or source_height <= 0:
        return cell
    scale = min(cell.width / source_width, cell.height / source_height)
    width = min(cell.width, _even(source_width * scale))
    height = min(cell.height, _even(source_height * scale))
    return Rect(
        cell.x + (cell.width - width) // 4 * 2,
        cell.y + (cell.height - height) // 4 * 2,
        width,
        height,
    )
