"""Metrics against reference values: MEFB's MEF-SSIM, scikit-image's SSIM and PSNR.

The MEF-SSIM fixtures (MEFB-definition values for crops fused by OpenCV's MergeMertens) live
outside the repository in ../shared/reference/metric-fixtures; tests that need them skip
when it is absent. Everything else runs on synthetic images.
"""

from __future__ import annotations

import importlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from textmef.io import read_image
from textmef.metrics import MEFSSIM, PSNR, SSIM, mef_ssim, psnr, ssim

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "metric-fixtures"
CASES = ["hdrps_507", "merianos_knossos1", "deepfuse_seq-00", "misc_igloo"]

# The module, not the function of the same name that textmef.metrics re-exports.
mef_ssim_module = importlib.import_module("textmef.metrics.mef_ssim")


def _fixture(name: str) -> torch.Tensor:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"MEFB metric fixture {path} not found (shared reference data absent)")
    return torch.from_numpy(read_image(path).pixels).permute(2, 0, 1)


def _case(case: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(under, over, fused) of a fixture case, each (3, H, W) float32 in [0, 1]."""
    return tuple(_fixture(f"{case}_{part}.png") for part in "ABF")


def _expected(case: str, metric: str) -> float:
    values = FIXTURES / "values.json"
    if not values.is_file():
        pytest.skip(f"MEFB metric values {values} not found (shared reference data absent)")
    return json.loads(values.read_text())["cases"][case][metric]


def _synthetic_pair() -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) (67, 91, 3) float64 images, rebuilt bit-for-bit in any numpy.

    The noise is an integer LCG rather than a numpy Generator, whose streams numpy does not
    promise to keep across versions; the scikit-image reference values below came from it.
    """
    h, w = 67, 91
    i, j = np.meshgrid(
        np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij"
    )
    clean = np.stack(
        [
            0.5 + 0.4 * np.sin(j / 7.0) * np.cos(i / 5.0),
            0.5 + 0.3 * np.cos((i + j) / 9.0),
            0.2 + 0.6 * (i / h),
        ],
        axis=-1,
    )
    idx = np.arange(h * w * 3, dtype=np.uint64).reshape(h, w, 3)
    lcg = (idx * np.uint64(6364136223846793005) + np.uint64(1442695040888963407)) >> np.uint64(33)
    noise = (lcg % np.uint64(1000)).astype(np.float64) / 1000.0 - 0.5
    return np.clip(clean + 0.2 * noise, 0.0, 1.0), clean


def _chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def _exposures(k: int, size: tuple[int, int] = (53, 61), seed: int = 0) -> torch.Tensor:
    """K synthetic exposures of one textured scene, (K, 3, H, W) float32, some clipped."""
    rng = np.random.default_rng(seed)
    h, w = size
    blocks = np.kron(rng.random((h // 6 + 1, w // 6 + 1, 3)), np.ones((6, 6, 1)))[:h, :w]
    scene = 0.6 * blocks + 0.4 * rng.random((h, w, 3))
    gains = np.geomspace(0.25, 3.0, k)
    stack = [np.clip(scene * g + 0.02 * rng.standard_normal(scene.shape), 0, 1) for g in gains]
    return torch.stack([_chw(s.astype(np.float32)) for s in stack])


# --------------------------------------------------------------------------------------
# A literal, patch-by-patch transcription of MEFB's mef_ms_ssim.m / mef_ssim.m (slow; for
# small images only), to check the vectorised implementation for any K.

_EPS = np.finfo(np.float64).eps
_RGB2GRAY = np.array([0.298936021293775, 0.587043074451121, 0.114020904254103])


def _reference_gray(images: torch.Tensor, quantize: bool) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W) gray 0..255, rgb2gray on uint8 or on double."""
    x = np.clip(images.double().numpy() * 255.0, 0, 255)
    if quantize:
        x = np.floor(x + 0.5)
    gray = np.tensordot(_RGB2GRAY, x, axes=([0], [1]))
    return np.floor(gray + 0.5) if quantize else gray


def _reference_single_scale(seq: np.ndarray, fused: np.ndarray) -> float:
    """mef_ssim.m for seq (K, H, W) and fused (H, W), patch by patch."""
    size, n = 11, 121
    ax = np.arange(size) - 5
    window = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * 1.5**2))
    g = (window / window.sum()).ravel()
    patches = sliding_window_view(seq, (size, size), axis=(1, 2))  # K, H', W', 11, 11
    patches = np.moveaxis(patches.reshape(*patches.shape[:3], n), 0, 2)  # H', W', K, 121
    mu = patches.mean(-1)
    ed = np.sqrt(np.maximum(n * ((patches**2).mean(-1) - mu**2), 0)) + 0.001
    total = patches.sum(2)
    numerator = np.linalg.norm(total - total.mean(-1, keepdims=True), axis=-1)
    denominator = np.linalg.norm(patches - mu[..., None], axis=-1).sum(-1)
    ratio = (numerator + _EPS) / (denominator + _EPS)
    ratio[ratio > 1] = 1 - _EPS
    ratio[ratio < 0] = _EPS
    power = np.minimum(np.tan(np.pi / 2 * ratio), 10)
    weights = (ed / size) ** power[..., None] + _EPS
    weights /= weights.sum(-1, keepdims=True)
    r = (weights[..., None] * (patches - mu[..., None]) / ed[..., None]).sum(2)
    norm = np.linalg.norm(r, axis=-1, keepdims=True)
    r = np.where(norm > 0, r / np.where(norm > 0, norm, 1) * ed.max(-1)[..., None], r)
    f = sliding_window_view(fused, (size, size)).reshape(r.shape)
    mu_r, mu_f = (g * r).sum(-1), (g * f).sum(-1)
    var_r = (g * (r - mu_r[..., None]) ** 2).sum(-1)
    var_f = (g * (f - mu_f[..., None]) ** 2).sum(-1)
    cov = (g * (r - mu_r[..., None]) * (f - mu_f[..., None])).sum(-1)
    c = (0.03 * 255) ** 2
    return float(((2 * cov + c) / (var_r + var_f + c)).mean())


def _reference_downsample(x: np.ndarray) -> np.ndarray:
    """imfilter(x, ones(2)/4, 'symmetric', 'same') then x(1:2:end, 1:2:end) on (..., H, W)."""
    pad = [(0, 0)] * (x.ndim - 2) + [(0, 1), (0, 1)]
    p = np.pad(x, pad, mode="symmetric")
    box = 0.25 * (p[..., :-1, :-1] + p[..., 1:, :-1] + p[..., :-1, 1:] + p[..., 1:, 1:])
    return box[..., ::2, ::2]


def _reference_mef_ssim(sources: torch.Tensor, fused: torch.Tensor, quantize: bool = True):
    seq = _reference_gray(sources, quantize)
    f = _reference_gray(fused.unsqueeze(0), quantize)[0]
    weights = np.array([0.0448, 0.2856, 0.3001])
    scores = []
    for level in range(3):
        if level:
            seq, f = _reference_downsample(seq), _reference_downsample(f)
        scores.append(_reference_single_scale(seq, f))
    return float(np.prod(np.array(scores) ** (weights / weights.sum())))


# --------------------------------------------------------------------------------------
# MEF-SSIM


@pytest.mark.parametrize("case", CASES)
def test_mef_ssim_matches_mefb_fixtures(case):
    under, over, fused = _case(case)
    score = mef_ssim(torch.stack([under, over]), fused)
    assert score.dim() == 0 and score.dtype == torch.float64
    assert score.item() == pytest.approx(_expected(case, "MEF_SSIM"), rel=1e-4)


def test_mef_ssim_matches_patchwise_reference_for_three_sources():
    sources = _exposures(3)
    fused = sources.mean(0)
    assert mef_ssim(sources, fused).item() == pytest.approx(
        _reference_mef_ssim(sources, fused), rel=1e-10
    )
    # Without 8-bit rounding the box sums are no longer exact integers; agreement is still
    # far inside any useful tolerance.
    assert mef_ssim(sources, fused, quantize=False).item() == pytest.approx(
        _reference_mef_ssim(sources, fused, quantize=False), rel=1e-8
    )


def test_mef_ssim_band_processing_does_not_change_the_score(monkeypatch):
    sources = _exposures(4, size=(90, 70))
    fused = sources[1]
    whole = mef_ssim(sources, fused).item()
    monkeypatch.setattr(mef_ssim_module, "_BAND_ELEMENTS", 1)  # 16-row bands
    assert mef_ssim(sources, fused).item() == pytest.approx(whole, rel=1e-12)


def test_mef_ssim_of_a_source_against_two_copies_of_itself_is_one():
    image = _exposures(2)[0]
    # Only the 0.001 added to each patch contrast keeps this from being exactly 1.
    assert mef_ssim(torch.stack([image, image]), image).item() == pytest.approx(1.0, abs=1e-6)


def test_mef_ssim_does_not_depend_on_source_order():
    sources = _exposures(3)
    fused = sources.mean(0)
    scores = [
        mef_ssim(sources[list(order)], fused).item() for order in itertools.permutations(range(3))
    ]
    assert scores == pytest.approx([scores[0]] * len(scores), rel=1e-12)


def test_mef_ssim_with_three_fixture_sources():
    under, over, fused = _case("hdrps_507")
    mid = (0.5 * (under + over)).clamp(0, 1)
    score = mef_ssim(torch.stack([under, mid, over]), fused).item()
    assert 0.0 < score <= 1.0


def test_mef_ssim_ranks_mertens_fusion_above_degraded_fusions():
    under, over, fused = _case("misc_igloo")
    sources = torch.stack([under, over])
    blurred = torch.nn.functional.avg_pool2d(
        fused[None], 5, stride=1, padding=2, count_include_pad=False
    )[0]
    grey = torch.full_like(fused, 0.5)
    good = mef_ssim(sources, fused).item()
    assert good > mef_ssim(sources, blurred).item() + 0.02
    assert good > mef_ssim(sources, grey).item() + 0.2


def test_mef_ssim_reads_8bit_values_exactly():
    # float32 read_image output and exact float64 v/255 must map to the same uint8 levels.
    sources = _exposures(2)
    levels = torch.round(sources.double() * 255)
    as_float32 = (levels / 255).float()
    as_float64 = levels / 255
    assert mef_ssim(as_float32, as_float32[0]).item() == mef_ssim(as_float64, as_float64[0]).item()


def test_mef_ssim_accepts_batched_fused_gray_inputs_and_module():
    sources = _exposures(2)
    fused = sources.mean(0)
    score = mef_ssim(sources, fused)
    assert mef_ssim(sources, fused[None]).item() == score.item()
    assert MEFSSIM()(sources, fused).item() == score.item()
    # Gray inputs: the quantised rgb2gray result, given as gray images, scores the same.
    gray = torch.from_numpy(_reference_gray(torch.cat([sources, fused[None]]), True) / 255)
    assert mef_ssim(gray[:2, None], gray[2:]).item() == pytest.approx(score.item(), rel=1e-12)


def test_mef_ssim_rejects_bad_inputs():
    sources = _exposures(2)
    with pytest.raises(ValueError, match="at least 2 sources"):
        mef_ssim(sources[:1], sources[0])
    with pytest.raises(ValueError, match="too small"):
        mef_ssim(sources[..., :40, :], sources[0, :, :40, :])
    with pytest.raises(ValueError, match="fused is"):
        mef_ssim(sources, sources[0, :, :50, :])
    with pytest.raises(ValueError, match="sources must be"):
        mef_ssim(sources[0], sources[0])
    with pytest.raises(TypeError, match="float"):
        mef_ssim((sources * 255).to(torch.uint8), sources[0])


# --------------------------------------------------------------------------------------
# PSNR and SSIM against scikit-image.
#
# Reference values from scikit-image 0.26.0 (numpy 2.4.6), on float64 images (uint8 / 255
# for the fixtures, read with skimage.io.imread; _synthetic_pair() for the noisy pair):
#   structural_similarity(pred, target, gaussian_weights=True, sigma=1.5,
#                         use_sample_covariance=False, data_range=1.0, channel_axis=-1)
#   peak_signal_noise_ratio(target, pred, data_range=1.0)
# Here the fixtures come through read_image as float32, ~1e-8 away from uint8 / 255.
SKIMAGE_REFERENCE = {
    # pair: (SSIM, PSNR)
    "hdrps_507 A vs F": (0.1789352654445964, 6.756863786808722),
    "misc_igloo B vs F": (0.22732372606760434, 6.4056088915570495),
    "synthetic noisy vs clean": (0.5341403026542374, 24.77100862661329),
}


def _skimage_pair(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "synthetic noisy vs clean":
        noisy, clean = _synthetic_pair()
        return _chw(noisy), _chw(clean)
    case, pair = name.split(" ", 1)
    pred, target = pair.split(" vs ")
    return _fixture(f"{case}_{pred}.png"), _fixture(f"{case}_{target}.png")


@pytest.mark.parametrize("name", list(SKIMAGE_REFERENCE))
def test_ssim_matches_scikit_image(name):
    pred, target = _skimage_pair(name)
    expected = SKIMAGE_REFERENCE[name][0]
    assert ssim(pred, target).item() == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert ssim(pred[None], target[None], reduction="none").item() == pytest.approx(
        expected, rel=1e-4, abs=1e-5
    )


@pytest.mark.parametrize("name", list(SKIMAGE_REFERENCE))
def test_psnr_matches_scikit_image(name):
    pred, target = _skimage_pair(name)
    expected = SKIMAGE_REFERENCE[name][1]
    assert psnr(pred, target).item() == pytest.approx(expected, rel=1e-4, abs=1e-5)


# Gray: each channel of the synthetic pair alone, scikit-image 0.26.0 without channel_axis.
SKIMAGE_GRAY_REFERENCE = {
    # channel: (SSIM, PSNR)
    0: (0.7439498418464416, 24.769525792101557),
    1: (0.57938135438273, 24.77663915658852),
    2: (0.27908971173354036, 24.766866808306396),
}


@pytest.mark.parametrize("channel", list(SKIMAGE_GRAY_REFERENCE))
def test_ssim_and_psnr_match_scikit_image_on_gray_images(channel):
    noisy, clean = _synthetic_pair()
    pred = torch.from_numpy(np.ascontiguousarray(noisy[..., channel]))[None]
    target = torch.from_numpy(np.ascontiguousarray(clean[..., channel]))[None]
    expected_ssim, expected_psnr = SKIMAGE_GRAY_REFERENCE[channel]
    assert ssim(pred, target).item() == pytest.approx(expected_ssim, rel=1e-4, abs=1e-5)
    assert psnr(pred, target).item() == pytest.approx(expected_psnr, rel=1e-4, abs=1e-5)


def test_ssim_is_one_for_identical_images_and_symmetric():
    noisy, clean = (_chw(a) for a in _synthetic_pair())
    assert ssim(clean, clean).item() == pytest.approx(1.0, abs=1e-12)
    assert ssim(noisy, clean).item() == pytest.approx(ssim(clean, noisy).item(), rel=1e-12)


def test_ssim_gradient_is_finite():
    noisy, clean = (_chw(a).float() for a in _synthetic_pair())
    pred = noisy.clone().requires_grad_(True)
    ssim(pred, clean).backward()
    assert pred.grad is not None and pred.grad.dtype == torch.float32
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_ssim_reduction_module_and_errors():
    noisy, clean = (_chw(a) for a in _synthetic_pair())
    batch_pred = torch.stack([noisy, clean])
    batch_target = torch.stack([clean, clean])
    values = ssim(batch_pred, batch_target, reduction="none")
    assert values.shape == (2,) and values[1].item() == pytest.approx(1.0, abs=1e-12)
    assert SSIM()(batch_pred, batch_target).item() == pytest.approx(values.mean().item())
    # The constants scale with data_range: 0..255 values with data_range=255 agree.
    assert ssim(noisy * 255, clean * 255, data_range=255.0).item() == pytest.approx(
        values[0].item(), rel=1e-10
    )
    with pytest.raises(ValueError, match="smaller than"):
        ssim(noisy[:, :10], clean[:, :10])
    with pytest.raises(ValueError, match="reduction"):
        ssim(noisy, clean, reduction="sum")


def test_psnr_of_a_constant_error_and_of_identical_images():
    target = torch.rand(2, 3, 16, 20, dtype=torch.float64) * 0.8
    pred = target + 0.1  # MSE 0.01 -> 10 log10(1 / 0.01) = 20 dB
    assert psnr(pred, target).item() == pytest.approx(20.0, rel=1e-9)
    assert psnr(pred * 255, target * 255, data_range=255.0).item() == pytest.approx(20.0, rel=1e-9)
    assert psnr(target, target).item() == float("inf")


def test_psnr_reduction_none_and_module():
    target = torch.zeros(3, 3, 8, 8)
    pred = target + torch.tensor([0.1, 0.01, 0.0]).view(3, 1, 1, 1)
    values = psnr(pred, target, reduction="none")
    assert values.shape == (3,) and values.dtype == torch.float64
    assert values[:2].tolist() == pytest.approx([20.0, 40.0], rel=1e-6)
    assert values[2].item() == float("inf")
    assert psnr(pred[0], target[0], reduction="none").shape == (1,)
    module = PSNR(reduction="none")
    assert torch.equal(module(pred, target), values)
    with pytest.raises(ValueError, match="reduction"):
        psnr(pred, target, reduction="sum")
    with pytest.raises(ValueError, match="target is"):
        psnr(pred, target[:2])
