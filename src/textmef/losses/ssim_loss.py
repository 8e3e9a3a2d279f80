"""SSIM loss against a reference: 1 − SSIM, as :func:`textmef.metrics.ssim` defines SSIM.

Same definition as the metric (scikit-image's Gaussian SSIM: 11-tap window with sigma 1.5,
population moments, C1 = (0.01 L)^2, C2 = (0.03 L)^2, only windows inside the image, mean
over windows and then over channels), so ``1 - ssim_loss(x, y)`` is the metric's value up to
float32 rounding (measured: within 2e-6 on synthetic and real images). The metric computes
in float64 with in-place filters; this computes in float32 (float64 inputs stay float64)
with convolutions, the form that trains.
"""

from __future__ import annotations

import torch
from torch import nn

from textmef.losses._filters import compute_dtype, gaussian_valid
from textmef.metrics.ssim import K1, K2, check_ssim_inputs

__all__ = ["SSIMLoss", "ssim_loss", "ssim_per_image"]


def ssim_per_image(
    pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0
) -> torch.Tensor:
    """SSIM of each image, (B,), differentiable with respect to both inputs.

    Args:
        pred: images, (B, C, H, W) or (C, H, W), on the scale of ``data_range``.
        target: reference images, the same shape.
        data_range: dynamic range of the values (1.0 for [0, 1]).

    Returns:
        (B,) SSIM values in [-1, 1] ((1,) for (C, H, W) input); float32, or float64 for
        float64 inputs.

    Raises:
        ValueError: mismatched or unsupported shapes, sides shorter than the 11-pixel window,
            or a non-positive ``data_range``.
    """
    pred, target = check_ssim_inputs(pred, target, data_range)
    dtype = compute_dtype(pred, target)
    x, y = pred.to(dtype), target.to(dtype)
    channels = x.shape[1]
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    # All five moment images of all channels in one filtering pass.
    moments = gaussian_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1))
    mu_x, mu_y, xx, yy, xy = moments.split(channels, dim=1)
    # No clamping of the variances: the constants keep both denominators >= C1 C2 > 0, and a
    # clamp would stop the gradient exactly where rounding makes a flat window negative.
    var_x = xx - mu_x * mu_x
    var_y = yy - mu_y * mu_y
    cov = xy - mu_x * mu_y
    ssim_map = ((2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    )
    # Every channel has the same number of windows: the mean over (C, H', W') is the mean
    # over channels of the per-channel means, as the metric takes it.
    return ssim_map.mean(dim=(1, 2, 3))


def ssim_loss(
    pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """1 − SSIM(pred, target), the batch mean by default.

    Args:
        pred: images, (B, C, H, W) or (C, H, W), on the scale of ``data_range``.
        target: reference images, the same shape.
        data_range: dynamic range of the values (1.0 for [0, 1]).
        reduction: ``"mean"`` (0-dim) or ``"none"`` ((B,) per-image losses).

    Returns:
        Loss in [0, 2], 0 for identical images.

    Raises:
        ValueError: see :func:`ssim_per_image`; also an unknown ``reduction``.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    losses = 1.0 - ssim_per_image(pred, target, data_range)
    return losses.mean() if reduction == "mean" else losses


class SSIMLoss(nn.Module):
    """``nn.Module`` form of :func:`ssim_loss`, called as ``loss(pred, target)``.

    Args:
        data_range: dynamic range of the values (1.0 for [0, 1]).
        reduction: ``"mean"`` or ``"none"``.
    """

    def __init__(self, data_range: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        self.data_range = data_range
        self.reduction = reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """1 − SSIM of ``pred`` against ``target``."""
        return ssim_loss(pred, target, self.data_range, self.reduction)

    def extra_repr(self) -> str:
        return f"data_range={self.data_range}, reduction={self.reduction!r}"
