"""Autograd-friendly windowed statistics shared by the structure losses.

Windows are filtered by shift-and-add (:func:`textmef.metrics._common.gaussian_valid`, which
autograd differentiates: its in-place sums never overwrite anything the backward pass
needs), not by ``conv2d``. On GPUs from Ampere on, PyTorch runs float32 convolutions in TF32
by default, and TF32's 10-bit mantissa turns the variances E[x²] − E[x]² of 0..255 values
into noise larger than SSIM's constants; elementwise adds are plain float32 on every device.
On a CPU the two cost about the same. Only "valid" windows are computed, as the metrics do,
so no padding rule is involved.
"""

from __future__ import annotations

import torch

from textmef.metrics._common import GAUSS_11, RGB2GRAY_WEIGHTS
from textmef.metrics._common import gaussian_valid as _shift_and_add_valid

__all__ = ["box_sum_valid", "compute_dtype", "gaussian_valid", "rgb_to_gray"]


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, or float64 when an input already is (half precision is promoted)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def gaussian_valid(x: torch.Tensor, taps: list[float] = GAUSS_11) -> torch.Tensor:
    """Gaussian-weighted 'valid' window means over the last two dims of ``x``.

    Args:
        x: images, (..., H, W).
        taps: the normalised 1-D window (default: the 11-tap, sigma 1.5 SSIM window).

    Returns:
        (..., H - len(taps) + 1, W - len(taps) + 1).
    """
    return _shift_and_add_valid(x, taps)


def box_sum_valid(x: torch.Tensor, size: int) -> torch.Tensor:
    """Sums over every 'valid' ``size`` x ``size`` window over the last two dims of ``x``."""
    return _shift_and_add_valid(x, [1.0] * size)


def rgb_to_gray(images: torch.Tensor) -> torch.Tensor:
    """MATLAB's ``rgb2gray`` weights on (..., 3, H, W) -> (..., H, W); gray (..., 1, H, W) passes.

    No clamping or rounding (the metric's ``quantize=False`` path): both would cut the
    gradient.
    """
    if images.shape[-3] == 1:
        return images[..., 0, :, :]
    r, g, b = images.unbind(-3)
    return RGB2GRAY_WEIGHTS[0] * r + RGB2GRAY_WEIGHTS[1] * g + RGB2GRAY_WEIGHTS[2] * b
