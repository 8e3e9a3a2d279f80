"""Mean fusion, the simplest baseline: the per-pixel average of the two exposures."""

from __future__ import annotations

import torch
from torch import nn

from textmef.baselines._common import finish, prepare_pair


def mean_fusion(under: torch.Tensor, over: torch.Tensor) -> torch.Tensor:
    """Average the two exposures pixel by pixel.

    The floor any fusion method must beat: no weighting, so it keeps the under image's
    dark areas and the over image's blown highlights at half strength each.

    Args:
        under: the under-exposed image(s), (B, 3, H, W) or (3, H, W), float, RGB in [0, 1].
        over: the over-exposed image(s), same shape and device.

    Returns:
        float32 tensor of the input's shape and device, values in [0, 1].

    Raises:
        TypeError: an input is not a float tensor.
        ValueError: the shapes or devices differ, or the shape is not an RGB image (batch).
    """
    device = under.device if isinstance(under, torch.Tensor) else torch.device("cpu")
    under, over, single = prepare_pair(under, over, "mean")
    # Clamp the inputs first, as the other baselines do, so out-of-range input cannot cancel.
    fused = (under.clamp(0.0, 1.0) + over.clamp(0.0, 1.0)) * 0.5
    return finish(fused, single, device)


class MeanFusion(nn.Module):
    """:func:`mean_fusion` as a module, called like the fusion network: ``m(under, over)``."""

    def forward(self, under: torch.Tensor, over: torch.Tensor) -> torch.Tensor:
        """Fuse by averaging; see :func:`mean_fusion`."""
        return mean_fusion(under, over)
