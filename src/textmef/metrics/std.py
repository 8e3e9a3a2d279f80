"""Standard deviation (SD) of a fused image, as the MEFB benchmark computes it.

MEFB's ``metricsSD.m`` (whose function is named ``metricsVariance``) reports, despite that
name, the population standard deviation of each channel of the fused image, averaged over
channels: a measure of global contrast. The sources play no part.
"""

from __future__ import annotations

import torch

from textmef.metrics._common import MEFBMetric, as_batches, reduce, to_255

__all__ = ["StandardDeviation", "standard_deviation"]


def standard_deviation(
    fused: torch.Tensor, *, quantize: bool = True, reduction: str = "mean"
) -> torch.Tensor:
    """Population standard deviation of each channel on the 0..255 scale, averaged.

    Mapping to MEFB: images in [0, 1] go to MEFB's 0..255 scale through
    :func:`~textmef.metrics._common.to_255` (``quantize=True`` rounds to 8-bit levels,
    which recovers an 8-bit file's values exactly). Per channel,
    SD_c = sqrt(sum (x - mean)^2 / (H W)), with N = H W in the denominator, not N - 1;
    SD is the mean over channels. ``quantize=False`` skips the rounding, for unquantised
    network outputs (MEFB itself only saw 8-bit images).

    Args:
        fused: the fused image(s), (B, C, H, W) or (C, H, W), floats in [0, 1].
        quantize: round to 8-bit levels first, as MEFB's uint8 input is.
        reduction: ``"mean"`` for the batch mean, a 0-dim tensor, or ``"none"`` for a
            (B,) tensor (a (1,) tensor for (C, H, W) input).

    Returns:
        SD in 0..255 units (at most 127.5), float64 on the input's device. Computed under
        ``torch.no_grad``: this is a metric, not a loss.

    Raises:
        TypeError: ``fused`` is not a floating-point tensor.
        ValueError: ``fused`` is not 3-D/4-D, or ``reduction`` is unknown.
    """
    (image,) = as_batches(fused, names=("fused",))
    with torch.no_grad():
        x = to_255(image, quantize)
        # Two passes (mean, then squared deviations) as MATLAB does: the one-pass
        # E[x^2] - E[x]^2 would cancel badly for bright, low-contrast images.
        centred = x - x.mean(dim=(2, 3), keepdim=True)
        values = centred.square_().mean(dim=(2, 3)).sqrt_().mean(dim=1)
    return reduce(values, reduction)


class StandardDeviation(MEFBMetric):
    """``nn.Module`` form of :func:`standard_deviation`, called as ``m(fused)``.

    Args:
        quantize: round inputs to 8-bit levels as MEFB's uint8 input is.
        reduction: ``"mean"`` or ``"none"``.
    """

    function = staticmethod(standard_deviation)
