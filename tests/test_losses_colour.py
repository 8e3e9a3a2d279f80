"""Colour loss: 1 − cosine of RGB vectors, brightness-invariant, guarded at black."""

from __future__ import annotations

import math

import pytest
import torch

from textmef.losses import ColourLoss, colour_loss


def image(seed: int = 0, size: tuple[int, int] = (12, 14), low: float = 0.2) -> torch.Tensor:
    """(1, 3, H, W) colourful image with every channel in [low, 1)."""
    g = torch.Generator().manual_seed(seed)
    return low + (1.0 - low) * torch.rand((1, 3, *size), generator=g)


def test_the_loss_is_zero_for_identical_images():
    x = image(1)
    assert colour_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert colour_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)).item() == 0.0


@pytest.mark.parametrize("gain", [0.5, 0.8, 1.25])
def test_brightness_scaling_barely_changes_the_loss(gain):
    x = image(2)
    hue_shift = colour_loss(x.roll(1, dims=1), x).item()
    brighter = colour_loss(gain * x, x).item()
    # Exactly 0 without the dark-pixel guard; with it, tiny next to any colour change.
    assert brighter < 1e-3 and brighter < hue_shift / 50


def test_without_the_guard_brightness_does_not_matter_at_all():
    x = image(3)
    assert colour_loss(0.5 * x, x, eps=1e-6).item() == pytest.approx(0.0, abs=1e-6)


def test_a_hue_shift_and_a_loss_of_saturation_raise_the_loss():
    x = image(4)
    grey = x.mean(dim=1, keepdim=True).expand_as(x)
    assert colour_loss(x.roll(1, dims=1), x).item() > 0.05  # R -> G -> B -> R
    assert colour_loss(grey, x).item() > 0.02
    # The loss grows with the angle: half-way to grey is closer than grey itself.
    assert colour_loss(0.5 * (x + grey), x).item() < colour_loss(grey, x).item()


def test_the_value_is_one_minus_the_cosine_on_bright_pixels():
    pred = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    target = torch.tensor([1.0, 1.0, 0.0]).view(1, 3, 1, 1)
    expected = 1.0 - math.cos(math.pi / 4)
    assert colour_loss(pred, target, eps=1e-4).item() == pytest.approx(expected, abs=1e-6)


def test_dark_pixels_count_little():
    bright = torch.tensor([0.8, 0.2, 0.2]).view(1, 3, 1, 1)
    other = torch.tensor([0.2, 0.2, 0.8]).view(1, 3, 1, 1)
    dark = 0.01  # about 3 levels of an 8-bit image
    assert colour_loss(dark * bright, dark * other).item() < colour_loss(bright, other).item() / 5


@pytest.mark.parametrize(
    ("pred", "target"),
    [
        (torch.zeros(1, 3, 5, 5), torch.zeros(1, 3, 5, 5)),
        (torch.zeros(1, 3, 5, 5), image(5, (5, 5))),
        (image(6, (5, 5)), torch.zeros(1, 3, 5, 5)),
        (image(7, (5, 5)), image(7, (5, 5))),  # identical: where acos would give NaN
    ],
)
def test_gradients_are_finite_and_bounded_at_black_and_at_zero_angle(pred, target):
    pred = pred.clone().requires_grad_(True)
    target = target.clone().requires_grad_(True)
    pred_grad, target_grad = torch.autograd.grad(colour_loss(pred, target), (pred, target))
    pixels = pred.shape[-1] * pred.shape[-2]
    for grad in (pred_grad, target_grad):
        assert torch.isfinite(grad).all()
        # Per pixel at most about 1 / eps (0.02), divided by the number of pixels.
        assert grad.abs().max().item() * pixels < 2.0 / 0.02


def test_reduction_none_and_the_module():
    x = torch.cat([image(8), image(9)])
    y = torch.cat([image(10), image(8)])
    per_image = colour_loss(x, y, reduction="none")
    assert per_image.shape == (2,) and per_image[1] < per_image[0]
    assert torch.equal(ColourLoss(reduction="none")(x, y), per_image)
    assert colour_loss(x, y).item() == pytest.approx(per_image.mean().item(), abs=1e-7)
    assert colour_loss(x[0], y[0]).item() == pytest.approx(per_image[0].item(), abs=1e-7)


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "match"),
    [
        (torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 5), {}, "but target"),
        (torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), {}, "RGB"),
        (torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4), {"eps": 0.0}, "eps"),
        (torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4), {"reduction": "sum"}, "reduction"),
    ],
)
def test_bad_arguments_are_refused(x, y, kwargs, match):
    with pytest.raises(ValueError, match=match):
        colour_loss(x, y, **kwargs)
