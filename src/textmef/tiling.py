"""How an image is cut into tiles: the defaults, the checks and the grid (no torch).

One meaning everywhere (API, CLI, web app, bench): ``tile`` is the side of the square tiles
in pixels and ``0`` fuses the whole image in one piece; ``overlap`` is the width that
neighbouring tiles share.
"""

from __future__ import annotations

from collections.abc import Iterator

from textmef.errors import InputError

__all__ = ["DEFAULT_OVERLAP", "DEFAULT_TILE", "check_tiling", "tile_grid"]

DEFAULT_TILE = 512
DEFAULT_OVERLAP = 32


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


def _starts(size: int, tile: int, step: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, step))
    starts.append(size - tile)
    return starts


def tile_grid(height: int, width: int, tile: int, overlap: int) -> Iterator[tuple[slice, slice]]:
    """Yield (rows, cols) slices of tiles covering the image.

    An image of at most ``tile * tile`` pixels, or any image with ``tile == 0``, is one
    tile whatever its shape (a 600x400 photo is not cut by a 512 tile: cutting would add
    work and seams without saving memory); larger images are cut into ``tile`` x ``tile``
    squares.
    """
    check_tiling(tile, overlap)
    if tile == 0 or height * width <= tile * tile:
        yield slice(0, height), slice(0, width)
        return
    step = tile - overlap
    for top in _starts(height, tile, step):
        for left in _starts(width, tile, step):
            yield slice(top, min(top + tile, height)), slice(left, min(left + tile, width))
