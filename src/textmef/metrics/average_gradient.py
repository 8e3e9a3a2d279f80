"""Average gradient (AG) of a fused image, as the MEFB benchmark computes it.

AG (``metricsAvg_gradient.m``) measures sharpness: the mean magnitude of the image's
finite-difference gradient. The sources play no part.
"""

from __future__ import annotations

import torch

from textmef.metrics._common import MEFBMetric, as_batches, reduce, to_255

__all__ = ["AverageGradient", "average_gradient"]


def average_gradient(
    fused: torch.Tensor, *, quantize: bool = True, reduction: str = "mean"
) -> torch.Tensor:
    """Mean of sqrt((gx^2 + gy^2) / 2) per channel on the 0..255 scale, averaged.

    Mapping to MEFB: images in [0, 1] go to MEFB's 0..255 scale through
    :func:`~textmef.metrics._common.to_255` (``quantize=True`` rounds to 8-bit levels,
    which recovers an 8-bit file's values exactly). Per channel, gx and gy are MATLAB's
    ``gradient(band, 1, 1)``: central differences (f[i+1] - f[i-1]) / 2 inside and
    one-sided differences at the borders, the same as ``numpy.gradient`` with
    ``edge_order=1``. With s = sqrt((gx^2 + gy^2) / 2),
    AG_c = sum of s over all H W pixels / ((H - 1)(W - 1)); AG is the mean over channels.

    The divisor (H - 1)(W - 1) while the sum runs over H W pixels is MEFB's (it slightly
    inflates AG of small images); it is kept to match MEFB's numbers.

    Args:
        fused: the fused image(s), (B, C, H, W) or (C, H, W), floats in [0, 1].
        quantize: round to 8-bit levels first, as MEFB's uint8 input is.
        reduction: ``"mean"`` for the batch mean, a 0-dim tensor, or ``"none"`` for a
            (B,) tensor (a (1,) tensor for (C, H, W) input).

    Returns:
        AG in 0..255 units per pixel, float64 on the input's device; 0 for a constant
        image. Computed under ``torch.no_grad``: this is a metric, not a loss.

    Raises:
        TypeError: ``fused`` is not a floating-point tensor.
        ValueError: ``fused`` is not 3-D/4-D, has a side shorter than 2 pixels (the
            divisor (H - 1)(W - 1) would be 0), or ``reduction`` is unknown.
    """
    (image,) = as_batches(fused, names=("fused",))
    h, w = image.shape[-2:]
    if h < 2 or w < 2:
        raise ValueError(f"average gradient needs images of at least 2x2, got {h}x{w}")
    with torch.no_grad():
        x = to_255(image, quantize)
        # torch.gradient with the default edge_order=1 is numpy.gradient, i.e. MATLAB's.
        gy, gx = torch.gradient(x, dim=(2, 3))
        s = gx.square_().add_(gy.square_()).div_(2.0).sqrt_()
        values = (s.sum(dim=(2, 3)) / ((h - 1) * (w - 1))).mean(dim=1)
    return reduce(values, reduction)


class AverageGradient(MEFBMetric):
    """``nn.Module`` form of :func:`average_gradient`, called as ``m(fused)``.

    Args:
        quantize: round inputs to 8-bit levels as MEFB's uint8 input is.
        reduction: ``"mean"`` or ``"none"``.
    """

    function = staticmethod(average_gradient)
