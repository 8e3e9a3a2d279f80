"""Classic fusion baselines to compare the network against.

Each baseline is a function ``xxx_fusion(under, over)`` and an ``nn.Module`` without
parameters, both called like :class:`textmef.models.fusionnet.FusionNet`: two float
tensors of shape (B, 3, H, W) or (3, H, W), RGB in [0, 1], in; one fused float32 tensor of
the same shape and device, in [0, 1], out. ``mertens(frames)`` and ``enfuse_frames(frames)``
take any number of frames as numpy arrays (exposure stacks). The registry that names them
for the benchmark and the web app is :mod:`textmef.methods`.
"""

from textmef.baselines.enfuse import (
    EnfuseError,
    EnfuseFusion,
    EnfuseNotFoundError,
    enfuse_available,
    enfuse_frames,
    enfuse_fusion,
    enfuse_version,
)
from textmef.baselines.mean import MeanFusion, mean_fusion
from textmef.baselines.mertens import MertensFusion, mertens, mertens_fusion

__all__ = [
    "EnfuseError",
    "EnfuseFusion",
    "EnfuseNotFoundError",
    "MeanFusion",
    "MertensFusion",
    "enfuse_available",
    "enfuse_frames",
    "enfuse_fusion",
    "enfuse_version",
    "mean_fusion",
    "mertens",
    "mertens_fusion",
]
