"""Registration of differently exposed frames of one scene (hand-held exposure brackets).

A fusion network assumes that pixel (x, y) shows the same scene point in every input. Frames
of a hand-held bracket are a few pixels apart, and fusing them as they are gives ghosted
double edges. This module estimates each frame's motion relative to a reference frame and
warps the frames onto it.

The difficulty is that the frames differ in exposure: a dark and a bright frame of the same
scene differ by far more than a gain (the camera's tone curve, noise in the shadows, clipping
in the highlights), so ordinary intensity-based alignment is biased or fails. The method has
two stages, each chosen for exposure invariance:

1. **Coarse translation with median threshold bitmaps (MTB, Ward 2003).** Each frame is
   thresholded at its median, which gives nearly the same bitmap for every exposure because
   a monotonic tone curve keeps every pixel's rank, so the median's iso-contour is the same
   scene contour in each frame. The bitmaps are matched over a pyramid by XOR counts,
   ignoring pixels too close to the threshold to be stable. This is fast, needs no starting
   guess and survives strong exposure differences. Two extensions over OpenCV's AlignMTB:
   when more than half of a frame is clipped (usual for the bright frame) its median is
   white and its bitmap empty, so the threshold is the quantile nearest the median that is
   unclipped in *both* frames; and the whole-pixel result is refined to a fraction of a
   pixel by fitting a V to the XOR counts around it.
2. **Refinement with ECC (enhanced correlation coefficient, Evangelidis & Psarakis 2008).**
   ECC maximises the correlation coefficient between the reference and the warped frame over
   a translation, a rotation (Euclidean) or a homography, with sub-pixel accuracy. The
   correlation coefficient is only invariant to *affine* intensity changes, so the frames
   are first made alike: converted to gray and rank-normalised (each pixel replaced by its
   quantile among the pixels well exposed in both), which maps any monotonic tone curve to
   the same image, then normalised to unit local contrast, which removes what a global
   mapping cannot (vignetting, local tone operators, flare). Pixels clipped near black or
   white in either frame carry no structure and would pull the solution towards the clipping
   contours, so they are masked out. ECC runs coarse-to-fine on a Gaussian pyramid, which
   widens its basin of convergence and keeps it fast; the finest level is a copy whose
   longest side is at most 1024 pixels, and the matrix is scaled back to full size.

For a homography the rigid (Euclidean) motion is solved first on every level, and the
homography refines it on the two finest; it is kept only if it fits clearly better, because
with much of a frame clipped its perspective terms otherwise fit exposure differences rather
than geometry (about a pixel of error at the corners on real brackets).

If ECC fails (it raises, its correlation is too low, or it lands far from the MTB estimate),
the MTB translation is used and the motion is flagged ``converged=False``. Nothing is random:
the same frames always give the same result.

:func:`align_frames` estimates every frame's motion onto the reference (retrying a failed
frame through a frame of intermediate exposure), warps the frames and crops all of them to
the largest axis-aligned rectangle that every warped frame covers, so no black borders reach
the fusion. :func:`misalignment_px` is a quick MTB-only check used to warn users who did not
ask for alignment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from textmef.errors import InputError

MODELS = ("translation", "euclidean", "homography")

# ECC runs on a copy no larger than this; see the module docstring.
WORK_SIDE = 1024
# misalignment_px must be fast on 12 MP frames, so it looks at a smaller copy still.
QUICK_SIDE = 512
# Coarsest ECC pyramid level: smaller levels have too little structure to constrain a warp.
_MIN_LEVEL_SIDE = 64
# MTB coarsest level: fewer pixels than this per side and the bitmaps become noise.
_MIN_MTB_SIDE = 16
# MTB ignores pixels within this many 8-bit levels of its threshold (OpenCV's default): they
# flip between exposures with noise.
_MTB_EXCLUDE = 4
# MTB pyramid levels below full size at most (OpenCV's default).
_MTB_MAX_LEVELS = 6
# 8-bit levels this close to 0 or 255 count as clipped when choosing the MTB threshold.
_CLIP_LEVELS = 5
# The frames must share at least this range of unclipped quantiles for MTB to see anything,
# and keep at least this fraction of pixels clear of its threshold.
_MTB_MIN_RANGE = 0.04
_MTB_MIN_SIDE = 0.02
# Gray levels (of 1) below/above which a pixel counts as clipped (no usable structure).
_DARK = 0.02
_BRIGHT = 0.98
# Quantisation of the rank normalisation (finer than any 8-bit source).
_RANK_LEVELS = 4096
# Fewer valid pixels than this fraction and masking would leave ECC too little to work with.
_MIN_VALID_FRACTION = 0.05
# ECC results whose corners land further than this (fraction of the longest side) from the
# MTB estimate, or whose scale is off by more than _MAX_SCALE_CHANGE, are treated as failures:
# a bracket is taken within a second, so the camera cannot have moved that much.
_MAX_ECC_DEPARTURE = 0.1
_MAX_SCALE_CHANGE = 0.2
# Below this correlation the "aligned" normalised frames are not the same scene.
_MIN_CORRELATION = 0.2
# Local contrast normalisation: Gaussian scale (pixels of each pyramid level) and a floor on
# the local variance (of rank-normalised values) so flat, noisy areas are not amplified.
_CONTRAST_SIGMA = 2.0
_CONTRAST_FLOOR = 1e-2
# ECC iterations on coarser levels / on the finest level, and the correlation increment at
# which it stops; more changed no result on real brackets by even 0.01 px but cost seconds.
_ECC_ITERATIONS_COARSE = 30
_ECC_ITERATIONS_FINEST = 15
_ECC_EPS = 1e-4
# Gaussian smoothing ECC applies to both images (its gaussFiltSize).
_ECC_BLUR = 5
# A homography is kept over the rigid fit only if it leaves at most this fraction of the
# rigid fit's misfit (1 - correlation); measured on real brackets, see _ecc_pyramid.
_HOMOGRAPHY_GAIN = 0.9
# Fraction of the reference frame the common valid area must keep.
MIN_COMMON_AREA = 0.5

_ECC_MOTION = {
    "translation": cv2.MOTION_TRANSLATION,
    "euclidean": cv2.MOTION_EUCLIDEAN,
    "homography": cv2.MOTION_HOMOGRAPHY,
}


@dataclass(frozen=True, eq=False)
class Motion:
    """How a moving frame sits relative to the reference frame.

    ``eq=False`` keeps identity comparison: field-wise ``==`` on numpy arrays is ambiguous.

    Attributes:
        matrix: 3x3 float64 homography mapping moving-frame pixel coordinates (x, y, 1) to
            reference-frame pixel coordinates, full-size pixels.
        model: the model the matrix was fitted with: "translation", "euclidean" or
            "homography" (see estimate_motion for when it differs from the requested one).
        shift: (dx, dy) in pixels: where the moving frame's centre lands in the reference,
            minus the centre.
        rotation_deg: rotation at the image centre, degrees, counter-clockwise in image
            coordinates (y down) is negative.
        scale: linear scale factor at the image centre (1 means none).
        converged: False when ECC failed and the matrix is the coarse MTB translation.
    """

    matrix: np.ndarray
    model: str
    shift: tuple[float, float]
    rotation_deg: float
    scale: float
    converged: bool = True

    @classmethod
    def from_matrix(
        cls, matrix: np.ndarray, size: tuple[int, int], model: str, converged: bool = True
    ) -> Motion:
        """Build a motion and its summary numbers from a matrix.

        Args:
            matrix: 3x3 homography, moving to reference pixel coordinates.
            size: (width, height) of the frames, for the centre.
            model: the motion model the matrix was estimated with.
            converged: whether the refinement converged.

        Returns:
            The motion, with shift, rotation and scale measured at the image centre.
        """
        matrix = np.asarray(matrix, dtype=np.float64)
        matrix = matrix / matrix[2, 2]
        w, h = size
        centre = np.array([(w - 1) / 2, (h - 1) / 2])
        moved = _apply(matrix, centre[None])[0]
        # The local linear part (Jacobian) at the centre describes rotation and scale even
        # for a homography; its closest similarity gives a single angle and scale.
        jac = _jacobian(matrix, centre)
        rotation = math.degrees(math.atan2(jac[1, 0] - jac[0, 1], jac[0, 0] + jac[1, 1]))
        scale = math.sqrt(abs(np.linalg.det(jac)))
        shift = (float(moved[0] - centre[0]), float(moved[1] - centre[1]))
        return cls(matrix, model, shift, rotation, scale, converged)

    @classmethod
    def identity(cls, size: tuple[int, int], model: str = "homography") -> Motion:
        """The motion of the reference frame onto itself.

        Args:
            size: (width, height) of the frames.
            model: the motion model to report.

        Returns:
            An identity motion.
        """
        return cls.from_matrix(np.eye(3), size, model)

    def describe(self) -> str:
        """One line for logs.

        Returns:
            E.g. "shift +3.2, -1.5 px, rotation 0.41°, scale 1.002 (homography)".
        """
        dx, dy = self.shift
        text = (
            f"shift {dx:+.1f}, {dy:+.1f} px, rotation {self.rotation_deg:.2f}°, "
            f"scale {self.scale:.3f} ({self.model})"
        )
        return text if self.converged else text + ", ECC did not converge: MTB translation only"


@dataclass(frozen=True, eq=False)
class AlignResult:
    """Frames warped onto a reference and cropped to their common valid area.

    Attributes:
        frames: aligned frames in the input order, all of the same size (the crop's).
        motions: each input frame's motion onto the reference (identity for the reference).
        crop: (x, y, w, h) of the kept area in reference-frame pixel coordinates.
        reference_index: index of the reference frame.
    """

    frames: list[np.ndarray]
    motions: list[Motion]
    crop: tuple[int, int, int, int]
    reference_index: int


def estimate_motion(reference: np.ndarray, moving: np.ndarray, model: str = "homography") -> Motion:
    """Estimate how ``moving`` maps onto ``reference``, robustly to exposure differences.

    Args:
        reference: (H, W, 3) or (H, W) float image in [0, 1].
        moving: a differently exposed frame of the same scene, same size.
        model: "translation", "euclidean" or "homography".

    Returns:
        The motion; its matrix maps moving-frame pixel coordinates to reference coordinates.
        Its ``model`` is the one actually fitted: a requested homography comes back as
        "euclidean" when it fits no better than a rigid motion (its extra freedom would only
        fit noise), and ``converged`` is False, with model "translation", when the ECC
        refinement failed and the coarse MTB translation is returned instead.

    Raises:
        InputError: unknown model, or the frames differ in size.
    """
    if model not in MODELS:
        raise InputError(None, f"unknown motion model {model!r}; use one of {', '.join(MODELS)}")
    reference, moving = _as_float(reference), _as_float(moving)
    _check_same_size([reference, moving])
    h, w = reference.shape[:2]

    ref, fx, fy = _shrink(reference, WORK_SIDE)
    mov, _, _ = _shrink(moving, WORK_SIDE)
    to_work = _scaling(fx, fy)
    ref_gray, mov_gray = _gray(ref), _gray(mov)

    # Without a usable MTB estimate (a frame mostly clipped) ECC still gets its chance, from
    # no motion: hand-held brackets are rarely far off.
    dx, dy = _mtb_shift(ref_gray, mov_gray) or (0.0, 0.0)
    coarse = np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]], dtype=np.float64)  # work pixels
    mtb_motion = Motion.from_matrix(
        np.linalg.inv(to_work) @ coarse @ to_work, (w, h), "translation", converged=False
    )

    ref_valid, mov_valid = _valid(ref, ref_gray), _valid(mov, mov_gray)
    # Rank statistics must come from the same scene points in both frames, so each frame's
    # quantiles are taken over pixels that are well exposed in both (at the MTB alignment).
    size = (ref_gray.shape[1], ref_gray.shape[0])
    ref_joint = ref_valid & _warp_mask(mov_valid, coarse, size).astype(bool)
    mov_joint = mov_valid & _warp_mask(ref_valid, np.linalg.inv(coarse), size).astype(bool)
    if ref_joint.mean() < _MIN_VALID_FRACTION or mov_joint.mean() < _MIN_VALID_FRACTION:
        # Almost everything is clipped somewhere: use every pixel rather than none.
        ref_valid = mov_valid = ref_joint = mov_joint = np.ones_like(ref_valid)
    ref_norm = _rank_normalise(ref_gray, ref_joint)
    mov_norm = _rank_normalise(mov_gray, mov_joint)

    refined = _ecc_pyramid(ref_norm, mov_norm, ref_valid, mov_valid, coarse, model)
    if refined is None or not _plausible(refined[0], coarse, size):
        return mtb_motion
    matrix, fitted = refined
    return Motion.from_matrix(np.linalg.inv(to_work) @ matrix @ to_work, (w, h), fitted)


def align_frames(
    frames: Sequence[np.ndarray], reference_index: int = 0, model: str = "homography"
) -> AlignResult:
    """Warp every frame onto the reference frame and crop all to their common valid area.

    Args:
        frames: two or more (H, W, 3) float32 images in [0, 1] of one scene, same size.
        reference_index: index of the frame the others are aligned to (it is only cropped).
        model: "translation", "euclidean" or "homography".

    Returns:
        The aligned, cropped frames with each frame's motion and the crop rectangle.

    Raises:
        InputError: fewer than two frames, frames of different sizes, a bad reference index
            or model, or motion so large that the common area is under half the frame.
    """
    if model not in MODELS:
        raise InputError(None, f"unknown motion model {model!r}; use one of {', '.join(MODELS)}")
    if len(frames) < 2:
        raise InputError(None, f"alignment needs at least 2 frames, got {len(frames)}")
    if not -len(frames) <= reference_index < len(frames):
        raise InputError(
            None, f"reference index {reference_index} is out of range for {len(frames)} frames"
        )
    reference_index %= len(frames)
    frames = [_as_float(f) for f in frames]
    _check_same_size(frames)
    h, w = frames[0].shape[:2]
    motions = _estimate_all(frames, reference_index, model)
    x, y, cw, ch = _common_rectangle([m.matrix for m in motions], (w, h))
    if cw * ch < MIN_COMMON_AREA * w * h:
        worst = max(motions, key=lambda m: math.hypot(*m.shift))
        raise InputError(
            None,
            f"the frames overlap too little to align: the area common to all of them is "
            f"{100 * cw * ch / (w * h):.0f}% of the frame, less than "
            f"{100 * MIN_COMMON_AREA:.0f}% (largest motion: {worst.describe()})",
        )

    # Warping straight into the crop saves warping (and then discarding) the borders.
    to_crop = np.array([[1, 0, -x], [0, 1, -y], [0, 0, 1]], dtype=np.float64)
    aligned = []
    for i, (frame, motion) in enumerate(zip(frames, motions)):
        if i == reference_index:
            aligned.append(frame[y : y + ch, x : x + cw].copy())
            continue
        warped = cv2.warpPerspective(
            frame,
            to_crop @ motion.matrix,
            (cw, ch),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        aligned.append(warped.reshape(frame[:ch, :cw].shape))
    return AlignResult(aligned, motions, (x, y, cw, ch), reference_index)


def _estimate_all(frames: list[np.ndarray], reference_index: int, model: str) -> list[Motion]:
    """Each frame's motion onto the reference; failed pairs are retried through a neighbour.

    Frames far apart in exposure share few well-exposed pixels, and ECC can fail on them where
    it succeeds on each step between neighbouring exposures. So frames are solved in order of
    exposure distance from the reference, and a frame whose direct estimate failed is aligned
    to the nearest solved frame on the same side (darker or brighter) and the two motions are
    composed. Errors add up along such a chain, which is why it is only the fallback.
    """
    h, w = frames[0].shape[:2]
    reference = frames[reference_index]
    brightness = [float(_gray(_shrink(f, QUICK_SIDE)[0]).mean()) for f in frames]
    offset = [b - brightness[reference_index] for b in brightness]
    motions: dict[int, Motion] = {reference_index: Motion.identity((w, h), model)}
    for i in sorted(range(len(frames)), key=lambda i: abs(offset[i])):
        if i == reference_index:
            continue
        motion = estimate_motion(reference, frames[i], model)
        if not motion.converged:
            via = [
                j
                for j, m in motions.items()
                if j != reference_index
                and m.converged
                and offset[j] * offset[i] > 0
                and abs(offset[j]) <= abs(offset[i])
            ]
            if via:
                j = max(via, key=lambda j: abs(offset[j]))
                link = estimate_motion(frames[j], frames[i], model)
                if link.converged:
                    fitted = max(link.model, motions[j].model, key=MODELS.index)
                    motion = Motion.from_matrix(motions[j].matrix @ link.matrix, (w, h), fitted)
        motions[i] = motion
    return [motions[i] for i in range(len(frames))]


def misalignment_px(reference: np.ndarray, moving: np.ndarray) -> float:
    """Quickly estimate how far apart two frames are, in full-size pixels.

    Uses MTB translation only on copies at most QUICK_SIDE pixels long (tens of milliseconds
    on 12 MP frames), refined to a fraction of a pixel there; rotation is not measured.

    Args:
        reference: (H, W, 3) or (H, W) float image in [0, 1].
        moving: a differently exposed frame of the same scene, same size.

    Returns:
        The length of the translation between the frames, full-size pixels; 0.0 when it
        cannot be measured because more than half of a frame is clipped black or white.

    Raises:
        InputError: the frames differ in size.
    """
    reference, moving = _as_float(reference), _as_float(moving)
    _check_same_size([reference, moving])
    ref, fx, fy = _shrink(reference, QUICK_SIDE)
    mov, _, _ = _shrink(moving, QUICK_SIDE)
    shift = _mtb_shift(_gray(ref), _gray(mov))
    if shift is None:
        return 0.0  # a frame is mostly clipped: nothing to measure (documented above)
    return math.hypot(shift[0] / fx, shift[1] / fy)


# ---------------------------------------------------------------------------------------------
# Helpers


def _as_float(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise InputError(None, f"expected an (H, W, 3) image, got an array of shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255
    return image.astype(np.float32, copy=False)


def _check_same_size(frames: Sequence[np.ndarray]) -> None:
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        listed = ", ".join(f"{f.shape[1]}x{f.shape[0]}" for f in frames)
        raise InputError(None, f"frames to align must all have the same size, got {listed}")


def _gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    if image.shape[2] == 1:
        return image[:, :, 0]
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _shrink(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float, float]:
    """Downsize so the longest side is at most max_side; also the x and y scale factors."""
    h, w = image.shape[:2]
    factor = max_side / max(h, w)
    if factor >= 1:
        return image, 1.0, 1.0
    sw, sh = max(1, round(w * factor)), max(1, round(h * factor))
    small = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)
    return small, sw / w, sh / h


def _scaling(fx: float, fy: float) -> np.ndarray:
    """Matrix from full-size to resized pixel coordinates under OpenCV's pixel-centre grid."""
    return np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1]], dtype=np.float64)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    homog = np.c_[points, np.ones(len(points))] @ matrix.T
    return homog[:, :2] / homog[:, 2:3]


def _jacobian(matrix: np.ndarray, point: np.ndarray) -> np.ndarray:
    x, y = point
    u, v, s = matrix @ np.array([x, y, 1.0])
    return (matrix[:2, :2] * s - np.outer([u, v], matrix[2, :2])) / s**2


def _to_u8(gray: np.ndarray) -> np.ndarray:
    return np.clip(gray * 255 + 0.5, 0, 255).astype(np.uint8)


def _mtb_shift(ref_gray: np.ndarray, mov_gray: np.ndarray) -> tuple[float, float] | None:
    """MTB translation (moving to reference), refined to sub-pixel by V-fitting XOR counts.

    Ward's MTB thresholds both frames at their median. When more than half of a frame is
    clipped (common for the bright frame of a pair) its median is white and its bitmap empty,
    so the threshold here is a quantile shared by both frames and unclipped in both: pixels
    keep their rank under any tone curve, so that quantile's contour is the same scene contour
    in each frame. It is the median whenever the median is usable.

    Returns:
        (dx, dy) in pixels of the given images, or None when the frames share no unclipped
        quantile (or their bitmaps carry no structure), so nothing can be measured.
    """
    ref_u8, mov_u8 = _to_u8(ref_gray), _to_u8(mov_gray)
    quantile = _shared_quantile(ref_u8, mov_u8)
    if quantile is None:
        return None
    h, w = ref_u8.shape
    # As many pyramid levels as keep the coarsest level meaningful (_MIN_MTB_SIDE pixels);
    # each level searches one pixel around the doubled estimate of the level above, so the
    # range is 2 ** (levels + 1) - 1 pixels.
    levels = int(np.clip(math.floor(math.log2(min(h, w) / _MIN_MTB_SIDE)), 0, _MTB_MAX_LEVELS))
    refs, movs = [ref_u8], [mov_u8]
    for _ in range(levels):
        half = (max(1, refs[-1].shape[1] // 2), max(1, refs[-1].shape[0] // 2))
        refs.append(cv2.resize(refs[-1], half, interpolation=cv2.INTER_AREA))
        movs.append(cv2.resize(movs[-1], half, interpolation=cv2.INTER_AREA))

    sx = sy = 0
    for ref_level, mov_level in zip(reversed(refs), reversed(movs)):
        ref_tb, ref_eb = _bitmaps(ref_level, quantile)
        mov_tb, mov_eb = _bitmaps(mov_level, quantile)
        sx, sy = 2 * sx, 2 * sy
        # Ties go to the smallest step, then to a fixed order: the result is reproducible.
        steps = [(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        costs = [
            (_xor_count(ref_tb, ref_eb, mov_tb, mov_eb, sx + dx, sy + dy), dx * dx + dy * dy)
            for dx, dy in steps
        ]
        dx, dy = steps[min(range(len(steps)), key=costs.__getitem__)]
        sx, sy = sx + dx, sy + dy
    if ref_eb.mean() < _MTB_MIN_SIDE or mov_eb.mean() < _MTB_MIN_SIDE:
        return None
    margin = max(abs(sx), abs(sy)) + 2
    if min(h, w) <= 2 * margin + 4:
        return float(sx), float(sy)

    def cost(dx: int, dy: int) -> int:
        # XOR count of the reference against the moving bitmap shifted by (dx, dy), over one
        # fixed interior window so that every candidate is counted over the same pixels.
        r = (slice(margin, h - margin), slice(margin, w - margin))
        m = (slice(margin - dy, h - margin - dy), slice(margin - dx, w - margin - dx))
        return int(np.count_nonzero((ref_tb[r] ^ mov_tb[m]) & ref_eb[r] & mov_eb[m]))

    centre = cost(sx, sy)
    return (
        sx + _v_fit(cost(sx - 1, sy), centre, cost(sx + 1, sy)),
        sy + _v_fit(cost(sx, sy - 1), centre, cost(sx, sy + 1)),
    )


def _shared_quantile(ref_u8: np.ndarray, mov_u8: np.ndarray) -> float | None:
    """The quantile nearest the median that lies clear of clipping in both frames, or None."""
    lo, hi = 0.0, 1.0
    for image in (ref_u8, mov_u8):
        hist = np.bincount(image.ravel(), minlength=256) / image.size
        lo = max(lo, hist[: _CLIP_LEVELS + 1].sum())  # crushed to black
        hi = min(hi, 1 - hist[255 - _CLIP_LEVELS :].sum())  # clipped to white
    if hi - lo < _MTB_MIN_RANGE:
        return None
    # Keep a quarter of the shared range away from its ends: near them the contour runs
    # through pixels that are almost clipped and noisy.
    quarter = (hi - lo) / 4
    return float(np.clip(0.5, lo + quarter, hi - quarter))


def _bitmaps(image: np.ndarray, quantile: float) -> tuple[np.ndarray, np.ndarray]:
    """Threshold bitmap at the given quantile and the mask of pixels clear of the threshold."""
    cdf = np.cumsum(np.bincount(image.ravel(), minlength=256))
    threshold = int(np.searchsorted(cdf, quantile * image.size))
    signed = image.astype(np.int16)
    return signed > threshold, np.abs(signed - threshold) > _MTB_EXCLUDE


def _xor_count(
    ref_tb: np.ndarray, ref_eb: np.ndarray, mov_tb: np.ndarray, mov_eb: np.ndarray, dx: int, dy: int
) -> int:
    """Disagreeing usable pixels of the reference and the moving bitmaps shifted by (dx, dy)."""
    h, w = ref_tb.shape
    if abs(dx) >= w or abs(dy) >= h:
        return ref_tb.size  # no overlap: as bad as it gets
    r = (slice(max(0, dy), h + min(0, dy)), slice(max(0, dx), w + min(0, dx)))
    m = (slice(max(0, -dy), h + min(0, -dy)), slice(max(0, -dx), w + min(0, -dx)))
    return int(np.count_nonzero((ref_tb[r] ^ mov_tb[m]) & ref_eb[r] & mov_eb[m]))


def _v_fit(before: float, at: float, after: float) -> float:
    """Sub-sample offset of the minimum of a V-shaped cost (XOR counts grow like |offset|)."""
    rise = max(before, after) - at
    if rise <= 0:
        return 0.0
    return float(np.clip((before - after) / (2 * rise), -0.5, 0.5))


def _valid(image: np.ndarray, gray: np.ndarray) -> np.ndarray:
    """Pixels with usable structure: neither crushed to black nor clipped in any channel."""
    brightest = image.max(axis=2) if image.ndim == 3 else image
    valid = ((gray > _DARK) & (brightest < _BRIGHT)).astype(np.uint8)
    # ECC smooths the images before comparing; widen the excluded areas by as much so that
    # clipping contours do not leak into the kept pixels.
    return cv2.erode(valid, np.ones((5, 5), np.uint8)).astype(bool)


def _warp_mask(
    mask: np.ndarray, matrix: np.ndarray, size: tuple[int, int], outside: int = 1
) -> np.ndarray:
    """A mask moved by ``matrix`` (source to destination pixel coordinates).

    Args:
        mask: bool or uint8 mask.
        matrix: 3x3 homography from source to destination pixel coordinates.
        size: (width, height) of the destination.
        outside: value given to destination pixels that come from outside the source.

    Returns:
        The warped mask, uint8, with the values of ``mask``.
    """
    return cv2.warpPerspective(
        mask.astype(np.uint8), matrix, size, flags=cv2.INTER_NEAREST, borderValue=outside
    )


def _rank_normalise(gray: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Replace each level by its mid-quantile among masked pixels: tone-curve invariant."""
    levels = np.clip(gray * (_RANK_LEVELS - 1) + 0.5, 0, _RANK_LEVELS - 1).astype(np.int32)
    hist = np.bincount(levels[mask], minlength=_RANK_LEVELS).astype(np.float64)
    cdf = np.cumsum(hist)
    lut = ((cdf - hist / 2) / max(cdf[-1], 1)).astype(np.float32)
    return lut[levels]


def _pyramid(image: np.ndarray, levels: int, is_mask: bool = False) -> list[np.ndarray]:
    """Finest first; halving with INTER_AREA keeps the pixel-centre grid of _scaling."""
    out = [image.astype(np.uint8) * 255 if is_mask else image]
    for _ in range(levels - 1):
        prev = out[-1]
        size = (max(1, prev.shape[1] // 2), max(1, prev.shape[0] // 2))
        small = cv2.resize(prev, size, interpolation=cv2.INTER_AREA)
        # A coarse pixel mixing valid and clipped content still has structure; keep it when
        # most of it is valid (the erosion in _valid already keeps clipping edges out).
        out.append(np.where(small >= 128, 255, 0).astype(np.uint8) if is_mask else small)
    return out


def _ecc_pyramid(
    ref: np.ndarray,
    mov: np.ndarray,
    ref_valid: np.ndarray,
    mov_valid: np.ndarray,
    coarse: np.ndarray,
    model: str,
) -> tuple[np.ndarray, str] | None:
    """Coarse-to-fine ECC from the MTB estimate ``coarse``.

    Args:
        ref: normalised reference, work size.
        mov: normalised moving frame, work size.
        ref_valid: mask of the reference's usable (unclipped) pixels.
        mov_valid: mask of the moving frame's usable pixels.
        coarse: MTB estimate, moving to reference, work pixels.
        model: the requested motion model.

    Returns:
        The moving-to-reference matrix in work pixels and the model it was fitted with, or
        None when ECC failed.
    """
    h, w = ref.shape
    levels = 1
    while min(h, w) >> levels >= _MIN_LEVEL_SIDE:
        levels += 1
    refs, movs = _pyramid(ref, levels), _pyramid(mov, levels)
    ref_masks, mov_masks = _pyramid(ref_valid, levels, True), _pyramid(mov_valid, levels, True)

    # A homography's perspective terms are weakly constrained when clipping masks out much of
    # the frame, and on the coarsest levels they drift; the rigid fit is solved first, on
    # every level, and the homography refines it on the two finest (one pass did not always
    # converge from the rigid start).
    base = "euclidean" if model == "homography" else model
    steps = [(level, base) for level in reversed(range(levels))]
    if model == "homography":
        steps += [(1, "homography"), (0, "homography")] if levels > 1 else [(0, "homography")]

    # ECC estimates the warp from template (reference) to input (moving) coordinates.
    warp = np.linalg.inv(coarse)
    finest: dict[str, tuple[float, np.ndarray]] = {}
    for level, step_model in steps:
        to_level = _scaling(refs[level].shape[1] / w, refs[level].shape[0] / h)
        start = to_level @ warp @ np.linalg.inv(to_level)
        start /= start[2, 2]
        # Local contrast is measured over pixels usable in both frames (and inside both) at
        # the current estimate, so that both frames average over the same neighbourhoods.
        rm, mm = ref_masks[level], mov_masks[level]
        size = (rm.shape[1], rm.shape[0])
        lr = _local_contrast(refs[level], rm & _warp_mask(mm, np.linalg.inv(start), size, 0))
        lm = _local_contrast(movs[level], mm & _warp_mask(rm, start, size, 0))
        # More iterations where they are cheap; at the finest level ECC starts close already.
        iterations = _ECC_ITERATIONS_FINEST if level == 0 else _ECC_ITERATIONS_COARSE
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, iterations, _ECC_EPS)
        matrix = (start if step_model == "homography" else start[:2]).astype(np.float32)
        motion_type = _ECC_MOTION[step_model]
        try:
            rho, matrix = _find_ecc(lr, lm, rm, mm, matrix, motion_type, criteria)
        except cv2.error:
            # The masks can leave too few pixels for a stable solution (NaN) at coarse levels,
            # where clipping covers much of the frame; unmasked ECC on normalised images is
            # less accurate but still sound, and the finer levels correct it with masks.
            try:
                # cv2's stubs want a mask array once gaussFiltSize is given, but the binding
                # takes None for "no mask" (noArray()) as for any optional InputArray.
                rho, matrix = cv2.findTransformECC(  # type: ignore[call-overload]
                    lr, lm, matrix, motion_type, criteria, None, _ECC_BLUR
                )
            except cv2.error:
                return None
        if not np.isfinite(matrix).all() or not rho >= _MIN_CORRELATION:
            return None
        warp = np.linalg.inv(to_level) @ _as3x3(matrix) @ to_level
        if level == 0:
            finest[step_model] = (rho, warp)

    if model == "homography":
        # Keep the homography only if it explains the frames clearly better than the rigid
        # fit: otherwise its extra freedom fits exposure differences (vignetting, local tone)
        # instead of geometry, which shows as errors of a pixel or so at the corners.
        rho_h, warp_h = finest["homography"]
        rho_e, warp_e = finest["euclidean"]
        if 1 - rho_h <= _HOMOGRAPHY_GAIN * (1 - rho_e):
            return np.linalg.inv(warp_h), "homography"
        return np.linalg.inv(warp_e), "euclidean"
    return np.linalg.inv(warp), model


def _local_contrast(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Subtract the local mean and divide by the local spread, over valid pixels only.

    ECC's correlation coefficient is global, so slowly varying photometric differences between
    exposures (vignetting, a tone curve that rank normalisation matches only on average) bias
    the fitted warp; normalising contrast locally leaves just the structure to be matched.
    """
    weight = (mask > 0).astype(np.float32)

    def blur(x: np.ndarray) -> np.ndarray:
        # Zero padding, not reflection: the frames' edges lie at different scene positions,
        # and mirrored content would make the same scene point's neighbourhood differ.
        return cv2.GaussianBlur(x, (0, 0), _CONTRAST_SIGMA, borderType=cv2.BORDER_CONSTANT)

    total = blur(weight) + 1e-6
    mean = blur(image * weight) / total
    detail = image - mean
    spread = blur(detail * detail * weight) / total
    # Outside the mask the frames disagree; a neutral 0 there keeps ECC's own smoothing from
    # carrying that disagreement into the pixels it compares.
    return (weight * detail / np.sqrt(spread + _CONTRAST_FLOOR)).astype(np.float32)


def _find_ecc(
    ref: np.ndarray,
    mov: np.ndarray,
    ref_mask: np.ndarray,
    mov_mask: np.ndarray,
    matrix: np.ndarray,
    motion_type: int,
    criteria: tuple[int, int, float],
) -> tuple[float, np.ndarray]:
    """ECC over pixels valid in both frames, with whichever masked API this OpenCV has."""
    if hasattr(cv2, "findTransformECCWithMask"):  # OpenCV >= 4.12 masks both images
        return cv2.findTransformECCWithMask(
            ref, mov, ref_mask, mov_mask, matrix, motion_type, criteria, _ECC_BLUR
        )
    # Older OpenCV masks only the input; fold the reference's mask into it at the current warp.
    h, w = mov.shape
    ref_in_mov = cv2.warpPerspective(
        ref_mask, _as3x3(matrix), (w, h), flags=cv2.INTER_NEAREST, borderValue=0
    )
    mask = mov_mask & ref_in_mov
    return cv2.findTransformECC(ref, mov, matrix, motion_type, criteria, mask, _ECC_BLUR)


def _as3x3(matrix: np.ndarray) -> np.ndarray:
    full = np.eye(3)
    full[: matrix.shape[0]] = matrix
    return full


def _plausible(matrix: np.ndarray, coarse: np.ndarray, size: tuple[int, int]) -> bool:
    """Reject ECC results that a hand-held bracket cannot produce (see _MAX_ECC_DEPARTURE)."""
    w, h = size
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64)
    if np.any(np.c_[corners, np.ones(4)] @ matrix[2] <= 0):
        return False
    departure = np.abs(_apply(matrix, corners) - _apply(coarse, corners)).max()
    motion = Motion.from_matrix(matrix, size, "homography")
    return bool(
        departure <= _MAX_ECC_DEPARTURE * max(w, h) and abs(motion.scale - 1) <= _MAX_SCALE_CHANGE
    )


def _common_rectangle(
    matrices: Sequence[np.ndarray], size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Largest axis-aligned pixel rectangle inside every warped frame, as (x, y, w, h).

    A reference pixel is valid for a frame when its source position lies within the frame's
    pixel centres, so bilinear sampling never reaches the black border. Each warped frame is a
    convex quadrilateral (a homography maps lines to lines), so the valid area is convex and
    each column's valid pixels form one run [top(x), bottom(x)], with top convex and bottom
    concave in x. Hence a rectangle spanning columns x0..x1 can reach exactly from
    max(top(x0), top(x1)) to min(bottom(x0), bottom(x1)), and only the pair (x0, x1) needs
    searching.
    """
    w, h = size
    xs = np.arange(w, dtype=np.float64)
    top = np.zeros(w)
    bottom = np.full(w, h - 1.0)
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64)
    for matrix in matrices:
        quad = _apply(matrix, corners)
        centre = quad.mean(axis=0)
        for p, q in zip(quad, np.roll(quad, -1, axis=0)):
            # Inward normal n of edge p->q: n . (X - p) >= 0 inside.
            n = np.array([q[1] - p[1], p[0] - q[0]])
            if n @ (centre - p) < 0:
                n = -n
            if abs(n[1]) < 1e-12:
                outside = n[0] * (xs - p[0]) < -1e-9
                top[outside] = np.inf
                continue
            bound = p[1] - n[0] * (xs - p[0]) / n[1]
            if n[1] > 0:
                top = np.maximum(top, bound)
            else:
                bottom = np.minimum(bottom, bound)
    # Round inward; the tolerance keeps exact integer bounds from being lost to rounding noise.
    top = np.ceil(top - 1e-6)
    bottom = np.floor(bottom + 1e-6)
    cols = np.flatnonzero(bottom >= top)
    if cols.size == 0:
        return 0, 0, 0, 0

    def best(x0s: np.ndarray, x1s: np.ndarray) -> tuple[float, int, int]:
        a, b = np.meshgrid(x0s, x1s, indexing="ij")
        heights = np.minimum(bottom[a], bottom[b]) - np.maximum(top[a], top[b]) + 1
        area = np.where((b >= a) & (heights > 0), (b - a + 1) * heights, 0)
        i, j = np.unravel_index(np.argmax(area), area.shape)
        return float(area[i, j]), int(a[i, j]), int(b[i, j])

    # Coarse grid over column pairs, then every pair near the best one.
    lo, hi = int(cols[0]), int(cols[-1])
    step = max(1, (hi - lo) // 256)
    grid = np.unique(np.r_[np.arange(lo, hi + 1, step), hi])
    _, x0, x1 = best(grid, grid)
    near0 = np.arange(max(lo, x0 - step), min(hi, x0 + step) + 1)
    near1 = np.arange(max(lo, x1 - step), min(hi, x1 + step) + 1)
    area, x0, x1 = best(near0, near1)
    if area <= 0:
        return 0, 0, 0, 0
    y0 = int(max(top[x0], top[x1]))
    y1 = int(min(bottom[x0], bottom[x1]))
    return x0, y0, x1 - x0 + 1, y1 - y0 + 1
