"""MEFB's fused-image metrics: EN, SD, SF, AG, EI and MEFB's fusion PSNR.

Each metric is checked on hand-derived cases and against an independent numpy / OpenCV
transcription of MEFB's definition (../shared/reference/metrics.md), and against MEFB-
definition values for four fixture crops. Those fixtures live outside the repository in
../shared/reference/metric-fixtures; tests that need them skip when it is absent.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from textmef.io import read_image
from textmef.metrics.average_gradient import AverageGradient, average_gradient
from textmef.metrics.edge_intensity import EdgeIntensity, edge_intensity
from textmef.metrics.entropy import Entropy, entropy
from textmef.metrics.psnr_mefb import PSNRMEFB, psnr_mefb
from textmef.metrics.spatial_frequency import SpatialFrequency, spatial_frequency
from textmef.metrics.std import StandardDeviation, standard_deviation

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "metric-fixtures"
CASES = ["hdrps_507", "merianos_knossos1", "deepfuse_seq-00", "misc_igloo"]

# The five metrics of the fused image alone, by their MEFB names.
FUSED_ONLY: dict[str, Callable[..., torch.Tensor]] = {
    "EN": entropy,
    "SD": standard_deviation,
    "SF": spatial_frequency,
    "AG": average_gradient,
    "EI": edge_intensity,
}
MODULES = {
    "EN": Entropy,
    "SD": StandardDeviation,
    "SF": SpatialFrequency,
    "AG": AverageGradient,
    "EI": EdgeIntensity,
}
ALL_METRICS = [*FUSED_ONLY, "PSNR_MEFB"]


def _fixture(name: str) -> torch.Tensor:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"MEFB metric fixture {path} not found (shared reference data absent)")
    return torch.from_numpy(read_image(path).pixels).permute(2, 0, 1)


# Six metrics share each case: decode its PNGs once (a skip is an exception, never cached).
# The metrics never write to their inputs, so sharing the tensors is safe.
@functools.cache
def _case(case: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(under, over, fused) of a fixture case, each (3, H, W) float32 in [0, 1]."""
    return tuple(_fixture(f"{case}_{part}.png") for part in "ABF")


def _expected(case: str, metric: str) -> float:
    return _reference_values()[case][metric]


@functools.cache
def _reference_values() -> dict[str, dict[str, float]]:
    values = FIXTURES / "values.json"
    if not values.is_file():
        pytest.skip(f"MEFB metric values {values} not found (shared reference data absent)")
    return json.loads(values.read_text())["cases"]


def _score(metric: str, under, over, fused, **kwargs) -> torch.Tensor:
    """Any of the six metrics by MEFB name; the fused-only ones ignore the sources."""
    if metric == "PSNR_MEFB":
        return psnr_mefb(under, over, fused, **kwargs)
    return FUSED_ONLY[metric](fused, **kwargs)


def _levels(array) -> torch.Tensor:
    """8-bit levels (C, H, W) or (B, C, H, W) -> the float image in [0, 1] they came from."""
    return torch.tensor(np.asarray(array, dtype=np.float64)) / 255.0  # a copy: may be a view


def _random_levels(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random 8-bit levels as float64, with a smooth part so that gradients vary."""
    rng = np.random.default_rng(seed)
    h, w = shape[-2:]
    ramp = np.linspace(0, 120, w)[None, :] + np.linspace(0, 60, h)[:, None]
    return np.clip(np.round(ramp + rng.integers(0, 120, size=shape)), 0, 255).astype(np.float64)


# --------------------------------------------------------------------------------------
# EN


def test_entropy_of_a_constant_image_is_zero():
    assert entropy(torch.full((3, 9, 7), 0.4)).item() == 0.0


def test_entropy_of_two_equally_frequent_levels_is_one_bit():
    image = np.zeros((1, 4, 6))
    image[0, :2] = 200  # half the pixels at level 200, half at 0
    assert entropy(_levels(image)).item() == pytest.approx(1.0, abs=1e-15)


def test_entropy_of_four_equally_frequent_levels_is_two_bits():
    image = np.tile(np.array([0, 17, 128, 255]), (1, 5, 3))  # (1, 5, 12)
    assert entropy(_levels(image)).item() == pytest.approx(2.0, abs=1e-15)


def test_entropy_averages_the_channels():
    image = np.zeros((3, 4, 4))
    image[1, :2] = 50  # channel 1: two levels -> 1 bit
    image[2] = np.tile([10, 20, 30, 40], (4, 1))  # channel 2: four levels -> 2 bits
    assert entropy(_levels(image)).item() == pytest.approx((0.0 + 1.0 + 2.0) / 3, abs=1e-15)


def test_entropy_matches_a_numpy_histogram():
    levels = _random_levels((3, 23, 31), seed=1)
    expected = []
    for channel in levels:
        p = np.bincount(channel.astype(int).ravel(), minlength=256) / channel.size
        p = p[p > 0]
        expected.append(-(p * np.log2(p)).sum())
    assert entropy(_levels(levels)).item() == pytest.approx(np.mean(expected), rel=1e-12)


def test_entropy_without_quantisation_floors_into_bins_like_mefb():
    # 10.2 and 10.9 share bin 10 when floored; rounding puts 10.9 into bin 11.
    image = np.full((1, 2, 2), 10.2)
    image[0, 0] = 10.9
    assert entropy(_levels(image), quantize=False).item() == 0.0
    assert entropy(_levels(image)).item() == pytest.approx(1.0, abs=1e-15)
    # The top value 1.0 -> 255.0 lands in the last bin, not past it.
    top = torch.tensor([0.0, 1.0]).view(1, 1, 2)
    assert entropy(top, quantize=False).item() == pytest.approx(1.0, abs=1e-15)


# --------------------------------------------------------------------------------------
# SD


def test_standard_deviation_is_numpys_population_std_averaged_over_channels():
    levels = _random_levels((3, 19, 26), seed=2)
    expected = np.mean([np.std(channel) for channel in levels])  # ddof=0: N denominator
    assert standard_deviation(_levels(levels)).item() == pytest.approx(expected, rel=1e-12)


def test_standard_deviation_without_quantisation_uses_the_raw_values():
    rng = np.random.default_rng(3)
    image = torch.from_numpy(rng.random((3, 11, 13)))
    expected = np.mean([np.std(channel * 255.0) for channel in image.numpy()])
    assert standard_deviation(image, quantize=False).item() == pytest.approx(expected, rel=1e-12)
    assert standard_deviation(image).item() != pytest.approx(expected, rel=1e-9)


def test_standard_deviation_of_a_constant_image_is_zero_and_of_two_levels_is_half_the_gap():
    assert standard_deviation(torch.full((1, 5, 5), 0.7)).item() == 0.0
    image = np.zeros((1, 2, 4))
    image[0, 0] = 100  # half at 0, half at 100: mean 50, every deviation 50
    assert standard_deviation(_levels(image)).item() == pytest.approx(50.0, rel=1e-15)


# --------------------------------------------------------------------------------------
# SF


def test_spatial_frequency_of_a_constant_image_is_zero():
    assert spatial_frequency(torch.full((3, 6, 8), 0.3)).item() == 0.0


def test_spatial_frequency_of_a_2x2_checkerboard_divides_by_hw():
    # Horizontal pairs: (0,6) and (6,0) -> RF = 72 / 4; vertical pairs alike -> CF = 72 / 4.
    # SF = sqrt(18 + 18) = 6. Dividing by the pair counts instead would give sqrt(72).
    image = np.array([[[0, 6], [6, 0]]])
    assert spatial_frequency(_levels(image)).item() == pytest.approx(6.0, rel=1e-15)


def test_spatial_frequency_of_a_hand_computed_array():
    image = np.array([[[0, 3, 3], [4, 3, 7]]])  # H = 2, W = 3
    row = 3**2 + 0**2 + (-1) ** 2 + 4**2  # 26
    column = 4**2 + 0**2 + 4**2  # 32
    expected = math.sqrt(row / 6 + column / 6)
    assert spatial_frequency(_levels(image)).item() == pytest.approx(expected, rel=1e-15)


def test_spatial_frequency_of_a_horizontal_ramp():
    # W columns of slope d: RF = H (W - 1) d^2 / (H W), CF = 0.
    h, w, d = 5, 4, 2.0
    image = np.broadcast_to(np.arange(w) * d, (1, h, w))
    expected = d * math.sqrt((w - 1) / w)
    assert spatial_frequency(_levels(image)).item() == pytest.approx(expected, rel=1e-15)


# --------------------------------------------------------------------------------------
# AG


def _average_gradient_reference(levels: np.ndarray) -> float:
    """metricsAvg_gradient.m with numpy.gradient for MATLAB's gradient; levels (C, H, W)."""
    h, w = levels.shape[-2:]
    values = []
    for band in levels:
        gy, gx = np.gradient(band)  # along rows, along columns; edge_order=1
        s = np.sqrt((gx**2 + gy**2) / 2)
        values.append(s.sum() / ((h - 1) * (w - 1)))
    return float(np.mean(values))


def test_average_gradient_matches_numpy_gradient_reference():
    levels = _random_levels((3, 21, 17), seed=4)
    expected = _average_gradient_reference(levels)
    assert average_gradient(_levels(levels)).item() == pytest.approx(expected, rel=1e-12)


def test_average_gradient_of_a_ramp_sums_all_pixels_over_h_minus_1_w_minus_1():
    # Slope d along the columns: gx = d everywhere (central and one-sided alike), gy = 0,
    # so s = d / sqrt(2) at all H W pixels, divided by (H - 1)(W - 1).
    h, w, d = 4, 6, 3.0
    image = np.broadcast_to(np.arange(w) * d, (1, h, w))
    expected = h * w * (d / math.sqrt(2)) / ((h - 1) * (w - 1))
    assert average_gradient(_levels(image)).item() == pytest.approx(expected, rel=1e-14)
    assert average_gradient(torch.full((3, 4, 4), 0.5)).item() == 0.0


def test_average_gradient_rejects_images_thinner_than_two_pixels():
    with pytest.raises(ValueError, match="at least 2x2"):
        average_gradient(torch.rand(3, 1, 10))


# --------------------------------------------------------------------------------------
# EI


def _edge_intensity_reference(levels: np.ndarray) -> float:
    """metricsEdge_intensity.m with cv2.filter2D (a correlation) and replicated borders."""
    sobel = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float64)
    magnitudes = []
    for band in levels:
        gx = cv2.filter2D(band, cv2.CV_64F, sobel, borderType=cv2.BORDER_REPLICATE)
        gy = cv2.filter2D(band, cv2.CV_64F, sobel.T, borderType=cv2.BORDER_REPLICATE)
        magnitudes.append(np.sqrt(gx**2 + gy**2))
    return float(np.mean(magnitudes))


def _edge_intensity_numpy(levels: np.ndarray) -> float:
    """The same with explicit edge padding and a 3x3 correlation sum, no OpenCV."""
    sobel = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float64)
    h, w = levels.shape[-2:]
    padded = np.pad(levels, ((0, 0), (1, 1), (1, 1)), mode="edge")
    gx = np.zeros_like(levels)
    gy = np.zeros_like(levels)
    for u in range(3):
        for v in range(3):
            window = padded[:, u : u + h, v : v + w]
            gx += sobel[u, v] * window
            gy += sobel.T[u, v] * window
    return float(np.sqrt(gx**2 + gy**2).mean())


def test_edge_intensity_matches_opencv_and_numpy_correlation_with_replicate_padding():
    levels = _random_levels((3, 15, 22), seed=5)
    got = edge_intensity(_levels(levels)).item()
    assert got == pytest.approx(_edge_intensity_reference(levels), rel=1e-12)
    assert got == pytest.approx(_edge_intensity_numpy(levels), rel=1e-12)


def test_edge_intensity_of_a_ramp_is_hand_computable():
    # Slope d along the columns: the vertical Sobel is 0; the horizontal one is 4 * 2d
    # inside and 4 * d in the first and last column (the replicated border halves it).
    h, w, d = 3, 5, 2.0
    image = np.broadcast_to(np.arange(w) * d, (1, h, w))
    expected = (8 * d * (w - 2) + 4 * d * 2) / w
    assert edge_intensity(_levels(image)).item() == pytest.approx(expected, rel=1e-15)
    assert edge_intensity(torch.full((3, 4, 4), 0.5)).item() == 0.0


# --------------------------------------------------------------------------------------
# PSNR_MEFB


def test_psnr_mefb_of_a_hand_computed_2x2_example():
    fused = np.full((1, 2, 2), 10.0)
    under = np.full((1, 2, 2), 8.0)  # SSE 16 -> "mse" = sqrt(16) / 4 = 1
    over = np.array([[[10.0, 10.0], [10.0, 13.0]]])  # SSE 9 -> "mse" = 3 / 4
    mes = (1.0 + 0.75) / 2
    expected = 20 * math.log10(255 / math.sqrt(mes))
    got = psnr_mefb(_levels(under), _levels(over), _levels(fused)).item()
    assert got == pytest.approx(expected, rel=1e-14)
    assert got == pytest.approx(20 * math.log10(255) - 10 * math.log10(mes), rel=1e-14)


def test_psnr_mefb_uses_sqrt_sse_over_n_so_tiling_adds_3db():
    # Tiling 2x2 quadruples SSE (sqrt doubles) and N: "mse" halves, PSNR + 10 log10(2).
    rng = np.random.default_rng(6)
    under, over, fused = (_levels(rng.integers(0, 256, (3, 8, 10))) for _ in range(3))
    single = psnr_mefb(under, over, fused).item()
    tiled = psnr_mefb(*(t.repeat(1, 2, 2) for t in (under, over, fused))).item()
    assert tiled - single == pytest.approx(10 * math.log10(2), rel=1e-12)


def test_psnr_mefb_averages_per_channel_values_and_is_symmetric_in_the_sources():
    rng = np.random.default_rng(7)
    under, over, fused = (_levels(rng.integers(0, 256, (3, 9, 7))) for _ in range(3))
    per_channel = [
        psnr_mefb(under[c : c + 1], over[c : c + 1], fused[c : c + 1]).item() for c in range(3)
    ]
    assert psnr_mefb(under, over, fused).item() == pytest.approx(np.mean(per_channel), rel=1e-14)
    assert psnr_mefb(over, under, fused).item() == psnr_mefb(under, over, fused).item()


def test_psnr_mefb_is_infinite_when_the_fused_image_equals_both_sources():
    image = torch.rand(3, 6, 6)
    assert psnr_mefb(image, image, image).item() == math.inf


# --------------------------------------------------------------------------------------
# All six: batches, reductions, quantisation, gray input, modules, errors


def _batch(seed: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(under, over, fused), each (3, 3, 14, 18) float32 on 8-bit levels."""
    rng = np.random.default_rng(seed)
    fused = _random_levels((3, 3, 14, 18), seed)
    under = np.clip(np.round(fused * 0.4) + rng.integers(-5, 6, fused.shape), 0, 255)
    over = np.clip(np.round(fused * 1.6) + rng.integers(-5, 6, fused.shape), 0, 255)
    return tuple(_levels(a).float() for a in (under, over, fused))


@pytest.mark.parametrize("metric", ALL_METRICS)
def test_batch_values_equal_single_image_values(metric):
    under, over, fused = _batch()
    values = _score(metric, under, over, fused, reduction="none")
    assert values.shape == (3,) and values.dtype == torch.float64
    for i in range(3):
        single = _score(metric, under[i], over[i], fused[i], reduction="none")
        assert single.shape == (1,)
        assert single.item() == pytest.approx(values[i].item(), rel=1e-13)
    mean = _score(metric, under, over, fused)
    assert mean.dim() == 0 and mean.item() == pytest.approx(values.mean().item(), rel=1e-14)


@pytest.mark.parametrize("metric", ALL_METRICS)
def test_float32_and_float64_inputs_on_8bit_levels_give_identical_values(metric):
    under, over, fused = _batch()
    as_float32 = _score(metric, under, over, fused, reduction="none")
    as_float64 = _score(metric, under.double(), over.double(), fused.double(), reduction="none")
    assert torch.equal(as_float32, as_float64)


@pytest.mark.parametrize("metric", ALL_METRICS)
def test_quantize_false_keeps_off_level_values(metric):
    under, over, fused = _batch()
    rng = np.random.default_rng(9)
    # Up to 0.4 of a level either way: rounding recovers the levels, flooring (EN) and
    # the other metrics without quantisation see the offsets.
    shifted = [
        (t + torch.from_numpy(rng.uniform(-0.4, 0.4, t.shape)).float() / 255).clamp(0, 1)
        for t in (under, over, fused)
    ]
    rounded = _score(metric, *shifted)
    assert rounded.item() == _score(metric, under, over, fused).item()
    assert _score(metric, *shifted, quantize=False).item() != rounded.item()


@pytest.mark.parametrize("metric", ALL_METRICS)
def test_gray_image_scores_like_rgb_with_three_equal_channels(metric):
    under, over, fused = (t[0, :1] for t in _batch())
    gray = _score(metric, under, over, fused).item()
    rgb = _score(metric, *(t.expand(3, -1, -1) for t in (under, over, fused))).item()
    assert gray == pytest.approx(rgb, rel=1e-14)


@pytest.mark.parametrize("metric", ALL_METRICS)
def test_metrics_are_not_differentiable(metric):
    under, over, fused = _batch()
    fused.requires_grad_(True)
    assert not _score(metric, under, over, fused).requires_grad


@pytest.mark.parametrize("metric", list(FUSED_ONLY))
def test_modules_equal_the_functions(metric):
    _, _, fused = _batch()
    function = FUSED_ONLY[metric]
    for kwargs in ({}, {"quantize": False, "reduction": "none"}):
        module = MODULES[metric](**kwargs)
        assert torch.equal(module(fused), function(fused, **kwargs))
    assert repr(MODULES[metric](reduction="none")).endswith("(quantize=True, reduction='none')")


def test_psnr_mefb_module_equals_the_function():
    under, over, fused = _batch()
    assert torch.equal(PSNRMEFB()(under, over, fused), psnr_mefb(under, over, fused))
    module = PSNRMEFB(quantize=False, reduction="none")
    expected = psnr_mefb(under, over, fused, quantize=False, reduction="none")
    assert torch.equal(module(under, over, fused), expected)
    assert "quantize=False" in repr(module)


@pytest.mark.parametrize("metric", ALL_METRICS)
def test_uint8_tensors_are_rejected(metric):
    under, over, fused = (torch.round(t * 255).to(torch.uint8) for t in _batch())
    with pytest.raises(TypeError, match="float tensor"):
        _score(metric, under, over, fused)


@pytest.mark.parametrize("metric", ALL_METRICS)
def test_bad_shapes_and_reductions_are_rejected(metric):
    under, over, fused = _batch()
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        _score(metric, under[0, 0], over[0, 0], fused[0, 0])
    with pytest.raises(ValueError, match="reduction"):
        _score(metric, under, over, fused, reduction="sum")


def test_psnr_mefb_rejects_mismatched_shapes():
    under, over, fused = _batch()
    with pytest.raises(ValueError, match="over is"):
        psnr_mefb(under, over[..., :10], fused)
    with pytest.raises(ValueError, match="fused is"):
        psnr_mefb(under[0], over[0], fused)


# --------------------------------------------------------------------------------------
# MEFB-definition reference values


@pytest.mark.parametrize("metric", ALL_METRICS)
@pytest.mark.parametrize("case", CASES)
def test_metrics_match_mefb_fixtures(case, metric):
    under, over, fused = _case(case)
    score = _score(metric, under, over, fused)
    assert score.dim() == 0 and score.dtype == torch.float64
    assert score.item() == pytest.approx(_expected(case, metric), rel=1e-4)
