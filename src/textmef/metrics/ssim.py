"""Structural similarity (SSIM) against a reference image.

Wang, Bovik, Sheikh and Simoncelli, "Image Quality Assessment: From Error Visibility to
Structural Similarity", IEEE TIP 13(4), 2004, computed exactly as scikit-image's
``structural_similarity(pred, target, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=data_range, channel_axis=-1)`` does, which is what
MEF papers report against ground truth.

scikit-image filters with ``scipy.ndimage.gaussian_filter(sigma=1.5, truncate=3.5)``: a
separable kernel of radius int(3.5 * 1.5 + 0.5) = 5, i.e. 11 taps, normalised to sum 1.
It filters the whole image with reflected borders but then drops a border of
(win_size - 1) // 2 = 5 pixels before averaging, exactly the pixels whose window reaches
the padding. Only "valid" windows are therefore computed here, and the border mode never
matters.
"""

from __future__ import annotations

import torch

from textmef.metrics._common import ReferenceMetric, gaussian_taps, gaussian_valid

__all__ = ["SSIM", "ssim"]

SIGMA = 1.5
TRUNCATE = 3.5  # scikit-image's value for gaussian_weights=True
RADIUS = int(TRUNCATE * SIGMA + 0.5)  # scipy.ndimage's rule: 5
WIN_SIZE = 2 * RADIUS + 1  # 11, the window of Wang et al.
K1 = 0.01
K2 = 0.03
# scipy.ndimage's kernel for sigma 1.5, truncate 3.5 is fspecial's 11-tap Gaussian.
_TAPS = gaussian_taps(WIN_SIZE, SIGMA)


def check_ssim_inputs(
    pred: torch.Tensor, target: torch.Tensor, data_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two images as (B, C, H, W), or ValueError naming what SSIM cannot take."""
    if pred.shape != target.shape:
        raise ValueError(f"pred is {tuple(pred.shape)} but target is {tuple(target.shape)}")
    if pred.dim() == 3:
        pred, target = pred.unsqueeze(0), target.unsqueeze(0)
    if pred.dim() != 4:
        raise ValueError(f"expected (B, C, H, W) or (C, H, W) images, got {tuple(pred.shape)}")
    if min(pred.shape[-2:]) < WIN_SIZE:
        raise ValueError(
            f"images of {tuple(pred.shape[-2:])} are smaller than the {WIN_SIZE}x{WIN_SIZE} "
            "SSIM window"
        )
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    return pred, target


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Mean SSIM per image, as scikit-image computes it with Gaussian weights.

    For each channel, local Gaussian-weighted means, variances and the covariance
    (population form, no N/(N-1) factor) give the SSIM map
    ((2 mu_x mu_y + C1)(2 s_xy + C2)) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)) with
    C1 = (0.01 data_range)^2 and C2 = (0.03 data_range)^2. The map is averaged over all
    windows that lie inside the image, then over channels. Computed in float64.

    Args:
        pred: images, (B, C, H, W) or (C, H, W), values on the scale of ``data_range``.
        target: reference images, same shape as ``pred``. SSIM is symmetric in the two.
        data_range: the dynamic range of the values, 1.0 for images in [0, 1].
        reduction: ``"mean"`` for the batch mean, a 0-dim tensor, or ``"none"`` for a
            (B,) tensor (a (1,) tensor for (C, H, W) input).

    Returns:
        SSIM in [-1, 1], 1 for identical images, float64. Differentiable with respect to
        both inputs.

    Raises:
        ValueError: the shapes differ or are not 3-D/4-D, a side is shorter than the
            11-pixel window, ``data_range`` is not positive, or ``reduction`` is unknown.
    """
    pred, target = check_ssim_inputs(pred, target, data_range)
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")

    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    # One channel at a time keeps the five float64 moment images in cache-sized pieces;
    # every channel has the same number of windows, so the mean over (C, H', W') is the mean
    # over channels of the per-channel means.
    per_channel = []
    for ch in range(pred.shape[1]):
        x = pred[:, ch].to(torch.float64)
        y = target[:, ch].to(torch.float64)
        # One filtering pass over the five stacked moment images instead of five passes.
        moments = gaussian_valid(torch.stack([x, y, x * x, y * y, x * y]), _TAPS)
        mu_x, mu_y, xx, yy, xy = moments.unbind(0)
        var_x = xx - mu_x * mu_x
        var_y = yy - mu_y * mu_y
        cov = xy - mu_x * mu_y
        ssim_map = ((2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)) / (
            (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
        )
        per_channel.append(ssim_map.mean(dim=(1, 2)))
    values = torch.stack(per_channel).mean(dim=0)
    return values.mean() if reduction == "mean" else values


class SSIM(ReferenceMetric):
    """``nn.Module`` form of :func:`ssim`, called as ``m(pred, target)``.

    Args:
        data_range: the peak value / dynamic range, 1.0 for images in [0, 1].
        reduction: ``"mean"`` or ``"none"``.
    """

    function = staticmethod(ssim)
