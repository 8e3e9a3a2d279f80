"""Training triplets (under, over, reference) from ``under/ over/ gt/`` folders.

All randomness of a sample (which sequence, where to crop, which flip/rotation, whether to
take the whole image instead of a crop) is drawn from a generator seeded by (seed, position
in the sample stream), so batches do not depend on worker count, process count or
interruptions: a resumed or distributed run sees exactly the samples a single
uninterrupted one would.

A triplet's *sequence* is the scene it comes from: ``make-pairs --pick all-pairs`` names
the many pairs of one stack ``STACK@UNDER-OVER``, and :func:`split_by_sequence` keeps all
of them on one side of the split (:func:`sequence_of`).
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
from textmef.data.pair_options import PAIR_MARK
from textmef.data.pairs import match_by_stem
from textmef.errors import InputError

__all__ = [
    "LAYOUTS",
    "StreamBatches",
    "Triplet",
    "TripletCrops",
    "dihedral",
    "find_triplets",
    "load_triplet",
    "sequence_of",
    "split_by_sequence",
]

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


def sequence_of(name: str) -> str:
    """The sequence (scene) a triplet belongs to: its name up to the first ``@``.

    ``make-pairs --pick all-pairs`` names each pair of a stack ``STACK@UNDER-OVER``; other
    names are a sequence each.

    Args:
        name: a triplet or scene name.

    Returns:
        The part of ``name`` before the first ``@``, or the whole name when it has none.
    """
    return name.split(PAIR_MARK, 1)[0]


def split_by_sequence(
    triplets: Sequence[_NamedT], val_fraction: float
) -> tuple[list[_NamedT], list[_NamedT]]:
    """A fixed (train, validation) split by sequence.

    Takes anything with a ``name`` (triplets, the benchmark's scenes) and keeps its type.

    Each item goes to validation when the hash of its sequence (:func:`sequence_of` of the
    name) falls below ``val_fraction``, so the split never depends on the order of files or
    on sequences added later, and a sequence is never split across the two sets: crops
    come from training sequences only, and the pairs of one stack stay together. A name
    without ``@`` is its own sequence, so such data splits as it always did.

    Args:
        triplets: the items to split.
        val_fraction: the expected share of sequences in validation, in [0, 1).

    Returns:
        (train, validation), each in the input order.

    Raises:
        ValueError: ``val_fraction`` outside [0, 1).
        InputError: no item is left for training.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train: list[_NamedT] = []
    val: list[_NamedT] = []
    for t in triplets:
        digest = int(hashlib.sha256(sequence_of(t.name).encode()).hexdigest()[:8], 16)
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
    return tuple(_downsize(im.pixels, max_side) for im in images)


def _downsize(pixels: np.ndarray, max_side: int | None) -> np.ndarray:
    """``pixels`` shrunk (INTER_AREA) so its longer side is at most ``max_side``."""
    h, w = pixels.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return pixels
    import cv2

    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def dihedral(images: torch.Tensor, view: int) -> torch.Tensor:
    """One of the 8 flips/rotations of (..., S, S) images; view 0 is the identity."""
    out = torch.rot90(images, k=view % 4, dims=(-2, -1))
    return out.flip(-1) if view >= 4 else out


@dataclass(frozen=True, eq=False)
class _Stored:
    """One image file in memory, shared by every triplet whose file has the same bytes.

    Attributes:
        pixels: (3, H, W) uint16, the image as read (after ``max_side``) times ``levels``.
        levels: 255 or 65535 (exact for 8- and 16-bit sources).
        source_shape: the shape as read, before ``max_side``, to check triplets with.
        whole: (3, h, w) uint16 at 65535 levels, the whole image shrunk so its longer side
            is the crop side; None unless whole samples are asked for.
    """

    pixels: torch.Tensor
    levels: int
    source_shape: tuple[int, ...]
    whole: torch.Tensor | None


class TripletCrops(torch.utils.data.Dataset):
    """Random crops of in-memory triplets, addressed by position in a seeded sample stream.

    ``dataset[p]`` is the p-th sample of the stream: the sequence is the (p mod N)-th of the
    epoch's permutation (every sequence once per epoch), the crop position and one of the 8
    flips/rotations are drawn from a generator seeded by (seed, p). Images smaller than the
    crop are replicate-padded.

    With ``whole_fraction`` > 0 the same generator then draws ``u`` in [0, 1); where
    ``u < whole_fraction`` the sample is the *whole* triplet instead of a crop: shrunk
    (area filter) so its longer side is ``crop``, replicate-padded on the short side to
    ``crop`` x ``crop``, then flipped/rotated like a crop. Such samples show the network
    a whole scene's exposure range, which no crop of a large image does. Crops keep their
    positions whatever ``whole_fraction`` is (``u`` is drawn last), and with the default 0
    no extra number is drawn, so earlier runs' samples are unchanged.

    Args:
        triplets: Training sequences.
        crop: Crop side in pixels.
        augment: Random flips and 90° rotations.
        seed: Seed of the stream.
        max_side: Downsize images whose longer side exceeds this first (None: keep).
        whole_fraction: Share of samples, in [0, 1], that are whole triplets.
        by_sequence: Sample sequences uniformly (then one of their triplets), instead of
            triplets (see :meth:`sequence_at`).

    Raises:
        ValueError: ``whole_fraction`` outside [0, 1].
    """

    def __init__(
        self,
        triplets: Sequence[Triplet],
        crop: int,
        augment: bool = True,
        seed: int = 0,
        max_side: int | None = None,
        *,
        whole_fraction: float = 0.0,
        by_sequence: bool = False,
    ) -> None:
        if not 0.0 <= whole_fraction <= 1.0:  # also refuses NaN
            raise ValueError(f"whole_fraction must be in [0, 1], got {whole_fraction}")
        self.triplets = list(triplets)
        self.crop = crop
        self.augment = augment
        self.seed = seed
        self.max_side = max_side
        self.whole_fraction = whole_fraction
        self.by_sequence = by_sequence
        # Indices of the triplets of each sequence, in first-seen order (names only: no I/O).
        groups: dict[str, list[int]] = {}
        for i, t in enumerate(self.triplets):
            groups.setdefault(sequence_of(t.name), []).append(i)
        self._groups = list(groups.values())
        # Per sequence: its under, over and reference image.
        self._images: list[tuple[_Stored, _Stored, _Stored]] | None = None

    def load(self) -> TripletCrops:
        """Read every image into memory (separate from construction: no I/O there).

        Images are kept as 16-bit integers (exact for 8- and 16-bit sources) and converted
        per crop: half the memory of float32 copies, which for a few hundred megapixel-sized
        sequences is gigabytes. Files with identical bytes are read and kept once: the
        pairs ``make-pairs --pick all-pairs`` makes from one stack share their reference
        and most frames, so this divides the memory by about the number of pairs.

        Raises:
            InputError: a triplet has no reference, mixes image sizes, or an image cannot
                be read.
        """
        stored: dict[bytes, _Stored] = {}
        images: list[tuple[_Stored, _Stored, _Stored]] = []
        for t in self.triplets:
            if t.gt is None:
                raise InputError(t.under, f"sequence {t.name!r} has no reference (gt) image")
            parts = []
            for path in (t.under, t.over, t.gt):
                key = _file_digest(path)
                if key not in stored:
                    stored[key] = self._store(path)
                parts.append(stored[key])
            shapes = {part.source_shape for part in parts}
            if len(shapes) != 1:
                raise InputError(t.gt, f"sequence {t.name!r} mixes image sizes {sorted(shapes)}")
            images.append((parts[0], parts[1], parts[2]))
        self._images = images
        return self

    def _store(self, path: Path) -> _Stored:
        """Read one image into its in-memory form (see :class:`_Stored`)."""
        pixels = io.read_image(path).pixels
        source_shape = pixels.shape
        pixels = _downsize(pixels, self.max_side)
        levels = 255 if _is_8bit(pixels) else 65535
        quantised = torch.from_numpy(np.rint(pixels * levels).astype(np.uint16)).permute(2, 0, 1)
        whole = None
        if self.whole_fraction > 0:
            # 16 bits hold the area-filtered values to 1/65535, far below what training can
            # tell apart, at half the memory of float32.
            small = np.rint(_fit_longer_side(pixels, self.crop) * 65535).astype(np.uint16)
            whole = torch.from_numpy(small).permute(2, 0, 1).contiguous()
        return _Stored(quantised, levels, source_shape, whole)

    def __len__(self) -> int:
        return len(self.triplets)

    def sequence_at(self, position: int) -> int:
        """Index (into ``triplets``) of the triplet at a stream position.

        By triplet, an epoch visits every triplet once. By sequence, an epoch visits every
        sequence once and takes one of its triplets at random, so a stack that gave 55
        pairs weighs as much as one that gave a single pair.
        """
        units = len(self._groups) if self.by_sequence else len(self.triplets)
        epoch, offset = divmod(position, units)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        unit = int(torch.randperm(units, generator=g)[offset])
        if not self.by_sequence:
            return unit
        members = self._groups[unit]
        pick = torch.Generator().manual_seed(self.seed * 1_000_033 + position * 7 + 3)
        return members[int(torch.randint(0, len(members), (1,), generator=pick))]

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The sample at a stream position: (under, over, gt), each (3, crop, crop) float32."""
        if self._images is None:
            self.load()
        assert self._images is not None
        parts = self._images[self.sequence_at(position)]
        g = torch.Generator().manual_seed(self.seed * 7_919 + position * 104_729 + 1)
        # Draws in the order of earlier versions (top, left, view), so crops stay the same;
        # u comes last, and only when whole samples are on, so the default draws nothing new.
        _, h, w = parts[0].pixels.shape
        h, w = max(h, self.crop), max(w, self.crop)  # the size after _pad_to
        top = int(torch.randint(0, h - self.crop + 1, (1,), generator=g))
        left = int(torch.randint(0, w - self.crop + 1, (1,), generator=g))
        view = int(torch.randint(0, 8, (1,), generator=g)) if self.augment else 0
        u = float(torch.rand((1,), generator=g)) if self.whole_fraction > 0 else 1.0
        size = self.crop
        if u < self.whole_fraction:
            pieces = [(_pad_to(_whole_of(part), size), 65535) for part in parts]
        else:
            pieces = [
                (_pad_to(part.pixels, size)[:, top : top + size, left : left + size], part.levels)
                for part in parts
            ]
        # Same float32 division as io.read_image, so crops equal slices of the read images.
        sample = torch.cat([image.to(torch.float32) / levels for image, levels in pieces])
        if self.augment:
            sample = dihedral(sample, view)
        sample = sample.contiguous()
        return sample[0:3], sample[3:6], sample[6:9]


def _whole_of(part: _Stored) -> torch.Tensor:
    assert part.whole is not None  # made by load() whenever whole_fraction > 0
    return part.whole


def _fit_longer_side(pixels: np.ndarray, side: int) -> np.ndarray:
    """``pixels`` (H, W, 3) float resized with an area filter so its longer side is ``side``."""
    import cv2

    h, w = pixels.shape[:2]
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return pixels
    # INTER_AREA averages the pixels each output pixel covers (no aliasing when shrinking);
    # for the rare image smaller than the crop it interpolates bilinearly.
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def _file_digest(path: Path) -> bytes:
    """SHA-256 of a file's bytes: identical files are decoded and stored once."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.digest()


def _is_8bit(pixels: np.ndarray) -> bool:
    # Values read from 8-bit files are exact multiples of 1/255 (downsizing breaks that, and
    # then 16 bits keep the extra precision).
    scaled = pixels * 255
    return bool(np.abs(scaled - np.rint(scaled)).max() < 1e-3)


def _pad_to(stack: torch.Tensor, size: int) -> torch.Tensor:
    """Replicate-pad (C, H, W) images at the bottom and right to at least size x size."""
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
