"""Inference at any size: tiled network passes and the guided full-resolution path.

:func:`fuse_guided` (the default above :data:`~textmef.tiling.DEFAULT_WORK_SIZE`) runs the
network on the pair downscaled to the working size and carries its result to full
resolution with local affine colour maps fitted against the exposures
(:mod:`textmef.guided`). :func:`fuse_tensors` runs the network at the given size, tiled:

The image is cut into overlapping full-width strips (:func:`textmef.tiling.tile_grid`).
Fusing each strip on its own would normalise and pool every strip with its own statistics,
so tiled output would drift from whole-image output in tone, strip by strip. Instead two
passes run: the first records the image-wide statistics of the network's global operations
over the strips' cores (:mod:`textmef.nn.global_stats`; no output is kept), the second fuses
every strip with those shared statistics and blends the strips with weights that ramp
linearly across the overlap. Memory stays bounded by the strip size.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from textmef.nn.global_stats import SharedStatistics, sharing_statistics
from textmef.runtime import tune_allocator
from textmef.tiling import (
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    DEFAULT_WORK_SIZE,
    check_tiling,
    tile_grid,
    tiles_with_cores,
    working_size,
)

__all__ = [
    "DEFAULT_OVERLAP",
    "DEFAULT_TILE",
    "DEFAULT_WORK_SIZE",
    "FusionPlan",
    "check_tiling",
    "fuse_guided",
    "fuse_tensors",
    "plan_fusion",
    "tile_grid",
]
# The colour maps are fitted on at most this many pixels (squared): they are smooth, so a
# larger grid costs time without changing the result (He & Sun's fast guided filter).
FIT_SIZE = 512


@dataclass(frozen=True)
class FusionPlan:
    """Where the network runs for an image of a given size.

    Attributes:
        height, width: the image's size.
        work_height, work_width: the size the network fuses at (the image's own size when
            the network runs at full resolution).
    """

    height: int
    width: int
    work_height: int
    work_width: int

    @property
    def guided(self) -> bool:
        """Whether the guided path carries a smaller network result to full resolution."""
        return (self.work_height, self.work_width) != (self.height, self.width)

    def describe(self) -> str:
        """One line for people: which path and at what size."""
        size = f"{self.width}x{self.height} ({self.width * self.height / 1e6:.1f} MP)"
        if not self.guided:
            return f"{size}: the network fuses it at full resolution"
        return (
            f"{size}: the network fuses it at {self.work_width}x{self.work_height} and a "
            "local colour transform fitted against the exposures carries the result to "
            "full resolution"
        )


def plan_fusion(
    height: int, width: int, work_size: int = DEFAULT_WORK_SIZE, full_res: bool = False
) -> FusionPlan:
    """The :class:`FusionPlan` of :func:`textmef.api.fuse` for an image of this size."""
    if full_res:
        return FusionPlan(height, width, height, width)
    return FusionPlan(height, width, *working_size(height, width, work_size))


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


def record_statistics(
    model: nn.Module,
    under: torch.Tensor,
    over: torch.Tensor,
    tiles: list[tuple[slice, slice, slice]],
    on_tile: Callable[[], None] | None = None,
) -> SharedStatistics:
    """Image-wide statistics of ``model``'s global operations, gathered tile by tile.

    Each tile's statistics are summed over its core rows only, which partition the image,
    so every pixel counts once and none is taken from next to a cut.
    """
    stats = SharedStatistics()
    with sharing_statistics(stats):
        for rows, cols, core in tiles:
            stats.region = (core, slice(None))
            model(under[..., rows, cols], over[..., rows, cols])
            if on_tile:
                on_tile()
    stats.region = None
    stats.recording = False
    return stats


@torch.no_grad()
def fuse_tensors(
    model: nn.Module,
    under: torch.Tensor,
    over: torch.Tensor,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    on_tile: Callable[[int, int], None] | None = None,
    shared_statistics: bool = True,
) -> torch.Tensor:
    """Fuse (B,3,H,W) tensors tile by tile; returns the unclamped network output.

    Args:
        model: A fusion network taking (under, over).
        under: Under-exposed images, float in [0, 1], (B, 3, H, W), on the model's device.
        over: Over-exposed images, same shape.
        tile: Pixel budget of a tile, ``tile * tile`` pixels; 0 fuses the whole image at once.
        overlap: Rows shared by neighbouring tiles, blended linearly.
        on_tile: Called as ``on_tile(done, total)`` after each tile of each pass.
        shared_statistics: Normalise and pool every tile with the whole image's statistics
            (a first pass records them); False fuses each tile on its own (one pass, the
            behaviour before 0.3, for comparison).
    """
    tune_allocator()
    height, width = under.shape[-2:]
    tiles = tiles_with_cores(height, width, tile, overlap)
    if len(tiles) <= 1:
        out = model(under, over)
        if on_tile:
            on_tile(1, 1)
        return out
    total = len(tiles) * (2 if shared_statistics else 1)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if on_tile:
            on_tile(done, total)

    stats = record_statistics(model, under, over, tiles, tick) if shared_statistics else None
    acc = torch.zeros_like(under)
    weight = under.new_zeros(1, 1, height, width)
    for rows, cols, _ in tiles:
        with sharing_statistics(stats) if stats is not None else nullcontext():
            out = model(under[..., rows, cols], over[..., rows, cols])
        w = (
            _ramp(rows.stop - rows.start, rows.start, rows.stop, height, overlap)[:, None]
            * _ramp(cols.stop - cols.start, cols.start, cols.stop, width, overlap)[None, :]
        )
        w = w.to(out)
        acc[..., rows, cols] += out * w
        weight[..., rows, cols] += w
        tick()
    return acc / weight


@torch.no_grad()
def fuse_guided(
    model: nn.Module,
    under: torch.Tensor,
    over: torch.Tensor,
    *,
    work_size: int = DEFAULT_WORK_SIZE,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    on_tile: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Fuse at the working size and carry the result to full resolution; unclamped.

    Images of at most ``work_size * work_size`` pixels go through :func:`fuse_tensors`
    unchanged. Larger ones are area-downscaled to the working size, fused there (tiled when
    the working size exceeds ``tile``), and brought back by local affine maps from the two
    exposures (six channels) to the network's output (:func:`textmef.guided.guided_upsample`,
    fitted on at most :data:`FIT_SIZE` squared pixels): tone and colour from the network,
    detail and edges from the full-resolution exposures, no tiles at full size.

    Args:
        model: A fusion network taking (under, over).
        under: (B, 3, H, W) float in [0, 1], on the model's device.
        over: Same shape.
        work_size: Pixel budget (``work_size * work_size``) of the network's pass.
        tile: Pixel budget of a tile of the network's pass (see :func:`fuse_tensors`).
        overlap: Rows shared by neighbouring tiles.
        on_tile: Progress of the network's pass, as in :func:`fuse_tensors`.
    """
    from textmef.guided import downscale, guided_upsample

    height, width = under.shape[-2:]
    plan = plan_fusion(height, width, work_size)
    if not plan.guided:
        return fuse_tensors(model, under, over, tile=tile, overlap=overlap, on_tile=on_tile)
    h, w = plan.work_height, plan.work_width
    small_under, small_over = downscale(under, h, w), downscale(over, h, w)
    low = fuse_tensors(model, small_under, small_over, tile=tile, overlap=overlap, on_tile=on_tile)
    small = torch.cat([small_under, small_over], 1)
    del small_under, small_over
    return guided_upsample(low, [under, over], guide_low=small, fit_size=FIT_SIZE)
