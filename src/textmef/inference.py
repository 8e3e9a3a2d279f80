"""Tiled inference: any image size with bounded memory.

The image is cut into overlapping tiles; each tile is fused on its own and the results are
blended with weights that ramp linearly across the overlap, so seams do not show. Memory is
bounded by the tile size, not by the image size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from textmef.runtime import tune_allocator
from textmef.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, check_tiling, tile_grid

__all__ = ["DEFAULT_OVERLAP", "DEFAULT_TILE", "check_tiling", "fuse_tensors", "tile_grid"]


def _edge_profile(overlap: int) -> torch.Tensor:
    """Blend weights across an overlap, from a tile's outer edge inwards.

    The outermost quarter gets weight 0 (pixels next to a cut see zero padding and a
    shortened context), the middle ramps linearly, the innermost quarter keeps weight 1.
    The neighbour's profile mirrors this one, so the weights sum to > 0 everywhere.
    """
    margin = overlap // 4
    ramp = torch.linspace(0, 1, overlap - 2 * margin + 2)[1:-1]
    return torch.cat([torch.zeros(margin), ramp, torch.ones(margin)])


def _ramp(length: int, start: int, stop: int, total: int, overlap: int) -> torch.Tensor:
    """1-D blend weight of a tile spanning [start, stop) of an axis of size ``total``."""
    w = torch.ones(length)
    profile = _edge_profile(overlap)[:length]
    n = len(profile)
    if start > 0 and n:
        w[:n] = torch.minimum(w[:n], profile)
    if stop < total and n:
        w[-n:] = torch.minimum(w[-n:], profile.flip(0))
    return w


@torch.no_grad()
def fuse_tensors(
    model: nn.Module,
    under: torch.Tensor,
    over: torch.Tensor,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    on_tile: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Fuse (B,3,H,W) tensors tile by tile; returns the unclamped network output.

    Args:
        model: A fusion network taking (under, over).
        under: Under-exposed images, float in [0, 1], (B, 3, H, W), on the model's device.
        over: Over-exposed images, same shape.
        tile: Tile side in pixels; 0 fuses the whole image at once.
        overlap: Pixels shared by neighbouring tiles, blended linearly.
        on_tile: Called as ``on_tile(done, total)`` after each tile (progress bars).
    """
    tune_allocator()
    height, width = under.shape[-2:]
    tiles = list(tile_grid(height, width, tile, overlap))
    if len(tiles) <= 1:
        out = model(under, over)
        if on_tile:
            on_tile(1, 1)
        return out
    acc = torch.zeros_like(under)
    weight = under.new_zeros(1, 1, height, width)
    for i, (rows, cols) in enumerate(tiles):
        out = model(under[..., rows, cols], over[..., rows, cols])
        w = (
            _ramp(rows.stop - rows.start, rows.start, rows.stop, height, overlap)[:, None]
            * _ramp(cols.stop - cols.start, cols.start, cols.stop, width, overlap)[None, :]
        )
        w = w.to(out)
        acc[..., rows, cols] += out * w
        weight[..., rows, cols] += w
        if on_tile:
            on_tile(i + 1, len(tiles))
    return acc / weight
