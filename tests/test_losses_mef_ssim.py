"""MEF-SSIM loss: 1 − mef_ssim_loss is textmef.metrics.mef_ssim; gradients right and finite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from textmef.io import read_image
from textmef.losses import MEFSSIMLoss, mef_ssim_loss
from textmef.losses.mef_ssim_loss import mef_ssim_per_image
from textmef.metrics import mef_ssim

SICE = Path(__file__).resolve().parents[2] / "shared" / "data" / "triplets" / "sice-samples"


def exposures(k: int, size: tuple[int, int] = (53, 61), seed: int = 0) -> torch.Tensor:
    """K exposures of one textured scene, (K, 3, H, W) float32, the brighter ones clipped.

    Clipping leaves flat (zero-contrast) windows in the bright frames, the case where the
    desired patch's weights and rescaling have to guard 0/0.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    blocks = np.kron(rng.random((h // 6 + 1, w // 6 + 1, 3)), np.ones((6, 6, 1)))[:h, :w]
    scene = 0.6 * blocks + 0.4 * rng.random((h, w, 3))
    frames = [
        np.clip(scene * gain + 0.02 * rng.standard_normal(scene.shape), 0, 1)
        for gain in np.geomspace(0.25, 3.0, k)
    ]
    return torch.stack([torch.from_numpy(f.astype(np.float32)).permute(2, 0, 1) for f in frames])


def sice_pair(name: str = "001") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not (SICE / "gt" / f"{name}.png").is_file():
        pytest.skip(f"SICE sample triplets not found under {SICE} (shared data absent)")
    images = [read_image(SICE / role / f"{name}.png").pixels for role in ("under", "over", "gt")]
    return tuple(torch.from_numpy(a).permute(2, 0, 1) for a in images)


def candidates(sources: torch.Tensor) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "mean of the sources": sources.mean(0),
        "one source": sources[0],
        "noise": torch.rand(sources.shape[1:], generator=g),
        "flat grey": torch.full(sources.shape[1:], 0.5),
    }


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("seed", [0, 2])
def test_one_minus_the_loss_is_the_metric_on_synthetic_exposures(k, seed):
    sources = exposures(k, seed=seed)
    for name, fused in candidates(sources).items():
        expected = mef_ssim(sources, fused, quantize=False).item()
        loss = mef_ssim_loss(fused.unsqueeze(0), sources.unsqueeze(0))
        assert loss.dtype == torch.float32
        assert 1.0 - loss.item() == pytest.approx(expected, abs=1e-4), name


def test_one_minus_the_loss_is_the_metric_on_a_real_pair():
    under, over, gt = sice_pair()
    sources = torch.stack([under, over])
    for fused in (gt, (under + over) / 2):
        expected = mef_ssim(sources, fused, quantize=False).item()
        loss = mef_ssim_loss(fused[None], (under[None], over[None])).item()
        assert 1.0 - loss == pytest.approx(expected, abs=1e-4)


def test_gray_images_are_scored_like_the_metric():
    sources = exposures(2, seed=4)[:, :1]
    fused = sources.mean(0)
    expected = mef_ssim(sources, fused, quantize=False).item()
    assert 1.0 - mef_ssim_loss(fused[None], sources[None]).item() == pytest.approx(
        expected, abs=1e-4
    )


def test_a_pair_of_tensors_and_a_stacked_tensor_give_the_same_loss():
    sources = torch.stack([exposures(2, seed=s) for s in (5, 6)])  # (B, K, 3, H, W)
    fused = sources.mean(1)
    stacked = mef_ssim_loss(fused, sources)
    assert torch.equal(stacked, mef_ssim_loss(fused, (sources[:, 0], sources[:, 1])))
    assert torch.equal(stacked, MEFSSIMLoss()(fused, sources))


def test_reduction_none_gives_each_image_its_own_loss():
    sources = torch.stack([exposures(2, seed=s) for s in (7, 8)])
    fused = torch.stack([sources[0].mean(0), sources[1, 0]])
    per_image = mef_ssim_loss(fused, sources, reduction="none")
    assert per_image.shape == (2,)
    for b in range(2):
        alone = mef_ssim_loss(fused[b : b + 1], sources[b : b + 1]).item()
        assert per_image[b].item() == pytest.approx(alone, abs=1e-6)


def test_the_loss_is_zero_when_the_fused_image_is_the_only_structure():
    # Two copies of one image: the desired patch is that image's own structure.
    image = exposures(2, seed=9)[0]
    sources = torch.stack([image, image])[None]
    assert mef_ssim_loss(image[None], sources).item() == pytest.approx(0.0, abs=1e-5)


def test_gradients_match_finite_differences():
    sources = exposures(2, size=(45, 47), seed=10).double()[None]
    g = torch.Generator().manual_seed(0)
    fused = torch.rand((1, 3, 45, 47), generator=g, dtype=torch.float64).requires_grad_(True)
    (grad,) = torch.autograd.grad(mef_ssim_loss(fused, sources), fused)
    for _ in range(3):
        direction = torch.randn(fused.shape, generator=g, dtype=torch.float64)
        h = 1e-6
        numeric = (
            mef_ssim_loss(fused + h * direction, sources)
            - mef_ssim_loss(fused - h * direction, sources)
        ) / (2 * h)
        assert (grad * direction).sum().item() == pytest.approx(numeric.item(), rel=1e-5)


@pytest.mark.parametrize("fused_level", [0.0, 0.5, 1.0])
def test_gradients_are_finite_on_flat_images(fused_level):
    """Flat fused image and flat sources: zero variances, zero contrasts, 0/0 guards."""
    size = (1, 3, 44, 44)
    textured = exposures(2, size=(44, 44), seed=11)
    source_sets = {
        "black and white": (torch.zeros(size), torch.ones(size)),
        "both grey": (torch.full(size, 0.3), torch.full(size, 0.3)),
        "flat and textured": (torch.ones(size), textured[:1]),
    }
    for name, pair in source_sets.items():
        fused = torch.full(size, fused_level, requires_grad=True)
        loss = mef_ssim_loss(fused, pair)
        (grad,) = torch.autograd.grad(loss, fused)
        assert torch.isfinite(loss) and torch.isfinite(grad).all(), name


def test_the_gradient_at_a_flat_fused_image_is_the_true_one():
    # A flat fused window sits on the Cauchy-Schwarz bound (0); clamping to it, as the
    # metric does, would cut this gradient, the one that starts to build structure.
    sources = exposures(2, size=(45, 47), seed=17).double()[None]
    fused = torch.full((1, 3, 45, 47), 0.5, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(mef_ssim_loss(fused, sources), fused)
    direction = sources.mean(1) - 0.5
    h = 1e-5
    numeric = (
        mef_ssim_loss(fused + h * direction, sources)
        - mef_ssim_loss(fused - h * direction, sources)
    ) / (2 * h)
    assert numeric.item() < 0  # adding the sources' structure helps
    assert (grad * direction).sum().item() == pytest.approx(numeric.item(), rel=1e-4)


def test_inverted_structure_gets_a_finite_loss_and_a_useful_gradient_where_the_metric_is_nan():
    sources = exposures(2, seed=12)
    inverted = 1.0 - sources.mean(0)
    assert np.isnan(mef_ssim(sources, inverted, quantize=False).item())  # negative scale score
    fused = inverted[None].requires_grad_(True)
    loss = mef_ssim_loss(fused, sources[None])
    (grad,) = torch.autograd.grad(loss, fused)
    assert torch.isfinite(loss) and 0.0 < loss.item() < 1.0
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # The gradient still points somewhere better: a small step against it lowers the loss.
    step = fused.detach() - 0.05 * grad / grad.abs().max()
    assert mef_ssim_loss(step, sources[None]).item() < loss.item()


def test_gradients_flow_to_the_fused_image_only_and_the_inputs_are_left_unchanged():
    sources = exposures(2, seed=13)[None].requires_grad_(True)
    fused = sources.detach().mean(1).clone().requires_grad_(True)
    copies = sources.detach().clone(), fused.detach().clone()
    mef_ssim_loss(fused, sources).backward()
    assert sources.grad is None and fused.grad is not None
    assert torch.equal(sources.detach(), copies[0]) and torch.equal(fused.detach(), copies[1])


def test_values_outside_the_range_are_used_as_they_are():
    # No clamp on the fused image: a clamp would cut the gradient of out-of-range pixels.
    sources = exposures(2, seed=14)[None]
    fused = (1.5 * sources.mean(1) - 0.2).requires_grad_(True)
    (grad,) = torch.autograd.grad(mef_ssim_loss(fused, sources), fused)
    outside = (fused.detach() < 0) | (fused.detach() > 1)
    assert outside.any() and (grad[outside] != 0).any()


def test_scores_are_per_image_and_at_most_one():
    sources = torch.stack([exposures(3, seed=s) for s in (15, 16)])
    scores = mef_ssim_per_image(sources.mean(1), sources)
    assert scores.shape == (2,) and (scores <= 1.0 + 1e-6).all()


@pytest.mark.parametrize(
    ("fused", "sources", "match"),
    [
        (torch.rand(1, 3, 40, 60), torch.rand(1, 2, 3, 40, 60), "at least 41"),
        (torch.rand(1, 3, 48, 48), torch.rand(1, 1, 3, 48, 48), "at least 2 sources"),
        (torch.rand(1, 3, 48, 48), torch.rand(1, 2, 3, 48, 50), "matching fused"),
        (torch.rand(1, 3, 48, 48), (torch.rand(1, 3, 48, 48), torch.rand(1, 3, 48, 49)), "each"),
        (torch.rand(1, 2, 48, 48), torch.rand(1, 2, 2, 48, 48), r"\(B, 3, H, W\)"),
    ],
)
def test_bad_shapes_are_refused(fused, sources, match):
    with pytest.raises(ValueError, match=match):
        mef_ssim_loss(fused, sources)


def test_an_unknown_reduction_is_refused():
    sources = exposures(2)[None]
    with pytest.raises(ValueError, match="reduction"):
        mef_ssim_loss(sources.mean(1), sources, reduction="sum")
