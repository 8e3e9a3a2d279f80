"""MEFB's "fusion PSNR" of a fused image against both source exposures.

This is the PSNR that the MEFB benchmark reports (``metricsPsnr.m``), not the standard
full-reference PSNR of :mod:`textmef.metrics.psnr`. It compares the fused image with the
under- and the over-exposed source, and in place of the mean squared error it uses
sqrt(SSE) / N, the root of the summed squared error divided by the pixel count
(= RMSE / sqrt(N)). Its values therefore sit around 50-60 dB and grow with image size:
tiling an image 2x2 raises its score by 10 log10(2) ~ 3.01 dB for the same per-pixel
error. Compare scores only between images of one size, as MEFB does.
"""

from __future__ import annotations

import torch

from textmef.metrics._common import MEFBMetric, as_batches, reduce, to_255

__all__ = ["PSNRMEFB", "psnr_mefb"]

PEAK = 255.0  # MEFB's MAX = 2^8 - 1


def psnr_mefb(
    under: torch.Tensor,
    over: torch.Tensor,
    fused: torch.Tensor,
    *,
    quantize: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """MEFB fusion PSNR per channel, averaged over channels.

    Mapping to MEFB: images in [0, 1] go to MEFB's 0..255 scale through
    :func:`~textmef.metrics._common.to_255` (``quantize=True`` rounds to 8-bit levels,
    which recovers an 8-bit file's values exactly). Per channel c, with N = H W,

    * "mse"(X, F) = sqrt(sum (X_c - F_c)^2) / N,
    * MES = ("mse"(A, F) + "mse"(B, F)) / 2 for A = ``under`` and B = ``over``,
    * PSNR_c = 20 log10(255 / sqrt(MES)) = 20 log10(255) - 10 log10(MES),

    and the result is the mean of PSNR_c over channels (source channel k against fused
    channel k, as MEFB's wrapper does for RGB). MEFB's other branches (gray sources with
    an RGB fused image) cannot occur here: all three inputs must have one shape.

    Args:
        under: the under-exposed source(s), (B, C, H, W) or (C, H, W), floats in [0, 1].
        over: the over-exposed source(s), same shape. The score is symmetric in the two
            sources.
        fused: the fused image(s), same shape.
        quantize: round to 8-bit levels first, as MEFB's uint8 input is.
        reduction: ``"mean"`` for the batch mean, a 0-dim tensor, or ``"none"`` for a
            (B,) tensor (a (1,) tensor for (C, H, W) input).

    Returns:
        PSNR in dB, float64 on the input's device. A channel whose fused values equal
        both sources' exactly has MES 0 and scores ``inf``, and so does any mean over it.
        Computed under ``torch.no_grad``: this is a metric, not a loss.

    Raises:
        TypeError: an input is not a floating-point tensor.
        ValueError: the shapes differ or are not 3-D/4-D, or ``reduction`` is unknown.
    """
    a, b, f = as_batches(under, over, fused, names=("under", "over", "fused"))
    with torch.no_grad():
        f255 = to_255(f, quantize)
        n = f255.shape[-2] * f255.shape[-1]
        mse_a = (to_255(a, quantize) - f255).square_().sum(dim=(2, 3)).sqrt_() / n
        mse_b = (to_255(b, quantize) - f255).square_().sum(dim=(2, 3)).sqrt_() / n
        mes = (mse_a + mse_b) / 2.0
        # MEFB's own form; MES = 0 (fused equals both sources) gives +inf, not an error.
        per_channel = 20.0 * torch.log10(PEAK / mes.sqrt())
        values = per_channel.mean(dim=1)
    return reduce(values, reduction)


class PSNRMEFB(MEFBMetric):
    """``nn.Module`` form of :func:`psnr_mefb`, called as ``m(under, over, fused)``.

    Args:
        quantize: round inputs to 8-bit levels as MEFB's uint8 input is.
        reduction: ``"mean"`` or ``"none"``.
    """

    function = staticmethod(psnr_mefb)
