"""Edge intensity (EI) of a fused image, as the MEFB benchmark computes it.

EI (``metricsEdge_intensity.m``) is the mean Sobel gradient magnitude of the fused image:
a measure of how strong its edges are. The sources play no part.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from textmef.metrics._common import MEFBMetric, as_batches, reduce, to_255

__all__ = ["EdgeIntensity", "edge_intensity"]


def edge_intensity(
    fused: torch.Tensor, *, quantize: bool = True, reduction: str = "mean"
) -> torch.Tensor:
    """Mean Sobel magnitude sqrt(gx^2 + gy^2) over all pixels and channels, 0..255 scale.

    Mapping to MEFB: images in [0, 1] go to MEFB's 0..255 scale through
    :func:`~textmef.metrics._common.to_255` (``quantize=True`` rounds to 8-bit levels,
    which recovers an 8-bit file's values exactly). With w = ``fspecial('sobel')`` =
    [[1, 2, 1], [0, 0, 0], [-1, -2, -1]], gx = ``imfilter(F, w, 'replicate')`` and
    gy = ``imfilter(F, w', 'replicate')``: correlation, per channel, with the border
    pixels repeated outward, output the size of the input. EI is the mean of
    sqrt(gx^2 + gy^2) over all pixels and channels, i.e. the mean of the per-channel
    means.

    Args:
        fused: the fused image(s), (B, C, H, W) or (C, H, W), floats in [0, 1].
        quantize: round to 8-bit levels first, as MEFB's uint8 input is.
        reduction: ``"mean"`` for the batch mean, a 0-dim tensor, or ``"none"`` for a
            (B,) tensor (a (1,) tensor for (C, H, W) input).

    Returns:
        EI in 0..255 units of a Sobel response (which reaches 4 x 255 along one
        axis, so EI can exceed 255), float64 on the input's device; 0 for a constant
        image. Computed under ``torch.no_grad``: this is a metric, not a loss.

    Raises:
        TypeError: ``fused`` is not a floating-point tensor.
        ValueError: ``fused`` is not 3-D/4-D, or ``reduction`` is unknown.
    """
    (image,) = as_batches(fused, names=("fused",))
    with torch.no_grad():
        x = to_255(image, quantize)
        p = F.pad(x, (1, 1, 1, 1), mode="replicate")
        # The Sobel kernel is separable, w = [1, 0, -1]^T [1, 2, 1]: smooth along one axis,
        # difference along the other, by shifted slices (float64 conv2d is slow on CPU).
        smooth_w = p[..., :, :-2] + 2.0 * p[..., :, 1:-1] + p[..., :, 2:]  # (H + 2, W)
        gx = smooth_w[..., :-2, :] - smooth_w[..., 2:, :]  # w: +row above, -row below
        smooth_h = p[..., :-2, :] + 2.0 * p[..., 1:-1, :] + p[..., 2:, :]  # (H, W + 2)
        gy = smooth_h[..., :, :-2] - smooth_h[..., :, 2:]  # w': +left, -right
        # sqrt of the sum of squares, as MEFB writes it (hypot would differ in the last ulp).
        magnitude = gx.square_().add_(gy.square_()).sqrt_()
        values = magnitude.mean(dim=(1, 2, 3))
    return reduce(values, reduction)


class EdgeIntensity(MEFBMetric):
    """``nn.Module`` form of :func:`edge_intensity`, called as ``m(fused)``.

    Args:
        quantize: round inputs to 8-bit levels as MEFB's uint8 input is.
        reduction: ``"mean"`` or ``"none"``.
    """

    function = staticmethod(edge_intensity)
