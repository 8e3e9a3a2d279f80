"""QAB/F (MEFB definition) and TMQI (Yeganeh & Wang's TMQI.m).

The QAB/F fixtures (MEFB-definition values for crops fused by OpenCV's MergeMertens) live
outside the repository in ../shared/reference/metric-fixtures; tests that need them skip
when it is absent. Everything else runs on synthetic images, against closed forms derived
by hand or literal numpy transcriptions of the reference code.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from textmef.io import read_image
from textmef.metrics.qabf import QABF, qabf
from textmef.metrics.tmqi import TMQI, tmqi

# The modules, not the functions of the same names that textmef.metrics may re-export.
qabf_module = importlib.import_module("textmef.metrics.qabf")
tmqi_module = importlib.import_module("textmef.metrics.tmqi")

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "metric-fixtures"
CASES = ["hdrps_507", "merianos_knossos1", "deepfuse_seq-00", "misc_igloo"]

TG, KG, DG = 0.9994, -15.0, 0.5
TA, KA, DA = 0.9879, -22.0, 0.8


def _fixture(name: str) -> torch.Tensor:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"MEFB metric fixture {path} not found (shared reference data absent)")
    return torch.from_numpy(read_image(path).pixels).permute(2, 0, 1)


def _expected(case: str, metric: str) -> float:
    values = FIXTURES / "values.json"
    if not values.is_file():
        pytest.skip(f"MEFB metric values {values} not found (shared reference data absent)")
    return json.loads(values.read_text())["cases"][case][metric]


def _scene(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A (H, W, 3) float64 scene in [0, 1.4]: blocky colour texture, a ramp, fine noise.

    Values above 1 clip to flat white once exposed, which gives exactly constant regions.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    blocks = np.kron(rng.random((h // 7 + 1, w // 7 + 1, 3)), np.ones((7, 7, 1)))[:h, :w]
    ramp = np.linspace(0.0, 0.8, w)[None, :, None]
    return 0.5 * blocks + ramp + 0.1 * rng.random((h, w, 3))


def _as_8bit(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) array -> (3, H, W) float32 on 8-bit levels, as read_image returns them."""
    levels = np.floor(np.clip(array, 0.0, 1.0) * 255.0 + 0.5)
    return torch.from_numpy((levels / 255.0).astype(np.float32)).permute(2, 0, 1)


def _qg(strength: float) -> float:
    return TG / (1.0 + math.exp(KG * (strength - DG)))


def _qa(orientation: float) -> float:
    return TA / (1.0 + math.exp(KA * (orientation - DA)))


# --------------------------------------------------------------------------------------
# QAB/F


@pytest.mark.parametrize("case", CASES)
def test_qabf_matches_mefb_fixtures(case):
    under, over, fused = (_fixture(f"{case}_{part}.png") for part in "ABF")
    score = qabf(under, over, fused)
    assert score.dim() == 0 and score.dtype == torch.float64
    assert score.item() == pytest.approx(_expected(case, "QABF"), rel=1e-4)


def test_qabf_of_an_8bit_source_against_itself_is_tg_times_qa_of_perfect_orientation():
    # Every gradient is copied exactly, so the tie rule sets G = g_F, which is >= 255 (one
    # 8-bit level times MEFB's extra factor 255) wherever the weight g_A is non-zero: the
    # strength sigmoid is Tg to machine precision. Orientations agree: A = 1.
    image = _as_8bit(_scene((40, 50)))
    expected = TG * _qa(1.0)  # = Tg Ta / (1 + exp(-4.4))
    assert qabf(image, image, image).item() == pytest.approx(expected, rel=1e-14)
    # That is more than G = 1 (what a tie would give without the "sic" rule) would score.
    assert expected > _qg(1.0) * _qa(1.0) + 5e-4


def test_qabf_tie_rule_on_a_hand_computed_constant_image():
    # A constant plane v (after both factors 255) has gradients only at its border, from
    # conv2's zero padding: g = 4v with S_x = 0 on the edges, g = 3 sqrt(2) v at the four
    # corners, 0 inside. Against itself every pixel is a tie, so G = g itself, and with
    # 4v = 0.5 the strength sigmoid sits at its midpoint: Qg(0.5) = Tg / 2.
    h, w = 5, 7
    v = 0.5 / 4.0
    image = torch.full((1, h, w), v / 255.0 / 255.0, dtype=torch.float64)
    edges, g_edge = 2 * (h - 2) + 2 * (w - 2), 4.0 * v
    corners, g_corner = 4, 3.0 * math.sqrt(2.0) * v
    expected = (
        _qa(1.0)
        * (edges * g_edge * _qg(g_edge) + corners * g_corner * _qg(g_corner))
        / (edges * g_edge + corners * g_corner)
    )
    assert _qg(g_edge) == pytest.approx(TG / 2.0, rel=1e-15)
    score = qabf(image, image, image, quantize=False)
    assert score.item() == pytest.approx(expected, rel=1e-12)


def test_qabf_sobel_orientation_is_matlab_atan_with_pi_over_2_where_sx_is_zero():
    # Top-left corner of a constant plane: S_x = -3v, S_y = 3v -> alpha = atan(-1) = -pi/4;
    # on the top edge S_x = 0, S_y = 4v -> alpha = pi/2.
    x = torch.full((1, 1, 4, 5), 2.0, dtype=torch.float64)
    g, alpha = qabf_module._sobel(x)
    assert g[0, 0, 0, 0].item() == pytest.approx(6.0 * math.sqrt(2.0), rel=1e-15)
    assert alpha[0, 0, 0, 0].item() == pytest.approx(-math.pi / 4, rel=1e-15)
    assert g[0, 0, 0, 2].item() == 8.0 and alpha[0, 0, 0, 2].item() == math.pi / 2
    # Zero gradient inside: S_x == 0, so pi/2 as well.
    assert g[0, 0, 1, 2].item() == 0.0 and alpha[0, 0, 1, 2].item() == math.pi / 2


def test_qabf_prefers_a_copy_of_a_source_to_a_constant_image():
    scene = _scene((48, 64), seed=1)
    under, over = _as_8bit(0.5 * scene), _as_8bit(2.0 * scene)
    grey = torch.full_like(under, 0.5)
    assert qabf(under, over, under).item() > qabf(under, over, grey).item() + 0.2


def test_qabf_is_symmetric_in_the_sources_and_averages_channels():
    scene = _scene((30, 41), seed=2)
    under, over = _as_8bit(0.5 * scene), _as_8bit(2.0 * scene)
    fused = _as_8bit(np.clip(scene, 0, 1) ** 0.8)
    score = qabf(under, over, fused).item()
    assert qabf(over, under, fused).item() == pytest.approx(score, rel=1e-12)
    per_channel = [
        qabf(under[c : c + 1], over[c : c + 1], fused[c : c + 1]).item() for c in range(3)
    ]
    assert score == pytest.approx(sum(per_channel) / 3.0, rel=1e-12)


def test_qabf_batch_reduction_module_and_errors():
    scenes = [_scene((32, 36), seed=s) for s in (3, 4)]
    under = torch.stack([_as_8bit(0.5 * s) for s in scenes])
    over = torch.stack([_as_8bit(2.0 * s) for s in scenes])
    fused = torch.stack([_as_8bit(s) for s in scenes])
    values = qabf(under, over, fused, reduction="none")
    assert values.shape == (2,) and values.dtype == torch.float64
    for i in range(2):
        single = qabf(under[i], over[i], fused[i]).item()
        assert values[i].item() == pytest.approx(single, rel=1e-12)
    assert qabf(under, over, fused).item() == pytest.approx(values.mean().item(), rel=1e-12)
    assert qabf(under[0], over[0], fused[0], reduction="none").shape == (1,)
    assert torch.equal(QABF(reduction="none")(under, over, fused), values)
    assert QABF()(under, over, fused).item() == qabf(under, over, fused).item()
    assert "quantize=True" in repr(QABF())
    # quantize only matters off the 8-bit grid.
    assert qabf(under, over, fused, quantize=False).item() == pytest.approx(
        qabf(under, over, fused).item(), rel=1e-5
    )
    with pytest.raises(TypeError, match="float"):
        qabf((under * 255).to(torch.uint8), over, fused)
    with pytest.raises(ValueError, match="fused is"):
        qabf(under, over, fused[..., :30])
    with pytest.raises(ValueError, match="reduction"):
        qabf(under, over, fused, reduction="sum")


# --------------------------------------------------------------------------------------
# TMQI: a literal numpy transcription of TMQI.m (small images only), with the local
# variances taken as sum g (x - mu)^2, which stays accurate on the 0 .. 2^32 scale.

_GAUSS = np.exp(-(np.arange(-5, 6)[:, None] ** 2 + np.arange(-5, 6)[None, :] ** 2) / 4.5)
_GAUSS /= _GAUSS.sum()
_NORMCDF = np.vectorize(lambda z: 0.5 * math.erfc(-z / math.sqrt(2.0)))


def _reference_luminance(image: torch.Tensor) -> np.ndarray:
    rgb = image.double().numpy() * 255.0
    return 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]


def _reference_slocal(x: np.ndarray, y: np.ndarray, sf: float) -> float:
    px = sliding_window_view(x, (11, 11))
    py = sliding_window_view(y, (11, 11))
    mu1 = (px * _GAUSS).sum((-2, -1))
    mu2 = (py * _GAUSS).sum((-2, -1))
    dx, dy = px - mu1[..., None, None], py - mu2[..., None, None]
    sigma1 = np.sqrt(np.maximum(0.0, (dx * dx * _GAUSS).sum((-2, -1))))
    sigma2 = np.sqrt(np.maximum(0.0, (dy * dy * _GAUSS).sum((-2, -1))))
    sigma12 = (dx * dy * _GAUSS).sum((-2, -1))
    csf = 100.0 * 2.6 * (0.0192 + 0.114 * sf) * math.exp(-((0.114 * sf) ** 1.1))
    u = 128.0 / (1.4 * csf)
    p1, p2 = _NORMCDF((sigma1 - u) / (u / 3)), _NORMCDF((sigma2 - u) / (u / 3))
    s_map = ((2 * p1 * p2 + 0.01) / (p1**2 + p2**2 + 0.01)) * (
        (sigma12 + 10.0) / (sigma1 * sigma2 + 10.0)
    )
    return float(s_map.mean())


def _reference_downsample(x: np.ndarray) -> np.ndarray:
    p = np.pad(x, [(0, 1), (0, 1)], mode="symmetric")
    return (0.25 * (p[:-1, :-1] + p[1:, :-1] + p[:-1, 1:] + p[1:, 1:]))[::2, ::2]


def _reference_naturalness(lum: np.ndarray) -> float:
    h, w = lum.shape
    padded = np.pad(lum, [(0, -h % 11), (0, -w % 11)])
    assembled = np.zeros_like(padded)
    for i in range(0, padded.shape[0], 11):
        for j in range(0, padded.shape[1], 11):
            assembled[i : i + 11, j : j + 11] = padded[i : i + 11, j : j + 11].std(ddof=1)
    sig = assembled[:h, :w].mean()  # cropped to the image, as tmqi documents
    u = lum.mean()
    a, b = 4.4, 10.1
    mode = (a - 1) / (a + b - 2)
    x = sig / 64.29
    beta = (x / mode) ** (a - 1) * ((1 - x) / (1 - mode)) ** (b - 1) if 0 < x < 1 else 0.0
    return math.exp(-0.5 * ((u - 115.94) / 27.99) ** 2) * beta


def _reference_tmqi(reference: torch.Tensor, image: torch.Tensor) -> tuple[float, float, float]:
    y_ref, l_ldr = _reference_luminance(reference), _reference_luminance(image)
    lmin, lmax = y_ref.min(), y_ref.max()
    l_hdr = np.floor((2.0**32 - 1) / (lmax - lmin) + 0.5) * (y_ref - lmin)
    n = _reference_naturalness(l_ldr)
    s = 1.0
    for level, weight in enumerate([0.0448, 0.2856, 0.3001, 0.2363, 0.1333]):
        s *= _reference_slocal(l_hdr, l_ldr, 32.0 / 2 ** (level + 1)) ** weight
        l_hdr, l_ldr = _reference_downsample(l_hdr), _reference_downsample(l_ldr)
    return 0.8012 * s**0.3046 + 0.1988 * n**0.7088, s, n


def _tmqi_pair(size: tuple[int, int] = (165, 174), seed: int = 5):
    """(reference, test) 8-bit RGB images with texture and clipped (flat) highlights."""
    scene = _scene(size, seed)
    rng = np.random.default_rng(seed + 100)
    reference = _as_8bit(1.5 * scene)
    test = _as_8bit(scene + 0.03 * rng.standard_normal(scene.shape))
    return reference, test


def test_tmqi_matches_a_literal_transcription_of_tmqi_m():
    reference, test = _tmqi_pair()
    # Both images have exactly flat (clipped) windows; the reference's would be rounding
    # noise in E[x^2] - mu^2 on the 2^32 scale, which the transcription avoids by
    # centring, and tmqi by computing exact zeros.
    l_ref = _reference_luminance(reference)
    flat = (np.ptp(sliding_window_view(l_ref, (11, 11)), axis=(-2, -1)) == 0).mean()
    assert 0.02 < flat < 0.9
    q, s, n = tmqi(reference, test, return_components=True)
    q_ref, s_ref, n_ref = _reference_tmqi(reference, test)
    assert s.item() == pytest.approx(s_ref, rel=1e-7)
    assert n.item() == pytest.approx(n_ref, rel=1e-9)
    assert q.item() == pytest.approx(q_ref, rel=1e-7)


def test_tmqi_structural_fidelity_of_identical_luminances_is_one():
    # On the public path the reference is stretched to 0 .. 2^32 - 1 and the test image is
    # not, so S(x, x) < 1; the structural part itself gives exactly 1 for equal maps.
    lum = torch.from_numpy(_reference_luminance(_as_8bit(_scene((170, 165), seed=6))))
    s = tmqi_module._structural_fidelity(lum[None], lum[None])
    assert s.item() == pytest.approx(1.0, abs=1e-13)
    # With the reference scale applied to both (the stretch is linear) it stays 1.
    scale = torch.tensor([12345.0], dtype=torch.float64)
    assert tmqi_module._structural_fidelity(lum[None] * scale, lum[None] * scale).item() == (
        pytest.approx(1.0, abs=1e-13)
    )


def test_tmqi_noise_lowers_structural_fidelity():
    reference, test = _tmqi_pair()
    lum = torch.from_numpy(_reference_luminance(reference))[None]
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(lum.shape, generator=generator, dtype=torch.float64)
    assert tmqi_module._structural_fidelity(lum, lum + 20.0 * noise).item() < 0.95
    # Public path: a copy of the reference against the same copy plus noise.
    noise = torch.randn(reference.shape, generator=torch.Generator().manual_seed(1))
    noisy = (reference + 0.08 * noise).clamp(0, 1)
    _, s_clean, _ = tmqi(reference, reference, return_components=True)
    _, s_noisy, _ = tmqi(reference, noisy, return_components=True)
    assert s_noisy.item() < s_clean.item() - 0.02


def _blocky_luminance(mean: float, std: float, blocks: int = 15) -> np.ndarray:
    """(11 blocks) x (11 blocks) luminance whose every 11x11 block has sample std ``std``.

    Each block: 60 pixels at mean + std, 60 at mean - std, one at mean: its mean is
    ``mean`` and sum (x - mean)^2 / 120 = std^2.
    """
    block = np.full(121, mean)
    block[:60] += std
    block[60:120] -= std
    return np.tile(block.reshape(11, 11), (blocks, blocks))


def test_tmqi_naturalness_at_the_model_peaks_is_one():
    mode = 3.4 / 12.5  # (a - 1) / (a + b - 2) of Beta(4.4, 10.1)
    lum = _blocky_luminance(115.94, 64.29 * mode)
    n = tmqi_module._naturalness(torch.from_numpy(lum)[None])
    assert n.item() == pytest.approx(1.0, rel=1e-12)
    # The public path on a one-channel (luminance) image gives the same N.
    image = torch.from_numpy(lum / 255.0)[None]
    reference = torch.from_numpy(_reference_luminance(_tmqi_pair()[0]) / 255.0)[None, :165, :165]
    assert tmqi(reference, image, return_components=True)[2].item() == pytest.approx(1.0, rel=1e-9)


def test_tmqi_naturalness_hand_values():
    a, b, mode = 4.4, 10.1, 3.4 / 12.5
    # Brightness one model std above its mean; contrast at half the Beta scale.
    lum = _blocky_luminance(115.94 + 27.99, 0.5 * 64.29)
    expected = math.exp(-0.5) * (0.5 / mode) ** (a - 1) * (0.5 / (1 - mode)) ** (b - 1)
    n = tmqi_module._naturalness(torch.from_numpy(lum)[None])
    assert n.item() == pytest.approx(expected, rel=1e-12)
    # Mean block std beyond 64.29 is outside the Beta support: N = 0.
    too_contrasty = torch.from_numpy(_blocky_luminance(128.0, 70.0))[None]
    assert tmqi_module._naturalness(too_contrasty).item() == 0.0
    # Side lengths off the 11-pixel grid: zero-padded border blocks, weighted by area.
    rng = np.random.default_rng(7)
    lum = rng.random((2, 30, 47)) * 200.0
    n = tmqi_module._naturalness(torch.from_numpy(lum))
    assert n.tolist() == pytest.approx([_reference_naturalness(x) for x in lum], rel=1e-12)


def test_tmqi_combines_s_and_n_with_the_published_exponents():
    reference, test = _tmqi_pair()
    q, s, n = tmqi(reference, test, return_components=True)
    assert 0.0 < s.item() < 1.0 and 0.0 < n.item() < 1.0
    assert q.item() == pytest.approx(
        0.8012 * s.item() ** 0.3046 + 0.1988 * n.item() ** 0.7088, rel=1e-14
    )


def test_tmqi_gray_input_is_its_luminance():
    reference, test = _tmqi_pair()
    gray_ref = torch.from_numpy(_reference_luminance(reference) / 255.0)[None]
    gray_test = torch.from_numpy(_reference_luminance(test) / 255.0)[None]
    assert tmqi(gray_ref, gray_test).item() == pytest.approx(tmqi(reference, test).item(), rel=1e-9)


def test_tmqi_batch_reduction_and_module():
    pairs = [_tmqi_pair(seed=s) for s in (8, 9)]
    reference = torch.stack([p[0] for p in pairs])
    test = torch.stack([p[1] for p in pairs])
    q, s, n = tmqi(reference, test, reduction="none", return_components=True)
    assert q.shape == s.shape == n.shape == (2,) and q.dtype == torch.float64
    for i in range(2):
        single = tmqi(reference[i], test[i], return_components=True)
        assert [q[i].item(), s[i].item(), n[i].item()] == pytest.approx(
            [v.item() for v in single], rel=1e-12
        )
    assert tmqi(reference, test).item() == pytest.approx(q.mean().item(), rel=1e-12)
    assert torch.equal(TMQI(reduction="none")(reference, test), q)
    module_parts = TMQI(return_components=True)(reference, test)
    assert [v.item() for v in module_parts] == [v.mean().item() for v in (q, s, n)]
    assert tmqi(reference[0], test[0], reduction="none").shape == (1,)


def test_tmqi_rejects_bad_inputs():
    reference, test = _tmqi_pair(size=(161, 170))
    tmqi(reference, test)  # 161 is the smallest side five scales allow
    with pytest.raises(ValueError, match="at least 161"):
        tmqi(reference[:, :160], test[:, :160])
    with pytest.raises(ValueError, match="image is"):
        tmqi(reference, test[:, :, :169])
    with pytest.raises(ValueError, match="constant"):
        tmqi(torch.full_like(reference, 0.3), test)
    with pytest.raises(ValueError, match="channels|C = 2"):
        tmqi(reference[:2], test[:2])
    with pytest.raises(ValueError, match="reduction"):
        tmqi(reference, test, reduction="sum")
    with pytest.raises(TypeError, match="float"):
        tmqi(reference, (test * 255).to(torch.uint8))


@pytest.mark.parametrize("case", CASES)
def test_tmqi_of_a_fixture_against_itself_is_in_unit_interval(case):
    # The 120x160 fixtures are below the 161-pixel minimum: enlarge them 2x (nearest).
    fused = _fixture(f"{case}_F.png").repeat_interleave(2, -2).repeat_interleave(2, -1)
    q = tmqi(fused, fused).item()
    assert 0.0 < q <= 1.0
