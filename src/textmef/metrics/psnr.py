"""Peak signal-to-noise ratio against a reference image.

This is the standard full-reference PSNR that MEF papers report against ground truth (the
SICE / Mobile protocol), equal to ``skimage.metrics.peak_signal_noise_ratio``. It is not
MEFB's no-reference "fusion PSNR", which compares the fused image with both sources and
uses sqrt(SSE)/N in place of the mean squared error.
"""

from __future__ import annotations

import torch

from textmef.metrics._common import ReferenceMetric, reduce

__all__ = ["PSNR", "psnr"]


def psnr(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """PSNR = 10 log10(data_range^2 / MSE), one value per image.

    The mean squared error of each image is taken over all its pixels and channels, in
    float64. With ``reduction="mean"`` the per-image PSNRs are averaged, which is how
    papers average PSNR over a test set (not the PSNR of the pooled MSE).

    Identical images have MSE 0 and PSNR ``inf`` (as in scikit-image); a batch mean that
    includes such an image is ``inf`` too.

    Args:
        pred: images, (B, C, H, W) or (C, H, W), values on the scale of ``data_range``.
        target: reference images, same shape as ``pred``.
        data_range: the peak value, 1.0 for images in [0, 1] and 255 for 8-bit values.
        reduction: ``"mean"`` for the batch mean, a 0-dim tensor, or ``"none"`` for a
            (B,) tensor (a (1,) tensor for (C, H, W) input).

    Returns:
        PSNR in dB, float64. Differentiable with respect to ``pred`` where finite.

    Raises:
        ValueError: the shapes differ or are not 3-D/4-D, ``data_range`` is not positive,
            or ``reduction`` is unknown.
    """
    pred, target = _as_batches(pred, target)
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    diff = pred.to(torch.float64) - target.to(torch.float64)
    mse = diff.square().mean(dim=(1, 2, 3))
    # log10 of a 0 MSE is -inf, so identical images give +inf rather than an error.
    values = 10.0 * torch.log10(data_range**2 / mse)
    return reduce(values, reduction)


class PSNR(ReferenceMetric):
    """``nn.Module`` form of :func:`psnr`, called as ``m(pred, target)``.

    Args:
        data_range: the peak value / dynamic range, 1.0 for images in [0, 1].
        reduction: ``"mean"`` or ``"none"``.
    """

    function = staticmethod(psnr)


def _as_batches(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"pred is {tuple(pred.shape)} but target is {tuple(target.shape)}")
    if pred.dim() == 3:
        return pred.unsqueeze(0), target.unsqueeze(0)
    if pred.dim() != 4:
        raise ValueError(f"expected (B, C, H, W) or (C, H, W) images, got {tuple(pred.shape)}")
    return pred, target
