"""Colour loss: how far each pixel's RGB direction (hue and saturation) is from the reference.

Per pixel, 1 − cos of the angle between the fused and the reference RGB vectors, averaged
over pixels: 0 when every pixel has the reference's chromaticity, whatever its brightness,
so the term constrains colour and leaves luminance to MSE/SSIM. Washed-out (desaturated)
and hue-shifted pixels both raise it.

Dark pixels have no reliable colour (a pixel of value (2, 1, 1)/255 points anywhere), and
the angle's gradient grows like 1 / |pixel| there. Both vectors are therefore extended by
a constant fourth component ``eps`` before the cosine::

    cos_eps(f, g) = (f·g + eps²) / sqrt((|f|² + eps²) (|g|² + eps²))

This is an ordinary cosine (of (f, eps) and (g, eps)), so it is at most 1, with equality
exactly when f = g; pixels much darker than ``eps`` count little (two black pixels agree
perfectly), and the gradient is bounded by about 1 / eps. For pixels much brighter than
``eps`` it is the plain cosine, invariant to brightness.

1 − cos rather than the angle itself: d acos(c) / dc is infinite at c = 1, so the angle's
gradient is NaN wherever the colours already agree.
"""

from __future__ import annotations

import torch
from torch import nn

from textmef.losses._filters import compute_dtype

__all__ = ["DEFAULT_EPS", "ColourLoss", "colour_loss"]

DEFAULT_EPS = 0.02  # about 5 levels of an 8-bit image: below this, colour is mostly noise


def colour_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    eps: float = DEFAULT_EPS,
    reduction: str = "mean",
) -> torch.Tensor:
    """Mean over pixels of 1 − cos_eps(pred pixel, target pixel), see the module docstring.

    Args:
        pred: RGB images, (B, 3, H, W) or (3, H, W), values in [0, 1].
        target: reference images, the same shape.
        eps: the fourth component that guards dark pixels (> 0).
        reduction: ``"mean"`` (0-dim) or ``"none"`` ((B,) per-image losses).

    Returns:
        Loss in [0, 2], 0 exactly when ``pred`` equals ``target``; float32, or float64 for
        float64 inputs. Differentiable with respect to both inputs.

    Raises:
        ValueError: mismatched shapes, not 3 channels, ``eps`` not positive or an unknown
            ``reduction``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred is {tuple(pred.shape)} but target is {tuple(target.shape)}")
    if pred.dim() == 3:
        pred, target = pred.unsqueeze(0), target.unsqueeze(0)
    if pred.dim() != 4 or pred.shape[1] != 3:
        raise ValueError(f"expected RGB (B, 3, H, W) or (3, H, W), got {tuple(pred.shape)}")
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    dtype = compute_dtype(pred, target)
    f, g = pred.to(dtype), target.to(dtype)
    e2 = eps * eps
    dot = (f * g).sum(1) + e2
    # rsqrt of a product that is at least eps^4 > 0: finite value and gradient everywhere.
    cosine = dot * torch.rsqrt(((f * f).sum(1) + e2) * ((g * g).sum(1) + e2))
    losses = (1.0 - cosine).mean(dim=(-2, -1))
    return losses.mean() if reduction == "mean" else losses


class ColourLoss(nn.Module):
    """``nn.Module`` form of :func:`colour_loss`, called as ``loss(pred, target)``.

    Args:
        eps: the fourth component that guards dark pixels.
        reduction: ``"mean"`` or ``"none"``.
    """

    def __init__(self, eps: float = DEFAULT_EPS, reduction: str = "mean") -> None:
        super().__init__()
        self.eps = eps
        self.reduction = reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Colour loss of ``pred`` against ``target``."""
        return colour_loss(pred, target, self.eps, self.reduction)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, reduction={self.reduction!r}"
