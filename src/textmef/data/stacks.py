"""Training triplets from exposure stacks: an under/over input pair plus a pseudo reference.

No public training set with references can be downloaded, so, as SICE did, every exposure
stack (bracketed shots of one scene) is turned into triplets: its darkest and brightest
frames (or a pair a chosen number of stops apart, or every pair at least a chosen number
of stops apart) become input pairs, and a fusion of the *whole* stack becomes the
reference that all of the stack's pairs share.

Definitions used throughout (and recorded in the manifest):

* **Stack**: a folder that directly holds at least two images of one size. Folders and
  files whose names start with a dot are ignored.
* **Mean luminance** and **exposure order**: as :mod:`textmef.exposure` defines them (the
  same order ``textmef fuse`` uses for stacks).
* **Relative exposure** (in stops, 0 for the darkest frame): ``log2`` of the EXIF time
  ratios, or, without EXIF, chained estimates between neighbouring frames: the median of
  ``Y_brighter / Y_darker`` over pixels whose three channels lie in [0.1, 0.9] in both
  frames, with ``Y`` the linearised (gamma 2.2) luminance. Camera tone curves are steeper
  than gamma 2.2 in the mid-tones, so these estimates tend to run large; they order and
  space the frames well enough to pick pairs and to drive the HDR merge, whose fitted
  response curve absorbs much of the error. Where two frames share fewer than 64 such
  pixels, the ratio of their mean luminances is used instead.
* **Pairs**: ``extremes`` and ``ev-gap`` give one triplet per stack, named after the stack
  (``group_sequence``); ``all-pairs`` gives one per frame pair at least ``min_gap`` stops
  apart, named ``group_sequence@UNDER-OVER`` (the frames' file stems). The part before the
  ``@`` is the *sequence* (:func:`textmef.data.triplets.sequence_of`), which keeps all
  pairs of a stack on one side of the train/validation split.
* **Pseudo reference**: ``mertens`` is OpenCV's Mertens exposure fusion of every frame with
  OpenCV's default weights; ``mertens-paper`` the same with the paper's weights (see
  :func:`mertens_paper`); ``hdr`` merges the frames into a radiance map (Debevec) and tone
  maps it (Drago), see :func:`hdr_tonemap`; ``best`` computes all three and keeps the one
  with the highest MEF-SSIM against the whole stack (on a tie the first of ``mertens``,
  ``mertens-paper``, ``hdr``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from textmef import __version__, baselines, io
from textmef.baselines.mertens import OPENCV_DEFAULT_WEIGHTS, PAPER_WEIGHTS, opencv_serial
from textmef.data.pair_options import (
    MANIFEST_NAME,
    PAIR_MARK,
    PICK_MODES,
    REFERENCE_METHODS,
    PairOptions,
)
from textmef.errors import InputError
from textmef.exposure import (
    GAMMA,
    ORDER_EXIF,
    Frame,
    linear_luma,
    make_frame,
    mean_luminance,
    order_by_exposure,
    read_exposure_time,
)

# Re-exported: make-pairs' public names from before the exposure module existed.
__all__ = [
    "MANIFEST_NAME",
    "PICK_MODES",
    "REFERENCE_METHODS",
    "Frame",
    "NotAStackError",
    "PairOptions",
    "Reference",
    "all_pairs",
    "find_stacks",
    "list_stack_images",
    "load_stack",
    "make_pairs",
    "mean_luminance",
    "mertens_paper",
    "order_by_exposure",
    "read_exposure_time",
    "relative_exposures",
]

log = logging.getLogger("textmef")

OUTPUT_KINDS = ("under", "over", "gt")

_REC709 = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
_WELL_EXPOSED = (0.1, 0.9)  # gamma-encoded values trusted for exposure ratios
_MIN_SHARED = 64  # well-exposed pixels two frames must share to estimate their ratio
_EV_TOLERANCE = 1.0 / 3.0  # brackets come in 1/3-stop steps: closer gaps count as equal
_DEBEVEC_SAMPLES = 70  # OpenCV's default; random=False keeps the grid deterministic
# Debevec's smoothness weight. OpenCV's default (10) lets the curve wiggle near 0 and 255
# on in-camera JPEGs, which shows up as colour fringes around highlights; 50 does not.
_DEBEVEC_LAMBDA = 50.0
_CLIPPED = (5, 250)  # 8-bit levels treated as black / saturated when repairing the merge
_DARK_TARGET = 0.4  # mean luma a dark tone-mapped result is lifted to (gamma domain)
_MAX_LIFT = 0.5  # strongest lift: output = input ** 0.5
_DECIMALS = 6  # floats in the manifest are rounded so it reads (and diffs) well

Scorer = Callable[[np.ndarray, np.ndarray], float]


class NotAStackError(InputError):
    """A folder found under the stacks root is not a usable stack (the message says why)."""


@dataclass(frozen=True, eq=False)
class Reference:
    """A pseudo reference and how it was chosen.

    Attributes:
        image: float32 (H, W, 3) RGB in [0, 1].
        method: the candidate kept, ``"mertens"``, ``"mertens-paper"`` or ``"hdr"``.
        scores: MEF-SSIM of every candidate made (None where the candidate failed).
    """

    image: np.ndarray
    method: str
    scores: dict[str, float | None]


def find_stacks(root: str | os.PathLike[str], exclude: Sequence[Path] = ()) -> list[Path]:
    """Every folder under ``root`` (itself included) that directly holds an image.

    Folders holding a single image or images of different sizes are still listed here;
    :func:`load_stack` rejects them with the reason.

    Args:
        root: the folder to search recursively.
        exclude: folders to leave out with everything below them (e.g. the output).

    Returns:
        The folders, sorted by their path relative to ``root``.

    Raises:
        InputError: ``root`` is missing or not a folder.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(root, "no such folder")
    if not root.is_dir():
        raise InputError(root, "is a file, expected a folder of exposure stacks")
    excluded = {p.resolve() for p in exclude}
    seen: set[Path] = set()
    found = []
    # Links are followed (stacks are often linked in from elsewhere); `seen` stops loops.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        real = here.resolve()
        if real in excluded or real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(_is_image_name(f) for f in filenames):
            found.append(here)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def list_stack_images(folder: Path) -> list[Path]:
    """The images directly in ``folder``, sorted by name (dot files left out)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and _is_image_name(p.name))


def load_stack(
    folder: str | os.PathLike[str],
    max_side: int | None = None,
    max_pixels: int | None = io.DEFAULT_MAX_PIXELS,
) -> list[Frame]:
    """Read the frames of one stack, in file-name order.

    Every file's header is checked (type, pixel limit, size) before any frame is decoded.

    Args:
        folder: the stack's folder.
        max_side: downsize (INTER_AREA) so that no side exceeds this; None keeps the size.
        max_pixels: the most pixels per frame (None: no limit).

    Returns:
        The frames.

    Raises:
        NotAStackError: fewer than two images, or images of different sizes.
        InputError: an image cannot be read.
    """
    folder = Path(folder)
    paths = list_stack_images(folder)
    if len(paths) < 2:
        raise NotAStackError(folder, f"holds {len(paths)} image; a stack needs at least 2")
    headers = [io.check_image_file(p, max_pixels) for p in paths]
    sizes = sorted({h.size_text for h in headers})
    if len(sizes) > 1:
        raise NotAStackError(folder, f"holds images of different sizes ({', '.join(sizes)})")
    images = [io.read_image(p, max_pixels=None) for p in paths]  # checked just above
    frames = []
    for path, image in zip(paths, images):
        pixels = _downsize(image.pixels, max_side)
        frames.append(make_frame(path, pixels, image.bit_depth))
    return frames


def relative_exposures(frames: Sequence[Frame], ordering: str) -> np.ndarray:
    """Exposure of each frame in stops relative to the first (see the module docstring).

    Args:
        frames: the frames in exposure order.
        ordering: ``"exif"`` to use the EXIF times, else estimate from the pixels.

    Returns:
        float64 array, non-decreasing, starting at 0.
    """
    if ordering == ORDER_EXIF:
        times = np.array([f.exposure_time for f in frames], dtype=np.float64)
        return np.log2(times / times[0])
    steps = [estimate_ev_step(a.pixels, b.pixels) for a, b in zip(frames, frames[1:])]
    return np.concatenate([[0.0], np.cumsum(steps)])


def estimate_ev_step(darker: np.ndarray, brighter: np.ndarray) -> float:
    """Stops between two exposures of one scene, from their pixels (never negative).

    Args:
        darker: (H, W, 3) RGB in [0, 1], gamma-encoded.
        brighter: the same scene exposed longer.

    Returns:
        ``log2`` of the median linear-luminance ratio over pixels well exposed in both.
    """
    lo, hi = _WELL_EXPOSED
    shared = (
        (darker.min(axis=2) >= lo)
        & (darker.max(axis=2) <= hi)
        & (brighter.min(axis=2) >= lo)
        & (brighter.max(axis=2) <= hi)
    )
    y_dark, y_bright = linear_luma(darker), linear_luma(brighter)
    if np.count_nonzero(shared) >= _MIN_SHARED:
        ratio = float(np.median(y_bright[shared] / y_dark[shared]))
    else:
        # Too little overlap (a huge step, or mostly clipped frames): compare the means.
        ratio = float(y_bright.mean(dtype=np.float64)) / max(
            float(y_dark.mean(dtype=np.float64)), 1e-6
        )
    return max(math.log2(ratio), 0.0) if ratio > 0 else 0.0


def pick_pair(ev: Sequence[float], pick: str = "extremes", ev_gap: float = 2.0) -> tuple[int, int]:
    """Choose the under- and over-exposed frame of a stack.

    ``extremes`` takes the first and last frame. ``ev-gap`` takes the pair whose gap is
    closest to ``ev_gap`` stops; gaps within 1/3 stop of the closest count as equally
    close, and among those the pair centred nearest the middle of the stack's exposure
    range wins (then the smaller deviation, then the darker pair).

    Args:
        ev: relative exposures in stops, in exposure order (at least two).
        pick: ``"extremes"`` or ``"ev-gap"``.
        ev_gap: the wanted gap for ``"ev-gap"``.

    Returns:
        Indices ``(under, over)`` into ``ev``, ``under < over``.
    """
    n = len(ev)
    if n < 2:
        raise ValueError(f"a pair needs at least two frames, got {n}")
    if pick == "extremes":
        return 0, n - 1
    if pick == "all-pairs":
        raise ValueError("pick_pair picks one pair; all_pairs() gives those of 'all-pairs'")
    if pick != "ev-gap":
        raise ValueError(f"unknown pick {pick!r}; use one of {PICK_MODES}")
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    deviation = {p: abs((ev[p[1]] - ev[p[0]]) - ev_gap) for p in pairs}
    closest = min(deviation.values())
    middle = (ev[0] + ev[-1]) / 2
    near = [p for p in pairs if deviation[p] <= closest + _EV_TOLERANCE]
    # Rounded keys: the estimated exposures are noisy in the last digits, and a near-tie
    # must not be decided by that noise.
    return min(
        near,
        key=lambda p: (
            round(abs((ev[p[0]] + ev[p[1]]) / 2 - middle), 3),
            round(deviation[p], 3),
            p,
        ),
    )


def all_pairs(ev: Sequence[float], min_gap: float = 2.0) -> list[tuple[int, int]]:
    """Every frame pair at least ``min_gap`` stops apart (``pick="all-pairs"``).

    Brackets come in 1/3-stop steps, so a gap short of ``min_gap`` by less than half a
    step (1/6 stop) counts as reaching it: EXIF times such as 1/60 s and 1/15 s are not
    exactly 2 stops apart, and the pixel estimates are noisier still. A full 1/3 stop of
    slack would let a 5/3-stop pair pass for 2 stops.

    Args:
        ev: relative exposures in stops, in exposure order (non-decreasing).
        min_gap: the smallest gap in stops.

    Returns:
        Index pairs ``(under, over)`` with ``under < over``, sorted; empty when no pair
        is far enough apart.
    """
    threshold = min_gap - _EV_TOLERANCE / 2
    return [
        (i, j) for i in range(len(ev)) for j in range(i + 1, len(ev)) if ev[j] - ev[i] >= threshold
    ]


def mertens(frames: Sequence[np.ndarray]) -> np.ndarray:
    """Mertens exposure fusion of every frame: :func:`textmef.baselines.mertens`.

    With OpenCV's default weights (contrast 1, saturation 1, well-exposedness 0), which is
    what every pseudo reference so far was made with; the paper's weights would give other
    references and silently change existing data sets.
    """
    return baselines.mertens(frames, OPENCV_DEFAULT_WEIGHTS)


def mertens_paper(frames: Sequence[np.ndarray]) -> np.ndarray:
    """Mertens fusion of every frame with the paper's weights: the ``mertens-paper`` candidate.

    :func:`textmef.baselines.mertens` with contrast, saturation and well-exposedness 1 each,
    as Mertens et al. published it. OpenCV's defaults (:func:`mertens`) leave out the
    well-exposedness term; which of the two makes the better reference differs from stack
    to stack, so ``best`` builds both and lets MEF-SSIM decide.
    """
    return baselines.mertens(frames, PAPER_WEIGHTS)


def hdr_tonemap(frames: Sequence[np.ndarray], ev: Sequence[float]) -> np.ndarray:
    """Merge frames into a radiance map and tone map it.

    Steps: 8-bit frames (Debevec works on 8 bits only); ``CalibrateDebevec`` fits the
    camera response from the exposures ``2 ** ev``; the three channel curves are replaced
    by their geometric mean, because per-channel curves fitted on in-camera JPEGs disagree
    near black and white and paint colour fringes around highlights; ``MergeDebevec``
    merges; channels saturated even in the darkest frame (black even in the brightest)
    are raised (lowered) to what that frame alone says, since the merge averages them
    down (up) into grey blotches; Drago (gamma 2.2) tone maps; and a result darker than
    a mean luma of 0.4 is lifted by a global power curve (at most ``x ** 0.5``), because
    Drago normalises by the brightest light and leaves high-range scenes murky.

    Args:
        frames: (H, W, 3) RGB arrays in [0, 1], in exposure order.
        ev: their relative exposures in stops.

    Returns:
        float32 (H, W, 3) RGB in [0, 1].

    Raises:
        cv2.error: OpenCV rejected the data.
    """
    images = [np.rint(np.clip(f, 0, 1) * 255).astype(np.uint8)[..., ::-1].copy() for f in frames]
    times = np.exp2(np.asarray(ev, dtype=np.float64) - max(ev)).astype(np.float32)
    with opencv_serial():
        calibrate = cv2.createCalibrateDebevec(_DEBEVEC_SAMPLES, _DEBEVEC_LAMBDA, False)
        response = calibrate.process(images, times)
        shared = np.exp(np.log(np.maximum(response, 1e-12)).mean(axis=2, keepdims=True))
        response = np.repeat(shared, 3, axis=2).astype(np.float32)
        radiance = cv2.createMergeDebevec().process(images, times, response)
    curve = response[:, 0, 0]
    darkest_alone = curve[images[0]] / times[0]
    brightest_alone = curve[images[-1]] / times[-1]
    black, saturated = _CLIPPED
    radiance = np.where(images[0] >= saturated, np.maximum(radiance, darkest_alone), radiance)
    radiance = np.where(images[-1] <= black, np.minimum(radiance, brightest_alone), radiance)
    radiance = _finite_positive(radiance)
    with opencv_serial():
        mapped = cv2.createTonemapDrago(GAMMA, 1.0, 0.85).process(radiance.astype(np.float32))
    return _lift_dark(_to_rgb01(mapped))


def pseudo_reference(
    frames: Sequence[np.ndarray],
    ev: Sequence[float],
    method: str = "best",
    bit_depth: int = 8,
    scorer: Scorer | None = None,
) -> Reference:
    """Build the pseudo reference of a stack from all its frames.

    Every candidate made is rounded to ``bit_depth`` (so it is scored as it will be
    written) and scored by MEF-SSIM against the whole stack.

    Args:
        frames: (H, W, 3) RGB arrays in [0, 1], in exposure order.
        ev: their relative exposures in stops.
        method: ``"mertens"``, ``"mertens-paper"``, ``"hdr"`` or ``"best"`` (all three).
        bit_depth: bits per channel of the output file.
        scorer: ``scorer(stack (K, H, W, 3), image (H, W, 3)) -> float``; default
            MEF-SSIM (:func:`mef_ssim_score`).

    Returns:
        The reference, the method kept and every candidate's score.

    Raises:
        ValueError: unknown method.
        cv2.error: ``method="hdr"`` and OpenCV failed on the data.
    """
    if method not in REFERENCE_METHODS:
        raise ValueError(f"unknown reference method {method!r}; use one of {REFERENCE_METHODS}")
    score = scorer or mef_ssim_score
    stack = np.stack(frames)
    levels = (1 << bit_depth) - 1
    candidates: dict[str, np.ndarray] = {}
    scores: dict[str, float | None] = {}
    if method in ("mertens", "best"):
        candidates["mertens"] = mertens(frames)
    if method in ("mertens-paper", "best"):
        candidates["mertens-paper"] = mertens_paper(frames)
    if method in ("hdr", "best"):
        try:
            candidates["hdr"] = hdr_tonemap(frames, ev)
        except cv2.error as exc:
            if method == "hdr":
                raise
            log.warning("HDR merge failed, keeping the Mertens candidates: %s", exc.err)
            scores["hdr"] = None
    ranked: dict[str, float] = {}
    for name, image in candidates.items():
        candidates[name] = (np.rint(image * levels) / levels).astype(np.float32)
        scores[name] = ranked[name] = float(score(stack, candidates[name]))
    # Insertion order is mertens, mertens-paper, hdr and max() keeps the first of equals:
    # on a tie the reference stays what earlier versions (OpenCV's weights) made.
    chosen = max(candidates, key=lambda name: ranked[name])
    return Reference(image=candidates[chosen], method=chosen, scores=scores)


def mef_ssim_score(stack: np.ndarray, image: np.ndarray) -> float:
    """MEF-SSIM of ``image`` (H, W, 3) against ``stack`` (K, H, W, 3), both RGB in [0, 1]."""
    import torch

    from textmef.metrics.mef_ssim import mef_ssim

    sources = torch.from_numpy(np.ascontiguousarray(stack.transpose(0, 3, 1, 2)))
    fused = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    with torch.no_grad():
        return float(mef_ssim(sources.float(), fused.float()))


def stack_name(relative: Path, root: Path) -> str:
    """The output stem of a stack: its path below the root with ``/`` turned into ``_``."""
    parts = relative.parts
    return "_".join(parts) if parts else root.resolve().name


def make_pairs(
    stacks_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: PairOptions | None = None,
    progress: bool = False,
    scorer: Scorer | None = None,
) -> dict:
    """Turn every stack under ``stacks_dir`` into ``under/``, ``over/`` and ``gt/`` PNGs.

    Writes ``out_dir/{under,over,gt}/NAME.png`` (16-bit when every frame of the stack is
    16-bit, else 8-bit) and ``out_dir/manifest.json``, which is rewritten after every
    stack so that an interrupted run can be resumed with ``skip_existing``. NAME is the
    stack's name, or with ``pick="all-pairs"`` ``STACK@UNDER-OVER`` for each pair; the
    manifest has one entry per triplet, its ``sequence`` being the stack's name. All
    writes are atomic; temporary files that a killed run left in those folders are
    removed first. The same input gives byte-identical files.

    Args:
        stacks_dir: folder searched recursively for stacks.
        out_dir: output folder (created); left out of the search if inside stacks_dir.
        options: how to pick and fuse; default :class:`PairOptions`.
        progress: show a progress bar.
        scorer: replaces MEF-SSIM (see :func:`pseudo_reference`).

    Returns:
        The manifest as written.

    Raises:
        InputError: stacks_dir is missing, holds no image at all, or out_dir is a file.
    """
    from tqdm import tqdm

    options = options or PairOptions()
    root, out = Path(stacks_dir), Path(out_dir)
    folders = find_stacks(root, exclude=[out])
    if not folders:
        raise InputError(root, "holds no images; expected folders of exposure brackets")
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    for kind in OUTPUT_KINDS:
        (out / kind).mkdir(parents=True, exist_ok=True)
    # A run killed mid-write (SIGKILL) leaves its temporary files behind: remove those in
    # out/ (the manifest's folder) and in under/, over/ and gt/.
    removed = [
        path
        for folder in (out, *(out / kind for kind in OUTPUT_KINDS))
        for path in io.remove_stale_temp_files(folder)
    ]
    if removed:
        log.info(
            "removed %d temporary file%s left by an interrupted run: %s",
            len(removed),
            "s" if len(removed) > 1 else "",
            ", ".join(path.relative_to(out).as_posix() for path in removed),
        )
    # skip_existing changes no output, and leaving it out makes a resumed run's manifest
    # byte-identical to that of an uninterrupted one.
    recorded = {k: v for k, v in asdict(options).items() if k != "skip_existing"}
    previous = _previous_entries(out / MANIFEST_NAME, recorded) if options.skip_existing else {}

    manifest: dict[str, Any] = {
        "textmef_version": __version__,
        "stacks_dir": str(root.resolve()),
        "options": recorded,
        "stacks": [],
        "skipped": [],
    }
    owners: dict[str, str] = {}
    bar = tqdm(folders, desc="stacks", unit="stack", disable=None if progress else True)
    for folder in bar:
        relative = folder.relative_to(root)
        source = relative.as_posix()
        name = stack_name(relative, root)
        if name in owners:
            _skip(manifest, source, f"its output name {name!r} is taken by {owners[name]}")
            continue
        owners[name] = source
        old = previous.get(source)
        if old is not None and _reusable(old, name, out, options):
            manifest["stacks"].extend(old)
        else:
            try:
                manifest["stacks"].extend(_make_stack(folder, source, name, out, options, scorer))
            except (InputError, cv2.error) as exc:
                reason = exc.problem if isinstance(exc, NotAStackError) else _reason(exc)
                _skip(manifest, source, reason)
        _write_manifest(out / MANIFEST_NAME, manifest)
    bar.close()
    _write_manifest(out / MANIFEST_NAME, manifest)
    _remove_stale_pairs(out, set(owners), manifest)
    return manifest


def _remove_stale_pairs(out: Path, names: set[str], manifest: dict) -> None:
    """Remove pair files (``STACK@...``) of this run's stacks that this run did not make.

    An earlier all-pairs run with another ``min_gap`` (or pick) leaves pairs this one does
    not make; training reads every file in ``under/ over/ gt/``, so they would slip back in.
    Only names of stacks this run looked at are touched, and only the pair form.
    """
    kept = {path for entry in manifest["stacks"] for path in entry["outputs"].values()}
    stale = sorted(
        path
        for kind in OUTPUT_KINDS
        for path in (out / kind).glob(f"*{PAIR_MARK}*.png")
        if path.stem.split(PAIR_MARK, 1)[0] in names
        and path.relative_to(out).as_posix() not in kept
    )
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.warning(
            "removed %d pair file%s an earlier run with other options left: %s",
            len(stale),
            "s" if len(stale) > 1 else "",
            ", ".join(path.relative_to(out).as_posix() for path in stale[:5])
            + (", ..." if len(stale) > 5 else ""),
        )


def _make_stack(
    folder: Path,
    source: str,
    name: str,
    out: Path,
    options: PairOptions,
    scorer: Scorer | None,
) -> list[dict]:
    """Write the triplets of one stack; returns their manifest entries, in pair order.

    Raises:
        NotAStackError: the stack is unusable, or (all-pairs) no pair is far enough apart.
        InputError: a frame cannot be read or an output written.
        cv2.error: OpenCV failed on the data.
    """
    all_pairs_mode = options.pick == "all-pairs"
    if all_pairs_mode and PAIR_MARK in name:
        # sequence_of() splits names at the first "@": this stack's pairs would be taken
        # for another sequence's and could straddle the train/validation split.
        raise NotAStackError(
            folder, f"its output name {name!r} holds {PAIR_MARK!r}, which all-pairs reserves"
        )
    frames, ordering = order_by_exposure(load_stack(folder, options.max_side, options.max_pixels))
    stems = [f.path.stem for f in frames]
    if all_pairs_mode and len(set(stems)) < len(stems):
        twice = sorted({s for s in stems if stems.count(s) > 1})
        raise NotAStackError(
            folder, f"frames share the file stem {', '.join(twice)}; all-pairs names pairs by stem"
        )
    alignment = None
    if options.align:
        frames, alignment = _align(frames)
    ev = relative_exposures(frames, ordering)
    if all_pairs_mode:
        pairs = all_pairs(ev.tolist(), options.min_gap)
        if not pairs:
            # Checked before the reference is built: that is most of a stack's cost.
            raise NotAStackError(
                folder,
                f"no two frames are at least {options.min_gap:g} stops apart (the whole "
                f"stack spans {float(ev[-1] - ev[0]):.2f} stops)",
            )
    else:
        pairs = [pick_pair(ev.tolist(), options.pick, options.ev_gap)]
    bit_depth = 16 if all(f.bit_depth == 16 for f in frames) else 8
    # One reference per stack, shared by all its pairs: it is made from every frame, so it
    # does not depend on the pair.
    reference = pseudo_reference(
        [f.pixels for f in frames], ev.tolist(), options.reference, bit_depth, scorer
    )
    height, width = frames[0].pixels.shape[:2]
    shared = {
        "sequence": name,
        "source": source,
        "size": [width, height],
        "bit_depth": bit_depth,
        "ordering": ordering,
        "frames": [
            {
                "file": f.path.name,
                "mean_luminance": _round(f.mean_luminance),
                "exposure_time": f.exposure_time,
                "ev": _round(e),
            }
            for f, e in zip(frames, ev.tolist())
        ],
        "reference": {
            "chosen": reference.method,
            "scores": {k: None if v is None else _round(v) for k, v in reference.scores.items()},
        },
        "gt_mean_luminance": _round(mean_luminance(reference.image)),
        **({"alignment": alignment} if alignment else {}),
    }
    written: dict[int | str, Path] = {}  # frame index or "gt" -> the first file holding it
    entries = []
    for under, over in pairs:
        triplet = f"{name}{PAIR_MARK}{stems[under]}-{stems[over]}" if all_pairs_mode else name
        outputs = {kind: f"{kind}/{triplet}.png" for kind in OUTPUT_KINDS}
        for kind, key, pixels in (
            ("under", under, frames[under].pixels),
            ("over", over, frames[over].pixels),
            ("gt", "gt", reference.image),
        ):
            _write_once(out / outputs[kind], key, pixels, bit_depth, written)
        entries.append(
            {
                **shared,
                "name": triplet,
                "under": frames[under].path.name,
                "over": frames[over].path.name,
                "pair_ev_gap": _round(ev[over] - ev[under]),
                "outputs": outputs,
            }
        )
    return entries


def _write_once(
    path: Path,
    key: int | str,
    pixels: np.ndarray,
    bit_depth: int,
    written: dict[int | str, Path],
) -> None:
    """Write ``pixels`` to ``path``, or copy the file an earlier pair wrote them to.

    A frame or reference appears in many pairs of an all-pairs stack; encoding a PNG costs
    far more than copying one, and the copy is byte-identical to a fresh encoding.
    """
    first = written.get(key)
    if first is None:
        io.write_image(path, pixels, bit_depth)
        written[key] = path
        return
    try:
        with io.atomic_path(path) as tmp:
            shutil.copyfile(first, tmp)
    except OSError as exc:
        raise InputError(path, f"cannot be written ({exc.strerror or exc})") from None


def _reusable(entries: list[dict], name: str, out: Path, options: PairOptions) -> bool:
    """Whether a previous run's entries of one stack can stand for this run's.

    The previous manifest's options already matched (see :func:`_previous_entries`), so
    what is left is that the entries carry this run's names and every file is there.
    The manifest is written after a whole stack, so its entries of a stack are complete.
    """
    if not entries:
        return False
    for entry in entries:
        outputs = entry.get("outputs")
        if not isinstance(outputs, dict) or set(outputs) != set(OUTPUT_KINDS):
            return False
        triplet = entry.get("name")
        if options.pick == "all-pairs":
            named = isinstance(triplet, str) and triplet.startswith(name + PAIR_MARK)
        else:
            named = triplet == name
        if not named or outputs != {k: f"{k}/{triplet}.png" for k in OUTPUT_KINDS}:
            return False
        if not all((out / p).is_file() for p in outputs.values()):
            return False
    return True


def _align(frames: Sequence[Frame]) -> tuple[list[Frame], dict]:
    """Frames registered to the middle exposure and cropped to their common area."""
    from dataclasses import replace

    from textmef.align import align_frames

    # The middle exposure shares the most unclipped detail with both ends of the stack.
    middle = len(frames) // 2
    result = align_frames([f.pixels for f in frames], reference_index=middle)
    aligned = [replace(f, pixels=p) for f, p in zip(frames, result.frames)]
    report = {
        "reference": frames[middle].path.name,
        "crop": list(result.crop),
        "motions": {
            f.path.name: m.describe()
            for f, m in zip(frames, result.motions)
            if f is not frames[middle]
        },
    }
    return aligned, report


def _skip(manifest: dict, source: str, reason: str) -> None:
    log.warning("skipped %s: %s", source or ".", reason)
    manifest["skipped"].append({"source": source, "reason": reason})


def _reason(exc: Exception) -> str:
    if isinstance(exc, cv2.error):
        return f"OpenCV failed: {exc.err}"
    return str(exc)


def _previous_entries(path: Path, options: dict[str, Any]) -> dict[str, list[dict]]:
    """Entries of an earlier manifest by source folder, in their order.

    Empty when there is no readable manifest or it was made with other options: its
    triplets would then not be this run's (another pick, gap or reference).
    """
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("options") != options:
            return {}
        entries: dict[str, list[dict]] = {}
        for entry in old.get("stacks", []):
            entries.setdefault(entry["source"], []).append(entry)
        return entries
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def _write_manifest(path: Path, manifest: dict) -> None:
    text = json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    try:
        with io.atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(path, f"cannot be written ({exc.strerror or exc})") from None


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in io.SUPPORTED_SUFFIXES


def _size_text(pixels: np.ndarray) -> str:
    return f"{pixels.shape[1]}x{pixels.shape[0]}"


def _downsize(pixels: np.ndarray, max_side: int | None) -> np.ndarray:
    height, width = pixels.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return pixels
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def _bgr255(pixels: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(
        np.clip(pixels[..., ::-1], 0, 1) * np.float32(255), dtype=np.float32
    )


def _to_rgb01(bgr: np.ndarray) -> np.ndarray:
    clean = np.nan_to_num(bgr, nan=0.0, posinf=1.0, neginf=0.0)
    return np.ascontiguousarray(np.clip(clean[..., ::-1], 0, 1), dtype=np.float32)


def _finite_positive(radiance: np.ndarray) -> np.ndarray:
    """Replace non-finite and non-positive radiance so the tone mapper's logs stay finite."""
    good = np.isfinite(radiance) & (radiance > 0)
    if good.all():
        return radiance
    if not good.any():
        return np.ones_like(radiance)
    low, high = radiance[good].min(), radiance[good].max()
    fixed = np.where(np.isnan(radiance) | (radiance <= 0), low, radiance)
    return np.where(np.isposinf(fixed), high, fixed)


def _lift_dark(rgb: np.ndarray) -> np.ndarray:
    luma = float((rgb @ _REC709).mean(dtype=np.float64))
    if luma >= _DARK_TARGET or luma <= 0:
        return rgb
    power = max(math.log(_DARK_TARGET) / math.log(luma), _MAX_LIFT)
    return np.power(rgb, np.float32(power))


def _round(value: float) -> float:
    return round(float(value), _DECIMALS)
