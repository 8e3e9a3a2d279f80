"""SSIM loss: 1 − ssim_loss is textmef.metrics.ssim; gradients are right and finite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from textmef.io import read_image
from textmef.losses import SSIMLoss, ssim_loss
from textmef.metrics import ssim

SICE = Path(__file__).resolve().parents[2] / "shared" / "data" / "triplets" / "sice-samples"


def structured(seed: int, size: tuple[int, int] = (37, 45)) -> torch.Tensor:
    """A (3, H, W) float32 image: smooth gradients, blocks and edges."""
    rng = np.random.default_rng(seed)
    h, w = size
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    blocks = np.kron(rng.random((h // 5 + 1, w // 5 + 1, 3)), np.ones((5, 5, 1)))[:h, :w]
    ramp = np.stack([i / h, j / w, 0.5 + 0.4 * np.sin(i / 3.0)], axis=-1)
    image = np.clip(0.5 * blocks + 0.5 * ramp, 0, 1).astype(np.float32)
    return torch.from_numpy(image).permute(2, 0, 1)


def sice_pair(name: str = "001") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not (SICE / "gt" / f"{name}.png").is_file():
        pytest.skip(f"SICE sample triplets not found under {SICE} (shared data absent)")
    images = [read_image(SICE / role / f"{name}.png").pixels for role in ("under", "over", "gt")]
    return tuple(torch.from_numpy(a).permute(2, 0, 1) for a in images)


@pytest.mark.parametrize(
    "pair",
    [
        "random",
        "structured vs noisy",
        "structured vs shifted",
        "dark vs bright",
        "gray",
    ],
)
def test_one_minus_the_loss_is_the_ssim_metric(pair):
    torch.manual_seed(0)
    a = structured(1)
    if pair == "random":
        x, y = torch.rand(2, 3, 30, 40), torch.rand(2, 3, 30, 40)
    elif pair == "structured vs noisy":
        x, y = a, (a + 0.1 * torch.randn_like(a)).clamp(0, 1)
    elif pair == "structured vs shifted":
        x, y = a, structured(1).roll(2, dims=-1)
    elif pair == "dark vs bright":
        x, y = 0.1 * a, (0.5 + a).clamp(max=1)
    else:
        x, y = a[:1], structured(2)[:1]
    loss = ssim_loss(x, y)
    assert loss.dtype == torch.float32
    assert 1.0 - loss.item() == pytest.approx(ssim(x, y).item(), abs=1e-5)


def test_one_minus_the_loss_is_the_ssim_metric_on_a_real_image_pair():
    under, _, gt = sice_pair()
    assert 1.0 - ssim_loss(under, gt).item() == pytest.approx(ssim(under, gt).item(), abs=1e-5)


def test_float64_inputs_are_computed_in_float64_and_match_the_metric_closely():
    x, y = structured(3).double(), structured(4).double()
    loss = ssim_loss(x, y)
    assert loss.dtype == torch.float64
    assert 1.0 - loss.item() == pytest.approx(ssim(x, y).item(), abs=1e-12)


def test_the_loss_is_zero_for_identical_images_and_positive_otherwise():
    a = structured(5)
    assert ssim_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert ssim_loss(a, structured(6)).item() > 0.1


def test_reduction_none_gives_each_image_its_own_loss():
    x, y = torch.stack([structured(7), structured(8)]), torch.stack([structured(9), structured(7)])
    per_image = ssim_loss(x, y, reduction="none")
    assert per_image.shape == (2,)
    for b in range(2):
        assert per_image[b].item() == pytest.approx(ssim_loss(x[b], y[b]).item(), abs=1e-6)
    assert ssim_loss(x, y).item() == pytest.approx(per_image.mean().item(), abs=1e-7)


def test_gradients_match_finite_differences():
    torch.manual_seed(1)
    x = structured(10).double().unsqueeze(0).requires_grad_(True)
    y = structured(11).double().unsqueeze(0)
    (grad,) = torch.autograd.grad(ssim_loss(x, y), x)
    for _ in range(3):
        direction = torch.randn_like(x)
        h = 1e-6
        numeric = (ssim_loss(x + h * direction, y) - ssim_loss(x - h * direction, y)) / (2 * h)
        assert (grad * direction).sum().item() == pytest.approx(numeric.item(), rel=1e-6)


@pytest.mark.parametrize("level", [0.0, 0.5, 1.0])
def test_gradients_are_finite_on_flat_images(level):
    flat = torch.full((1, 3, 24, 24), level, requires_grad=True)
    for target in (torch.full((1, 3, 24, 24), level), structured(12, (24, 24)).unsqueeze(0)):
        (grad,) = torch.autograd.grad(ssim_loss(flat, target), flat)
        assert torch.isfinite(grad).all()


def test_the_inputs_are_left_unchanged():
    x, y = structured(13), structured(14)
    x_copy, y_copy = x.clone(), y.clone()
    ssim_loss(x.requires_grad_(True), y).backward()
    assert torch.equal(x.detach(), x_copy) and torch.equal(y, y_copy)


def test_the_module_equals_the_function():
    x, y = structured(15), structured(16)
    module = SSIMLoss(reduction="none")
    assert torch.equal(module(x, y), ssim_loss(x, y, reduction="none"))
    assert "reduction='none'" in repr(module)


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "match"),
    [
        (torch.rand(1, 3, 20, 20), torch.rand(1, 3, 20, 21), {}, "but target"),
        (torch.rand(1, 3, 10, 20), torch.rand(1, 3, 10, 20), {}, "smaller than"),
        (torch.rand(20, 20), torch.rand(20, 20), {}, r"\(B, C, H, W\)"),
        (torch.rand(1, 3, 20, 20), torch.rand(1, 3, 20, 20), {"reduction": "sum"}, "reduction"),
        (torch.rand(1, 3, 20, 20), torch.rand(1, 3, 20, 20), {"data_range": 0}, "data_range"),
    ],
)
def test_bad_arguments_are_refused(x, y, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ssim_loss(x, y, **kwargs)


def test_the_structure_losses_filter_without_convolutions(monkeypatch):
    # cuDNN runs float32 convolutions in TF32 by default on recent GPUs, too coarse for the
    # variances; shift-and-add stays float32 everywhere. CPU stands in for the GPU here.
    from textmef.losses import mef_ssim_loss

    def refuse(*args, **kwargs):
        raise AssertionError("conv2d used")

    monkeypatch.setattr(torch.nn.functional, "conv2d", refuse)
    x = torch.rand(1, 3, 48, 48, requires_grad=True)
    loss = ssim_loss(x, torch.rand(1, 3, 48, 48)) + mef_ssim_loss(x, torch.rand(1, 2, 3, 48, 48))
    loss.backward()
    assert torch.isfinite(x.grad).all()
