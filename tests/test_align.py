"""Registration of differently exposed frames (textmef.align).

Accuracy is measured as the largest distance, in full-size pixels, between where the
estimated and the true transform put the four image corners: the corners are where a wrong
rotation or perspective shows most.
"""

import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from textmef import align, io
from textmef.align import AlignResult, Motion, align_frames, estimate_motion, misalignment_px
from textmef.errors import InputError

BRACKETS = Path(__file__).resolve().parents[2] / "shared" / "data" / "brackets"
W, H = 400, 300
# Corner error allowed for a recovered motion, full-size pixels.
TOLERANCE = 0.5


# ---------------------------------------------------------------------------------------------
# A synthetic scene rendered analytically, so a moved frame has an exact ground truth (no
# interpolation of an already sampled image) and no border.


def _scene(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Linear radiance of a scene with smooth waves, sharp rectangles and a bright blob."""
    v = 0.3 + 0.12 * np.sin(x / 9 + 0.3) * np.cos(y / 13) + 0.08 * np.sin((x + 2 * y) / 5)
    v += 0.05 * np.cos(x / 3.1 - y / 4.3)
    r = np.hypot(x - 120, y - 90)
    v += 0.2 * np.sin(r / 6) * np.exp(-r / 60)
    for x0, y0, x1, y1, amplitude in [
        (40, 30, 90, 80, 0.25),
        (200, 150, 300, 200, -0.2),
        (310, 40, 370, 120, 0.3),
        (60, 190, 150, 270, -0.15),
        (250, 60, 280, 250, 0.18),
    ]:
        # Edges about a pixel wide: sharp, but not aliased.
        inside = 1 / (1 + np.exp(-2 * (x - x0))) / (1 + np.exp(2 * (x - x1)))
        inside = inside / (1 + np.exp(-2 * (y - y0))) / (1 + np.exp(2 * (y - y1)))
        v = v + amplitude * inside
    v += 0.5 * np.exp(-((x - 330) ** 2 + (y - 230) ** 2) / (2 * 25**2))  # clips when bright
    rgb = np.stack([v, 0.9 * v + 0.05 * np.sin(x / 7), 0.8 * v + 0.1 * np.cos(y / 11)], -1)
    return np.clip(rgb, 0, 1)


def render(matrix: np.ndarray, gain: float, size: tuple[int, int] = (W, H)) -> np.ndarray:
    """A frame whose pixel p shows the scene at ``matrix @ p`` (moving to reference coords).

    Exposure: linear gain, clipping, a 1/2.2 tone curve and 8-bit quantisation, as a camera.
    """
    w, h = size
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    p = np.stack([xs, ys, np.ones_like(xs)], -1) @ np.asarray(matrix, np.float64).T
    radiance = _scene(p[..., 0] / p[..., 2], p[..., 1] / p[..., 2])
    encoded = np.clip(gain * radiance, 0, 1) ** (1 / 2.2)
    return (np.round(encoded * 255) / 255).astype(np.float32)


UNDER, OVER = 0.3, 2.5  # gains of the dark and the bright frame


def translation(dx: float, dy: float) -> np.ndarray:
    return np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]], dtype=np.float64)


def rotation(degrees: float, size: tuple[int, int] = (W, H)) -> np.ndarray:
    """Rotation about the image centre."""
    cx, cy = (size[0] - 1) / 2, (size[1] - 1) / 2
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    about = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return translation(cx, cy) @ about @ translation(-cx, -cy)


SMALL_HOMOGRAPHY = np.array([[1.01, 0.008, -3.0], [-0.006, 0.995, 2.2], [2e-5, -1.5e-5, 1]])


def corner_error(estimated: np.ndarray, true: np.ndarray, size: tuple[int, int] = (W, H)):
    w, h = size
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1]], float).T
    a, b = estimated @ corners, true @ corners
    return float(np.hypot(*(a[:2] / a[2] - b[:2] / b[2])).max())


@pytest.fixture(scope="module")
def under():
    return render(np.eye(3), UNDER)


@pytest.fixture(scope="module")
def over():
    return render(np.eye(3), OVER)


def test_synthetic_frames_really_differ_in_exposure(under, over):
    # Guards the premise of the tests below: a gain of 8x, with clipped highlights.
    assert over.mean() > 2 * under.mean()
    assert 0.1 < (over.max(axis=2) >= 1).mean() < 0.5


# ---------------------------------------------------------------------------------------------
# estimate_motion


@pytest.mark.parametrize(
    "name, true",
    [
        ("subpixel translation", translation(7.3, -4.6)),
        ("rotation about the centre", rotation(1.5)),
        ("small homography", SMALL_HOMOGRAPHY),
    ],
)
def test_estimate_motion_recovers_the_motion_of_an_over_exposed_frame(under, name, true):
    moving = render(true, OVER)

    motion = estimate_motion(under, moving)

    assert motion.converged
    assert corner_error(motion.matrix, true) <= TOLERANCE, name


@pytest.mark.parametrize(
    "model, true",
    [("translation", translation(-5.4, 3.7)), ("euclidean", rotation(-1.2) @ translation(2, 1))],
)
def test_estimate_motion_with_a_simpler_model_recovers_motions_of_that_kind(under, model, true):
    motion = estimate_motion(under, render(true, OVER), model)

    assert motion.converged and motion.model == model
    assert corner_error(motion.matrix, true) <= TOLERANCE


def test_estimate_motion_works_with_the_bright_frame_as_reference(under):
    true = translation(7.3, -4.6)
    # The dark frame moves now: reference coordinates of its pixels are true^-1 of the bright.
    motion = estimate_motion(render(true, OVER), under)

    assert corner_error(motion.matrix, np.linalg.inv(true)) <= TOLERANCE


def test_frames_in_the_same_position_give_near_identity(under, over):
    motion = estimate_motion(under, over)

    assert motion.converged
    assert corner_error(motion.matrix, np.eye(3)) <= 0.1
    assert misalignment_px(under, over) < 0.3


def test_motion_summary_describes_shift_rotation_and_scale(under):
    shifted = estimate_motion(under, render(translation(7.3, -4.6), OVER))
    rotated = estimate_motion(under, render(rotation(1.5), OVER))

    assert shifted.shift == pytest.approx((7.3, -4.6), abs=0.2)
    assert abs(shifted.rotation_deg) < 0.05 and shifted.scale == pytest.approx(1, abs=1e-3)
    assert rotated.rotation_deg == pytest.approx(1.5, abs=0.05)
    assert rotated.shift == pytest.approx((0, 0), abs=0.2)
    assert shifted.matrix.shape == (3, 3) and shifted.matrix.dtype == np.float64
    assert re.fullmatch(
        r"shift \+7\.\d, -4\.\d px, rotation -?0\.0\d°, scale 1\.000 \(euclidean\)",
        shifted.describe(),
    )


def test_describe_has_the_documented_format():
    motion = Motion.from_matrix(
        translation(3.2, -1.5) @ rotation(0.41, (101, 101)), (101, 101), "homography"
    )

    assert motion.describe() == "shift +3.2, -1.5 px, rotation 0.41°, scale 1.000 (homography)"


def test_homography_is_reported_as_euclidean_when_it_fits_no_better(under):
    # The extra freedom of a homography would fit noise: a rigid motion is kept instead.
    motion = estimate_motion(under, render(rotation(1.5), OVER), "homography")

    assert motion.model == "euclidean"
    assert np.allclose(motion.matrix[2], [0, 0, 1])


def test_a_perspective_motion_is_reported_as_a_homography(under):
    motion = estimate_motion(under, render(SMALL_HOMOGRAPHY, OVER), "homography")

    assert motion.model == "homography"
    assert not np.allclose(motion.matrix[2], [0, 0, 1])


def test_unrelated_frames_fall_back_to_an_unconverged_translation(under):
    rng = np.random.default_rng(3)
    noise = cv2.GaussianBlur(rng.random((H, W, 3)).astype(np.float32), (0, 0), 3)
    noise = (noise - noise.min()) / (noise.max() - noise.min())

    motion = estimate_motion(under, noise)

    assert not motion.converged and motion.model == "translation"
    assert np.allclose(motion.matrix[:2, :2], np.eye(2))
    assert "did not converge" in motion.describe()


def test_a_fully_clipped_frame_gives_an_unconverged_identity(under):
    white = np.ones_like(under)

    motion = estimate_motion(under, white)

    assert not motion.converged
    assert np.allclose(motion.matrix, np.eye(3))
    assert misalignment_px(under, white) == 0.0


def test_estimate_motion_rejects_unknown_models_and_size_mismatch(under, over):
    with pytest.raises(InputError, match="unknown motion model 'affine'"):
        estimate_motion(under, over, "affine")
    with pytest.raises(InputError, match="same size"):
        estimate_motion(under, over[:-1])


def test_opencv_without_the_two_mask_ecc_gives_the_same_accuracy(under, monkeypatch):
    # findTransformECCWithMask is new in OpenCV 4.12; older versions take one mask only.
    monkeypatch.delattr(cv2, "findTransformECCWithMask", raising=False)
    true = rotation(1.5) @ translation(-2.4, 3.1)

    motion = estimate_motion(under, render(true, OVER))

    assert motion.converged
    assert corner_error(motion.matrix, true) <= TOLERANCE


def test_estimation_is_deterministic(under):
    moving = render(SMALL_HOMOGRAPHY, OVER)

    first, second = estimate_motion(under, moving), estimate_motion(under, moving)

    assert np.array_equal(first.matrix, second.matrix)


def _enlarged(frame: np.ndarray, size: tuple[int, int], motion: np.ndarray) -> np.ndarray:
    """The frame upscaled to ``size``, then moved: pixel p shows the upscaled frame at motion p.

    Cheaper than rendering the scene at that size, and just as exact a ground truth.
    """
    large = cv2.resize(frame, size, interpolation=cv2.INTER_CUBIC).clip(0, 1)
    return cv2.warpPerspective(large, motion, size, flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP)


def test_large_frames_are_estimated_on_a_small_copy_and_scaled_back(under, over):
    # 1600x1200 is worked on at 1024x768; the matrix must come back in full-size pixels.
    size = (1600, 1200)
    true = translation(13.6, -9.2) @ rotation(0.4, size)

    motion = estimate_motion(_enlarged(under, size, np.eye(3)), _enlarged(over, size, true))

    assert motion.converged
    assert corner_error(motion.matrix, true, size) <= 2 * TOLERANCE


# ---------------------------------------------------------------------------------------------
# A real bracket, moved by a known amount


def _real_pair(sequence: str) -> tuple[np.ndarray, np.ndarray]:
    folder = BRACKETS / "hdrps" / sequence
    if not folder.is_dir():
        pytest.skip(f"real exposure brackets not available at {folder} (see shared/data/README)")
    frames = [io.read_image(p).pixels for p in sorted(folder.glob("*.jpg"))]
    frames.sort(key=lambda f: float(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).mean()))
    return frames[0], frames[-1]


@pytest.mark.parametrize("sequence", ["cemetery-tree-1", "delicate-flowers"])
def test_real_darkest_and_brightest_frames_are_registered(sequence):
    dark, bright = _real_pair(sequence)
    h, w = dark.shape[:2]
    size = (w, h)
    true = translation(4.6, -3.2) @ rotation(0.8, size)
    # moving(p) = bright(true @ p), as a hand-held shot taken after the dark one would be.
    moving = cv2.warpAffine(bright, true[:2], size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)

    untouched = estimate_motion(dark, bright)
    motion = estimate_motion(dark, moving)

    # The bracket was shot from a tripod: its own frames are in register.
    assert corner_error(untouched.matrix, np.eye(3), size) <= TOLERANCE
    assert motion.converged
    assert corner_error(motion.matrix, true, size) <= TOLERANCE
    assert misalignment_px(dark, moving) > 1


# ---------------------------------------------------------------------------------------------
# align_frames


def test_align_frames_crops_to_the_common_area_and_keeps_the_reference(under):
    moving = render(translation(7.3, -4.6), OVER)

    result = align_frames([under, moving])

    assert isinstance(result, AlignResult) and result.reference_index == 0
    x, y, cw, ch = result.crop
    assert [f.shape for f in result.frames] == [(ch, cw, 3)] * 2
    assert all(f.dtype == np.float32 for f in result.frames)
    # The moved frame covers reference x from 7.3 on and y up to H - 1 - 4.6.
    assert 0 <= x and 0 <= y and x + cw <= W and y + ch <= H
    assert x == pytest.approx(7.3, abs=1.0) and y == 0
    assert W - cw == pytest.approx(7.3, abs=1.0) and H - ch == pytest.approx(4.6, abs=1.0)
    assert np.array_equal(result.frames[0], under[y : y + ch, x : x + cw])
    assert np.allclose(result.motions[0].matrix, np.eye(3))


def test_aligned_frame_matches_the_scene_at_the_reference_position(under, over):
    moving = render(translation(7.3, -4.6), OVER)

    result = align_frames([under, moving])

    x, y, cw, ch = result.crop
    target = over[y : y + ch, x : x + cw]
    before = np.abs(moving[y : y + ch, x : x + cw] - target).mean()
    after = np.abs(result.frames[1] - target).mean()
    assert after < before / 5
    assert after < 0.01
    # Nothing of the black outside of the warped frame made it into the crop: the crop's
    # outermost rows and columns match as well as the rest.
    error = np.abs(result.frames[1] - target).max(axis=2)
    assert max(error[[0, -1]].max(), error[:, [0, -1]].max()) < 0.1


def test_align_frames_aligns_three_frames_to_the_chosen_reference(under):
    middle_motion, bright_motion = translation(-3.1, 2.4), rotation(-1.0) @ translation(4, 0)
    frames = [render(middle_motion, 1.0), under, render(bright_motion, OVER)]

    result = align_frames(frames, reference_index=1)

    assert result.reference_index == 1
    assert len(result.frames) == 3 and len({f.shape for f in result.frames}) == 1
    assert np.allclose(result.motions[1].matrix, np.eye(3))
    assert corner_error(result.motions[0].matrix, middle_motion) <= TOLERANCE
    assert corner_error(result.motions[2].matrix, bright_motion) <= TOLERANCE
    x, y, cw, ch = result.crop
    assert np.array_equal(result.frames[1], under[y : y + ch, x : x + cw])


def test_a_failed_direct_estimate_is_retried_through_the_middle_exposure(under, monkeypatch):
    true = translation(5.2, 3.3)
    mid, bright = render(true, 1.0), render(true, OVER)
    real = align.estimate_motion

    def direct_fails(reference, moving, model="homography"):
        if reference is under and moving is bright:
            return Motion.from_matrix(np.eye(3), (W, H), "translation", converged=False)
        return real(reference, moving, model)

    monkeypatch.setattr(align, "estimate_motion", direct_fails)
    result = align_frames([under, mid, bright])

    assert result.motions[2].converged
    assert corner_error(result.motions[2].matrix, true) <= TOLERANCE


@pytest.mark.parametrize(
    "frames, message",
    [
        (lambda f: [f], "at least 2 frames"),
        (lambda f: [], "at least 2 frames"),
        (lambda f: [f, f[:, :-2]], "same size"),
    ],
)
def test_align_frames_rejects_bad_input(under, frames, message):
    with pytest.raises(InputError, match=message):
        align_frames(frames(under))


def test_align_frames_rejects_a_bad_reference_index_or_model(under, over):
    with pytest.raises(InputError, match="reference index 2"):
        align_frames([under, over], reference_index=2)
    with pytest.raises(InputError, match="unknown motion model"):
        align_frames([under, over], model="affine")


def test_align_frames_rejects_motion_that_leaves_under_half_the_frame(under, over, monkeypatch):
    # A shift of 40% in both directions leaves 36% of the frame common; no real estimate
    # reaches that far, so the motion is injected.
    huge = Motion.from_matrix(translation(0.4 * W, 0.4 * H), (W, H), "translation")
    monkeypatch.setattr(align, "estimate_motion", lambda *args, **kwargs: huge)

    with pytest.raises(InputError, match="overlap too little.*36%"):
        align_frames([under, over])


def _largest_rectangle_area(mask: np.ndarray) -> int:
    """Brute force: every pair of rows, then the longest run of fully valid columns."""
    h, _ = mask.shape
    best = 0
    for top in range(h):
        columns = np.ones(mask.shape[1], bool)
        for bottom in range(top, h):
            columns &= mask[bottom]
            run = longest = 0
            for ok in columns:
                run = run + 1 if ok else 0
                longest = max(longest, run)
            best = max(best, longest * (bottom - top + 1))
    return best


def test_common_rectangle_is_the_largest_one_inside_every_warped_frame():
    rng = np.random.default_rng(0)
    w, h = 40, 30
    xs, ys = np.meshgrid(np.arange(w, dtype=float), np.arange(h, dtype=float))
    points = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    for _ in range(4):
        matrices = [np.eye(3)]
        for _ in range(2):
            m = translation(*rng.uniform(-4, 4, 2)) @ rotation(rng.uniform(-4, 4), (w, h))
            m[2, :2] = rng.uniform(-5e-4, 5e-4, 2)
            matrices.append(m)
        # A reference pixel is valid when its source position lies within the frame.
        valid = np.ones(xs.size, bool)
        for m in matrices:
            src = np.linalg.inv(m) @ points
            sx, sy = src[0] / src[2], src[1] / src[2]
            valid &= (sx >= -1e-9) & (sx <= w - 1 + 1e-9) & (sy >= -1e-9) & (sy <= h - 1 + 1e-9)
        valid = valid.reshape(h, w)

        x, y, cw, ch = align._common_rectangle(matrices, (w, h))

        assert valid[y : y + ch, x : x + cw].all()
        assert cw * ch == _largest_rectangle_area(valid)


# ---------------------------------------------------------------------------------------------
# misalignment_px


def test_misalignment_px_flags_a_5_px_shift_and_not_an_aligned_pair(under, over):
    shifted = render(translation(3.0, 4.0), OVER)

    assert misalignment_px(under, shifted) == pytest.approx(5.0, abs=1.0)
    assert misalignment_px(under, shifted) > 1
    assert misalignment_px(under, over) < 1


def test_misalignment_px_reports_full_size_pixels_for_large_frames(under, over):
    size = (2000, 1500)  # checked on a 512 px copy: the shift must be scaled back
    true = translation(20.0, -15.0)

    measured = misalignment_px(_enlarged(under, size, np.eye(3)), _enlarged(over, size, true))

    assert measured == pytest.approx(25.0, abs=4.0)
