"""Entropy (EN) of a fused image, as the MEFB benchmark computes it (``metricsEntropy.m``).

EN measures how much information the fused image's histogram carries. Per channel, MEFB
counts the 0..255 values in 256 bins of ``floor(value)`` and takes the Shannon entropy of
the normalised histogram in bits; the channel values are averaged. The sources play no part.
"""

from __future__ import annotations

import torch

from textmef.metrics._common import MEFBMetric, as_batches, reduce, to_255

__all__ = ["Entropy", "entropy"]

LEVELS = 256  # one histogram bin per 8-bit level


def entropy(fused: torch.Tensor, *, quantize: bool = True, reduction: str = "mean") -> torch.Tensor:
    """Shannon entropy of each channel's 256-bin histogram, averaged over channels.

    Mapping to MEFB: images in [0, 1] go to MEFB's 0..255 scale through
    :func:`~textmef.metrics._common.to_255`; with ``quantize=True`` they are rounded to
    8-bit levels, which recovers an 8-bit file's values exactly. Each channel then gets
    a histogram of ``floor(value)`` over bins 0..255, p = count / (H W), and
    EN_c = -sum_{p > 0} p log2 p; EN is the mean over channels (R, G, B for colour, as
    MEFB's per-channel wrapper does; a gray image has one channel).

    With ``quantize=False`` values are floored into their bin exactly as MEFB's
    ``X(floor(v) + 1)`` indexing would do for double input, so e.g. 10.2 and 10.9 share
    bin 10, and 255.0 falls in the last bin. This differs from ``quantize=True``, which
    rounds (10.9 -> 11) before binning.

    Args:
        fused: the fused image(s), (B, C, H, W) or (C, H, W), floats in [0, 1].
        quantize: round to 8-bit levels first, as MEFB's uint8 input is (see above).
        reduction: ``"mean"`` for the batch mean, a 0-dim tensor, or ``"none"`` for a
            (B,) tensor (a (1,) tensor for (C, H, W) input).

    Returns:
        EN in bits, between 0 (a constant image) and 8, float64 on the input's device.
        Computed under ``torch.no_grad``: this is a metric, not a loss.

    Raises:
        TypeError: ``fused`` is not a floating-point tensor.
        ValueError: ``fused`` is not 3-D/4-D, or ``reduction`` is unknown.
    """
    (image,) = as_batches(fused, names=("fused",))
    with torch.no_grad():
        x = to_255(image, quantize)
        b, c, h, w = x.shape
        # to_255 clamps to [0, 255], so every floored value is a valid bin 0..255.
        levels = x.floor_().to(torch.int64).reshape(b * c, h * w)
        # One bincount for all channels: offset each channel's levels into its own 256 bins.
        offsets = torch.arange(b * c, device=x.device).unsqueeze(1) * LEVELS
        counts = torch.bincount((levels + offsets).reshape(-1), minlength=b * c * LEVELS)
        p = counts.view(b, c, LEVELS).to(torch.float64) / (h * w)
        # Empty bins contribute nothing (0 log 0 := 0), as MEFB skips P(k) == 0.
        terms = torch.where(p > 0, p * torch.log2(p), torch.zeros_like(p))
        values = -terms.sum(dim=2).mean(dim=1)
    return reduce(values, reduction)


class Entropy(MEFBMetric):
    """``nn.Module`` form of :func:`entropy`, called as ``m(fused)``.

    Args:
        quantize: round inputs to 8-bit levels as MEFB's uint8 input is.
        reduction: ``"mean"`` or ``"none"``.
    """

    function = staticmethod(entropy)
