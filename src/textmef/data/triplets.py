"""Training triplets (under, over, reference) from ``under/ over/ gt/`` folders.

All randomness of a sample (which sequence, where to crop, which flip/rotation) is drawn
from a generator seeded by (seed, position in the sample stream), so batches do not depend
on worker count, process count or interruptions: a resumed or distributed run sees exactly
the samples a single uninterrupted one would.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import torch

from textmef import io
from textmef.data.pairs import match_by_stem
from textmef.errors import InputError

# Folder names per role: ours, then SICE's (trainA = under, trainB = over, trainC = reference).
LAYOUTS = (("under", "over", "gt"), ("trainA", "trainB", "trainC"))


@dataclass(frozen=True)
class Triplet:
    """One sequence: the input pair and its (pseudo) reference, all the same size."""

    name: str
    under: Path
    over: Path
    gt: Path | None


def find_triplets(root: str | Path, require_gt: bool = True) -> list[Triplet]:
    """Triplets in ``root``, matched by file stem across the role folders.

    Accepts ``under/ over/ gt/`` and SICE's ``trainA/ trainB/ trainC/``.

    Args:
        root: the data folder.
        require_gt: refuse a folder without references; with False, a missing reference
            folder gives triplets whose ``gt`` is None (pairs for no-reference evaluation),
            and where the folder exists only stems present in all three are kept.

    Raises:
        InputError: No known layout, or no stem present in all the role folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "no such data folder")
    needed = 3 if require_gt else 2
    layout: tuple[str, ...]
    for layout in LAYOUTS:
        if all((root / name).is_dir() for name in layout[:needed]):
            break
    else:
        refs = "" if require_gt else " (gt/ optional)"
        raise InputError(
            root,
            f"expected under/ over/ gt/{refs} (or SICE's trainA/ trainB/ trainC/) folders inside",
        )
    if not (root / layout[2]).is_dir():
        layout = layout[:2]
    match = match_by_stem([root / name for name in layout])
    return [
        Triplet(stem, paths[0], paths[1], paths[2] if len(paths) == 3 else None)
        for stem, paths in zip(match.stems, match.groups())
    ]


class _Named(Protocol):
    @property
    def name(self) -> str: ...


_NamedT = TypeVar("_NamedT", bound=_Named)


def split_by_sequence(
    triplets: Sequence[_NamedT], val_fraction: float
) -> tuple[list[_NamedT], list[_NamedT]]:
    """A fixed (train, validation) split by sequence name.

    Takes anything with a ``name`` (triplets, the benchmark's scenes) and keeps its type.

    Each name goes to validation when the hash of the name falls below ``val_fraction``, so
    the split never depends on the order of files or on sequences added later, and a
    sequence is never split across the two sets (crops come from training sequences only).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train: list[_NamedT] = []
    val: list[_NamedT] = []
    for t in triplets:
        digest = int(hashlib.sha256(t.name.encode()).hexdigest()[:8], 16)
        (val if digest / 0xFFFFFFFF < val_fraction else train).append(t)
    if not train:
        raise InputError(None, "the validation split left no training sequence")
    return train, val


def load_triplet(triplet: Triplet, max_side: int | None = None) -> tuple[np.ndarray, ...]:
    """(under, over, gt) as float32 HxWx3 arrays in [0, 1], optionally downsized."""
    if triplet.gt is None:
        raise InputError(triplet.under, f"sequence {triplet.name!r} has no reference (gt) image")
    images = [io.read_image(p) for p in (triplet.under, triplet.over, triplet.gt)]
    shapes = {im.pixels.shape for im in images}
    if len(shapes) != 1:
        raise InputError(
            triplet.gt, f"sequence {triplet.name!r} mixes image sizes {sorted(shapes)}"
        )
    arrays = [im.pixels for im in images]
    if max_side and max(arrays[0].shape[:2]) > max_side:
        import cv2

        h, w = arrays[0].shape[:2]
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        arrays = [cv2.resize(a, size, interpolation=cv2.INTER_AREA) for a in arrays]
    return tuple(arrays)


def dihedral(images: torch.Tensor, view: int) -> torch.Tensor:
    """One of the 8 flips/rotations of (..., S, S) images; view 0 is the identity."""
    out = torch.rot90(images, k=view % 4, dims=(-2, -1))
    return out.flip(-1) if view >= 4 else out


class TripletCrops(torch.utils.data.Dataset):
    """Random crops of in-memory triplets, addressed by position in a seeded sample stream.

    ``dataset[p]`` is the p-th sample of the stream: the sequence is the (p mod N)-th of the
    epoch's permutation (every sequence once per epoch), the crop position and one of the 8
    flips/rotations are drawn from a generator seeded by (seed, p). Images smaller than the
    crop are reflect-padded.

    Args:
        triplets: Training sequences.
        crop: Crop side in pixels.
        augment: Random flips and 90° rotations.
        seed: Seed of the stream.
        max_side: Downsize images whose longer side exceeds this first (None: keep).
    """

    def __init__(
        self,
        triplets: Sequence[Triplet],
        crop: int,
        augment: bool = True,
        seed: int = 0,
        max_side: int | None = None,
    ) -> None:
        self.triplets = list(triplets)
        self.crop = crop
        self.augment = augment
        self.seed = seed
        self.max_side = max_side
        # Per sequence: the (9, H, W) uint16 stack and its quantisation levels (255 or 65535).
        self._images: list[tuple[torch.Tensor, int]] | None = None

    def load(self) -> TripletCrops:
        """Read every image into memory (separate from construction: no I/O there).

        Images are kept as 16-bit integers (exact for 8- and 16-bit sources) and converted
        per crop: half the memory of float32 copies, which for a few hundred megapixel-sized
        sequences is gigabytes.
        """
        images: list[tuple[torch.Tensor, int]] = []
        for t in self.triplets:
            arrays = load_triplet(t, self.max_side)
            stacked = np.concatenate(arrays, axis=2)
            levels = 255 if _is_8bit(stacked) else 65535
            quantised = np.rint(stacked * levels).astype(np.uint16)
            images.append((torch.from_numpy(quantised).permute(2, 0, 1), levels))
        self._images = images
        return self

    def __len__(self) -> int:
        return len(self.triplets)

    def sequence_at(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.triplets))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return int(torch.randperm(len(self.triplets), generator=g)[offset])

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._images is None:
            self.load()
        assert self._images is not None
        stack, levels = self._images[self.sequence_at(position)]
        g = torch.Generator().manual_seed(self.seed * 7_919 + position * 104_729 + 1)
        stack = _pad_to(stack, self.crop)
        _, h, w = stack.shape
        top = int(torch.randint(0, h - self.crop + 1, (1,), generator=g))
        left = int(torch.randint(0, w - self.crop + 1, (1,), generator=g))
        # Same float32 division as io.read_image, so crops equal slices of the read images.
        crop = stack[:, top : top + self.crop, left : left + self.crop].to(torch.float32) / levels
        if self.augment:
            crop = dihedral(crop, int(torch.randint(0, 8, (1,), generator=g)))
        crop = crop.contiguous()
        return crop[0:3], crop[3:6], crop[6:9]


def _is_8bit(pixels: np.ndarray) -> bool:
    # Values read from 8-bit files are exact multiples of 1/255 (downsizing breaks that, and
    # then 16 bits keep the extra precision).
    scaled = pixels * 255
    return bool(np.abs(scaled - np.rint(scaled)).max() < 1e-3)


def _pad_to(stack: torch.Tensor, size: int) -> torch.Tensor:
    _, h, w = stack.shape
    if h >= size and w >= size:
        return stack
    pad_h, pad_w = max(0, size - h), max(0, size - w)
    padded = torch.nn.functional.pad(stack[None].float(), (0, pad_w, 0, pad_h), mode="replicate")
    return padded[0].to(stack.dtype)


class StreamBatches(torch.utils.data.Sampler[list[int]]):
    """Batches of stream positions for steps ``start_step`` onwards, for one process.

    Step s of a run with ``world`` processes covers global positions
    ``s * batch * world ... + batch * world - 1``; process ``rank`` takes its contiguous share.
    """

    def __init__(
        self, batch: int, start_step: int, total_steps: int, rank: int = 0, world: int = 1
    ) -> None:
        self.batch, self.start_step, self.total_steps = batch, start_step, total_steps
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

    def __iter__(self):
        for step in range(self.start_step, self.total_steps):
            first = (step * self.world + self.rank) * self.batch
            yield list(range(first, first + self.batch))
