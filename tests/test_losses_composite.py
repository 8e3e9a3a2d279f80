"""FusionLoss: the weighted sum stage 2 trains on; the default is plain MSE, bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from textmef.losses import TERMS, FusionLoss, colour_loss, mef_ssim_loss, ssim_loss


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    gt = torch.rand((2, 3, 48, 52), generator=g)
    under, over = 0.3 * gt, (1.8 * gt).clamp(max=1.0)
    fused = (gt + 0.1 * torch.randn(gt.shape, generator=g)).requires_grad_(True)
    return fused, under, over, gt


class MeanBrightness(nn.Module):
    """A stand-in for L_clip: any module from images to a 0-dim loss."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (1.0 - images).mean()


def test_the_default_is_plain_mse_bit_for_bit(batch):
    fused, under, over, gt = batch
    total, terms = FusionLoss()(fused, under, over, gt)
    assert list(terms) == ["mse"]
    expected = F.mse_loss(fused, gt)
    assert torch.equal(total, expected)
    (grad,) = torch.autograd.grad(total, fused)
    (expected_grad,) = torch.autograd.grad(expected, fused)
    assert torch.equal(grad, expected_grad)


def test_terms_with_weight_zero_are_absent(batch):
    loss = FusionLoss(mse=0.0, ssim=0.5, clip=0.0, clip_loss=MeanBrightness())
    total, terms = loss(*batch)
    assert list(terms) == ["ssim"] and loss.clip_loss is None
    assert torch.equal(total, 0.5 * terms["ssim"])


def test_the_total_is_the_weighted_sum_of_the_terms_and_each_term_is_its_loss(batch):
    fused, under, over, gt = batch
    weights = {"mse": 1.0, "mef_ssim": 0.5, "ssim": 0.25, "colour": 2.0, "clip": 0.01}
    loss = FusionLoss(**weights, clip_loss=MeanBrightness())
    total, terms = loss(fused, under, over, gt)
    assert list(terms) == list(TERMS)
    expected = {
        "mse": F.mse_loss(fused, gt),
        "mef_ssim": mef_ssim_loss(fused, (under, over)),
        "ssim": ssim_loss(fused, gt),
        "colour": colour_loss(fused, gt),
        "clip": MeanBrightness()(fused),
    }
    for name in TERMS:
        assert torch.equal(terms[name], expected[name]), name
    weighted = sum(weights[n] * terms[n] for n in TERMS)
    assert total.item() == pytest.approx(float(weighted.detach()), rel=1e-6)
    (grad,) = torch.autograd.grad(total, fused)
    assert torch.isfinite(grad).all()


def test_describe_names_the_active_terms_with_their_weights():
    text = FusionLoss(mse=1.0, mef_ssim=0.5, colour=0.1).describe()
    assert (
        text
        == "1 · MSE(fused, gt) + 0.5 · (1 − MEF-SSIM(fused; under, over)) + 0.1 · colour(fused, gt)"
    )
    assert "ssim=" not in repr(FusionLoss())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mse": -1.0}, "mse must be finite and >= 0"),
        ({"ssim": float("nan")}, "ssim must be finite"),
        ({"colour": float("inf")}, "colour must be finite"),
        ({"mse": 0.0}, "every loss weight is 0"),
        ({"clip": 0.1}, "needs clip_loss"),
    ],
)
def test_bad_weights_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FusionLoss(**kwargs)


def test_the_clip_module_is_a_submodule_only_when_used():
    used = FusionLoss(clip=0.5, clip_loss=MeanBrightness())
    assert isinstance(used.clip_loss, MeanBrightness)
    assert "clip_loss" in dict(used.named_children())
