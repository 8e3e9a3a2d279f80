"""Fusing exposure stacks of N >= 2 frames with the two-input network.

The network takes exactly one under- and one over-exposed image. A stack is first sorted
from darkest to brightest (EXIF exposure time where every frame has one, else mean
linearised luminance, as ``textmef make-pairs`` does), optionally registered, and then fused
by one of two strategies:

* ``progressive``: fuse the two darkest frames, then fuse that result (as the darker input)
  with the next brighter frame, and so on up to the brightest: N - 1 network passes, every
  frame contributes.
* ``extremes``: fuse only the darkest and the brightest frame (one pass), the setting the
  network was trained on.

For two frames both are the same single pass. Which strategy is the default was decided by
``textmef bench --stacks`` on the held-out brackets (docs/evaluation.md, "Stacks benchmark").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from textmef.errors import InputError
from textmef.limits import DEFAULT_MAX_PIXELS
from textmef.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, DEFAULT_WORK_SIZE

# numpy, torch and the image I/O are imported where they are used: the command line reads
# the strategy names from this module without loading them.
if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from textmef.exposure import Frame
    from textmef.files import ImageHeader

__all__ = [
    "DEFAULT_STRATEGY",
    "MISALIGNED_PX",
    "STRATEGIES",
    "PreparedStack",
    "StackFusion",
    "check_stack_files",
    "fuse_frames",
    "fuse_stack",
    "load_frames",
    "network_pair_fusion",
    "order_frames",
    "prepare_stack",
    "strategy_ranks",
]

STRATEGIES = ("progressive", "extremes")
DEFAULT_STRATEGY = "extremes"
# Above this estimated shift (px) between the darkest and brightest frame, fusing without
# registration visibly doubles edges, so the CLI suggests --align.
MISALIGNED_PX = 1.0

# fuse(under, over) on (1, 3, H, W) tensors in [0, 1] -> (1, 3, H, W) in [0, 1]
PairFusion = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True, eq=False)
class StackFusion:
    """A fused stack and how it was made.

    Attributes:
        image: float32 (H, W, 3) RGB in [0, 1] (cropped to the common area when aligned).
        order: indices of the input frames from darkest to brightest.
        ordering: ``"exif"`` or ``"luminance"``.
        used: indices of the input frames that were fused, in fusion order.
        bit_depth: the deepest input's bit depth (8 or 16), for writing the result.
        motions: one line per input frame describing its estimated motion, when aligned.
        misalignment_px: when not aligned, a quick estimate of the shift between the darkest
            and the brightest frame in pixels (for a "pass --align" warning).
    """

    image: np.ndarray
    order: list[int]
    ordering: str
    used: list[int]
    bit_depth: int
    motions: list[str] | None = None
    misalignment_px: float | None = None


def check_stack_files(
    paths: Sequence[str | os.PathLike[str]], max_pixels: int | None = None
) -> list[ImageHeader]:
    """Check the files of a stack from their headers, before anything is decoded.

    Args:
        paths: the image files.
        max_pixels: the most pixels per image (None: :data:`textmef.limits.DEFAULT_MAX_PIXELS`).

    Raises:
        InputError: fewer than two files, a file given twice (or two byte-identical
            files), a missing, unsupported or oversized file, or frames of different sizes.
    """
    import hashlib

    from textmef import files

    if len(paths) < 2:
        raise InputError(None, f"fusion needs at least 2 images, got {len(paths)}")
    files_ = [Path(p) for p in paths]
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    headers = [files.check_image_file(p, limit) for p in files_]
    for i, path in enumerate(files_):
        for earlier in files_[:i]:
            if files.same_file(path, earlier):
                raise InputError(
                    path, f"is given twice (also as {earlier}); fuse different exposures"
                )
    sizes = [p.stat().st_size for p in files_]
    digests: dict[str, Path] = {}
    for path, size in zip(files_, sizes):
        if sizes.count(size) > 1:  # only files of equal length can be byte-identical
            twin = digests.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), path)
            if twin is not path:
                raise InputError(path, f"is identical to {twin.name}; fuse different exposures")
    first = headers[0]
    for header in headers[1:]:
        if (header.width, header.height) != (first.width, first.height):
            raise InputError(
                header.path,
                f"is {header.size_text} but {first.path.name} is {first.size_text}; "
                "all frames of a stack must have one size",
            )
    return headers


def load_frames(
    paths: Sequence[str | os.PathLike[str]], max_pixels: int | None = None
) -> list[Frame]:
    """Read frames for stack fusion, as :class:`textmef.exposure.Frame` objects.

    The files are checked first (:func:`check_stack_files`), so a bad one is reported
    before any image is decoded.

    Raises:
        InputError: an unreadable file, fewer than two files, a file given twice, identical
            images, or mixed sizes (naming both).
    """
    import numpy as np

    from textmef import io
    from textmef.exposure import make_frame

    check_stack_files(paths, max_pixels)
    frames: list[Frame] = []
    for path in map(Path, paths):
        image = io.read_image(path, max_pixels=None)  # the limit was checked above
        for earlier in frames:
            if np.array_equal(earlier.pixels, image.pixels):
                raise InputError(
                    path, f"holds the same pixels as {earlier.path.name}; fuse different exposures"
                )
        frames.append(make_frame(path, image.pixels, image.bit_depth))
    return frames


def order_frames(frames: Sequence[Frame]) -> tuple[list[int], str]:
    """Indices of ``frames`` from darkest to brightest, and the ordering method used."""
    from textmef.exposure import order_by_exposure

    ordered, how = order_by_exposure(frames)
    index = {id(f): i for i, f in enumerate(frames)}
    return [index[id(f)] for f in ordered], how


def fuse_frames(
    frames: Sequence[torch.Tensor],
    fuse: PairFusion,
    strategy: str = DEFAULT_STRATEGY,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Fuse frames already sorted darkest first, with a two-input fusion ``fuse``.

    Args:
        frames: (1, 3, H, W) tensors in [0, 1], darkest first.
        fuse: the pair fusion, called as ``fuse(darker, brighter)``.
        strategy: ``progressive`` or ``extremes`` (see the module docstring).
        on_step: called as ``on_step(done, total)`` after each pass.
    """
    if strategy not in STRATEGIES:
        raise InputError(
            None, f"unknown stack strategy {strategy!r}; use one of {', '.join(STRATEGIES)}"
        )
    if len(frames) < 2:
        raise InputError(None, f"fusion needs at least 2 frames, got {len(frames)}")
    chain = [frames[r] for r in strategy_ranks(strategy, len(frames))]
    fused = chain[0]
    for step, brighter in enumerate(chain[1:], start=1):
        fused = fuse(fused, brighter).clamp(0.0, 1.0)
        if on_step:
            on_step(step, len(chain) - 1)
    return fused


def network_pair_fusion(
    model: nn.Module,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    work_size: int = DEFAULT_WORK_SIZE,
    full_res: bool = False,
    device: str | torch.device | None = None,
    threads: int | None = None,
) -> PairFusion:
    """The network as a :data:`PairFusion`, through :func:`textmef.api.fuse`."""
    from textmef import api

    def pair(darker: torch.Tensor, brighter: torch.Tensor) -> torch.Tensor:
        fused: torch.Tensor = api.fuse(
            darker,
            brighter,
            model=model,
            device=device,
            tile=tile,
            overlap=overlap,
            work_size=work_size,
            full_res=full_res,
            threads=threads,
        )
        return fused

    return pair


@dataclass(frozen=True, eq=False)
class PreparedStack:
    """A stack read, sorted darkest first and (optionally) registered, ready to fuse.

    Attributes:
        tensors: (1, 3, H, W) float tensors in [0, 1], darkest first (cropped when aligned).
        order: indices of the input frames from darkest to brightest.
        ordering: ``"exif"`` or ``"luminance"``.
        bit_depth: the deepest input's bit depth (8 or 16).
        motions: one line per input frame describing its estimated motion, when aligned.
        misalignment_px: when not aligned, the estimated shift between the darkest and the
            brightest frame in pixels.
    """

    tensors: list[torch.Tensor]
    order: list[int]
    ordering: str
    bit_depth: int
    motions: list[str] | None
    misalignment_px: float | None

    def result(self, fused: torch.Tensor, used_ranks: Sequence[int]) -> StackFusion:
        """The :class:`StackFusion` of ``fused``, made from the frames at ``used_ranks``
        (positions in the darkest-first order)."""
        from textmef import io

        return StackFusion(
            image=io.from_tensor(fused),
            order=self.order,
            ordering=self.ordering,
            used=[self.order[r] for r in used_ranks],
            bit_depth=self.bit_depth,
            motions=self.motions,
            misalignment_px=self.misalignment_px,
        )


def prepare_stack(
    paths: Sequence[str | os.PathLike[str]],
    *,
    align: bool = False,
    max_pixels: int | None = None,
) -> PreparedStack:
    """Read, order and optionally align a stack of N >= 2 exposures.

    Args:
        paths: the image files, in any order.
        align: register the frames and crop to their common area: a pair to the darker
            frame, a longer stack to its middle exposure (which shares the most unclipped
            detail with both ends). Without it the shift between the extremes is estimated.
        max_pixels: the most pixels per image (None: the default limit of textmef.io).

    Raises:
        InputError: unreadable or mismatched files, alignment failure.
    """
    from textmef import io

    frames = load_frames(paths, max_pixels)
    order, ordering = order_frames(frames)
    pixels = [frames[i].pixels for i in order]
    motions = misalignment = None
    if not align:
        from textmef.align import misalignment_px

        misalignment = misalignment_px(pixels[0], pixels[-1])
    else:
        from textmef.align import align_frames

        result = align_frames(pixels, reference_index=0 if len(pixels) == 2 else len(pixels) // 2)
        pixels = result.frames
        by_sorted = [m.describe() for m in result.motions]
        motions = [""] * len(frames)
        for rank, i in enumerate(order):
            motions[i] = by_sorted[rank]
    return PreparedStack(
        tensors=[io.to_tensor(p) for p in pixels],
        order=order,
        ordering=ordering,
        bit_depth=max(f.bit_depth for f in frames),
        motions=motions,
        misalignment_px=misalignment,
    )


def strategy_ranks(strategy: str, count: int) -> list[int]:
    """Positions (darkest first) of the frames that ``strategy`` fuses in a stack of ``count``."""
    return [0, count - 1] if strategy == "extremes" else list(range(count))


def fuse_stack(
    paths: Sequence[str | os.PathLike[str]],
    model: nn.Module,
    *,
    strategy: str = DEFAULT_STRATEGY,
    align: bool = False,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    work_size: int = DEFAULT_WORK_SIZE,
    full_res: bool = False,
    device: str | torch.device | None = None,
    threads: int | None = None,
    max_pixels: int | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> StackFusion:
    """Read, order, optionally align, and fuse a stack of N >= 2 exposures with the network.

    Args:
        paths: the image files, in any order.
        model: the fusion network (see :func:`textmef.api.load_model`).
        strategy: ``progressive`` or ``extremes``.
        align: register the frames first (see :func:`prepare_stack`).
        tile: pixel budget (tile x tile) of a network tile (0: whole image), as in
            :func:`textmef.api.fuse`.
        overlap: tile overlap.
        work_size: pixel budget (work_size x work_size) of the guided path's network pass,
            as in :func:`textmef.api.fuse`.
        full_res: run the network at full resolution whatever the size.
        device: where the network runs (None: where the model is).
        threads: CPU threads (None: leave as set).
        max_pixels: the most pixels per image (None: the default limit of textmef.io).
        on_step: progress callback ``on_step(done, total)`` per network pass.

    Raises:
        InputError: unreadable or mismatched files, unknown strategy, alignment failure.
    """
    from textmef.tiling import check_tiling

    check_tiling(tile, overlap)
    if strategy not in STRATEGIES:
        raise InputError(
            None, f"unknown stack strategy {strategy!r}; use one of {', '.join(STRATEGIES)}"
        )
    prepared = prepare_stack(paths, align=align, max_pixels=max_pixels)
    pair = network_pair_fusion(
        model,
        tile=tile,
        overlap=overlap,
        work_size=work_size,
        full_res=full_res,
        device=device,
        threads=threads,
    )
    fused = fuse_frames(prepared.tensors, pair, strategy, on_step)
    return prepared.result(fused, strategy_ranks(strategy, len(prepared.tensors)))
