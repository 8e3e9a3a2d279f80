"""Spatial frequency (SF) of a fused image, as the MEFB benchmark computes it.

SF (``metricsSpatial_frequency.m``) measures the overall activity of an image: the energy
of its differences between horizontally and vertically adjacent pixels. The sources play
no part.
"""

from __future__ import annotations

import torch

from textmef.metrics._common import MEFBMetric, as_batches, reduce, to_255

__all__ = ["SpatialFrequency", "spatial_frequency"]


def spatial_frequency(
    fused: torch.Tensor, *, quantize: bool = True, reduction: str = "mean"
) -> torch.Tensor:
    """sqrt(RF + CF) per channel on the 0..255 scale, averaged over channels.

    Mapping to MEFB: images in [0, 1] go to MEFB's 0..255 scale through
    :func:`~textmef.metrics._common.to_255` (``quantize=True`` rounds to 8-bit levels,
    which recovers an 8-bit file's values exactly). Per channel,
    RF = sum (x[i, j] - x[i, j-1])^2 / (H W) over all horizontally adjacent pairs and
    CF = sum (x[i, j] - x[i-1, j])^2 / (H W) over all vertically adjacent pairs, without
    padding; SF_c = sqrt(RF + CF) and SF is the mean over channels.

    MEFB divides both sums by H W, not by the number of pairs H (W - 1) or (H - 1) W, and
    takes one square root of the sum rather than sqrt(RF^2 + CF^2) of separate RMS values
    as some papers define SF; this follows MEFB.

    Args:
        fused: the fused image(s), (B, C, H, W) or (C, H, W), floats in [0, 1].
        quantize: round to 8-bit levels first, as MEFB's uint8 input is.
        reduction: ``"mean"`` for the batch mean, a 0-dim tensor, or ``"none"`` for a
            (B,) tensor (a (1,) tensor for (C, H, W) input).

    Returns:
        SF in 0..255 units per pixel, float64 on the input's device; 0 for a constant
        image. Computed under ``torch.no_grad``: this is a metric, not a loss.

    Raises:
        TypeError: ``fused`` is not a floating-point tensor.
        ValueError: ``fused`` is not 3-D/4-D, or ``reduction`` is unknown.
    """
    (image,) = as_batches(fused, names=("fused",))
    with torch.no_grad():
        x = to_255(image, quantize)
        n = x.shape[-2] * x.shape[-1]
        row_frequency = torch.diff(x, dim=3).square_().sum(dim=(2, 3)) / n
        column_frequency = torch.diff(x, dim=2).square_().sum(dim=(2, 3)) / n
        values = (row_frequency + column_frequency).sqrt_().mean(dim=1)
    return reduce(values, reduction)


class SpatialFrequency(MEFBMetric):
    """``nn.Module`` form of :func:`spatial_frequency`, called as ``m(fused)``.

    Args:
        quantize: round inputs to 8-bit levels as MEFB's uint8 input is.
        reduction: ``"mean"`` or ``"none"``.
    """

    function = staticmethod(spatial_frequency)
