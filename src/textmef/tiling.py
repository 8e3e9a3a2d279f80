"""How an image is cut into tiles and sized for the network: defaults, checks, grid (no torch).

One meaning everywhere (API, CLI, web app, bench): ``tile`` sets the pixel budget of a tile,
``tile * tile`` pixels (tiles are full-width strips of about that many pixels, see
:func:`tile_grid`), and ``0`` fuses the whole image in one piece; ``overlap`` is the number
of rows that neighbouring strips share. ``work_size`` is the pixel budget
(``work_size * work_size``) of the guided full-resolution path: larger images are fused at
about that many pixels and carried back to full size (:func:`working_size`,
:mod:`textmef.guided`).
"""

from __future__ import annotations

from collections.abc import Iterator

from textmef.errors import InputError

__all__ = [
    "DEFAULT_OVERLAP",
    "DEFAULT_TILE",
    "DEFAULT_WORK_SIZE",
    "MIN_WORK_SIZE",
    "check_tiling",
    "check_work_size",
    "strip_rows",
    "tile_grid",
    "tiles_with_cores",
    "working_size",
]

DEFAULT_TILE = 512
# Each strip's first and last rows lack the scans' state from the rows beyond it; where the
# strips meet, either side has overlap / 2 rows to warm that state up. The shipped C = 32
# network carries state over more rows than the 0.2 C = 16 one: at 32 rows its strips
# strayed up to 2.8/255 (99.9th percentile) from the whole image on held-out 1200x800
# pairs, at 64 rows at most 1.0/255 (docs/network.md, "Tiled inference").
DEFAULT_OVERLAP = 64
# The guided path's working size: the default tile, so the network's pass is one piece (no
# second pass for shared statistics), which keeps a 12 MP photo near 1 s of network time with
# either packaged width; measured on the held-out pairs (docs/performance.md, "Guided full
# resolution"): fusing at 1/2 to 1/3.5 of the linear size loses no PSNR.
DEFAULT_WORK_SIZE = 512
MIN_WORK_SIZE = 64
# The network pools twice by 2 and convolves 3x3: a strip needs some rows to mean anything.
_MIN_STRIP_ROWS = 16


def check_tiling(tile: int, overlap: int) -> None:
    """Refuse tile settings that cannot work, with a message a user can act on.

    Raises:
        InputError: ``tile`` or ``overlap`` is not a non-negative integer, or a non-zero
            ``tile`` does not exceed ``overlap``.
    """
    for name, value in (("tile", tile), ("overlap", overlap)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError(None, f"{name} must be an integer >= 0, got {value!r}")
    if tile and tile <= overlap:
        raise InputError(None, f"tile ({tile}) must exceed overlap ({overlap}); 0 = no tiles")


def strip_rows(height: int, width: int, tile: int, overlap: int) -> int:
    """Rows per strip: about ``tile * tile`` pixels, never fewer rows than the overlap needs."""
    return min(height, max(tile * tile // width, 4 * overlap, _MIN_STRIP_ROWS))


def _starts(size: int, tile: int, step: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, step))
    starts.append(size - tile)
    return starts


def tile_grid(height: int, width: int, tile: int, overlap: int) -> Iterator[tuple[slice, slice]]:
    """Yield (rows, cols) slices of the tiles covering the image.

    An image of at most ``tile * tile`` pixels, or any image with ``tile == 0``, is one
    tile whatever its shape (a 600x400 photo is not cut by a 512 tile: cutting would add
    work without saving memory). Larger images are cut into full-width strips of about
    ``tile * tile`` pixels that share ``overlap`` rows: the network scans its tokens row
    by row, so a strip as wide as the image gives every row the same scan context as the
    whole image does, where square tiles would wrap each row at the tile's edge.
    """
    for rows, cols, _ in tiles_with_cores(height, width, tile, overlap):
        yield rows, cols


def tiles_with_cores(
    height: int, width: int, tile: int, overlap: int
) -> list[tuple[slice, slice, slice]]:
    """(rows, cols, core) of every tile; the cores partition the image's rows.

    ``core`` is relative to the tile: the rows this tile alone stands for, from the middle
    of its overlap with the previous tile to the middle of its overlap with the next, so
    that statistics summed over the cores count every pixel exactly once.
    """
    check_tiling(tile, overlap)
    if tile == 0 or height * width <= tile * tile:
        return [(slice(0, height), slice(0, width), slice(0, height))]
    rows = strip_rows(height, width, tile, overlap)
    strips = [slice(top, top + rows) for top in _starts(height, rows, rows - overlap)]
    out = []
    for i, strip in enumerate(strips):
        first = 0 if i == 0 else (strip.start + strips[i - 1].stop) // 2
        last = height if i == len(strips) - 1 else (strips[i + 1].start + strip.stop) // 2
        out.append((strip, slice(0, width), slice(first - strip.start, last - strip.start)))
    return out


def check_work_size(work_size: int) -> None:
    """Refuse a working size the network cannot use, with a message a user can act on.

    Raises:
        InputError: ``work_size`` is not an integer >= :data:`MIN_WORK_SIZE`.
    """
    if isinstance(work_size, bool) or not isinstance(work_size, int) or work_size < MIN_WORK_SIZE:
        raise InputError(
            None, f"work size must be an integer >= {MIN_WORK_SIZE} (pixels), got {work_size!r}"
        )


def working_size(height: int, width: int, work_size: int) -> tuple[int, int]:
    """The (height, width) the network fuses an image of this size at in the guided path.

    The image's own size when it has at most ``work_size * work_size`` pixels; otherwise
    the largest size of the same aspect ratio within that budget (rounded, each side at
    least 1 pixel).
    """
    check_work_size(work_size)
    budget = work_size * work_size
    if height * width <= budget:
        return height, width
    scale = (budget / (height * width)) ** 0.5
    return max(1, int(height * scale)), max(1, int(width * scale))
