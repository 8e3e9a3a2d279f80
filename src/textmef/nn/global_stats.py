"""Image-wide statistics that tiles can share.

Two operations of the fusion network look at the whole image: the InstanceNorm in each
encoder (per-channel mean and variance) and the global average pooling of the channel
attention in the CGA fusion and the refine head. Fused tile by tile, each tile would
normalise and gate with its own statistics and tiles would differ in tone. Inside
:func:`sharing_statistics` those operations go through a :class:`SharedStatistics`:

- while it records, each operation computes as usual and adds the sums it needs over the
  pixels it is told count (:attr:`SharedStatistics.region`), so statistics can be gathered
  from one pass over a whole (e.g. downscaled) image or from many tiles;
- while it replays, each operation uses the recorded image-wide values instead of its
  input's own, so every tile is normalised and gated as the whole image would be.

Outside the context the operations are the plain torch ones (training, whole images).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["SharedStatistics", "global_mean", "instance_norm", "sharing_statistics"]


@dataclass
class _Moments:
    """Running float64 sums of one operation's input per (batch, channel)."""

    total: torch.Tensor
    squares: torch.Tensor | None
    count: int = 0

    def mean(self) -> torch.Tensor:
        return self.total / self.count

    def variance(self) -> torch.Tensor:
        assert self.squares is not None
        return (self.squares / self.count - self.mean() ** 2).clamp_min(0)


@dataclass
class SharedStatistics:
    """Recorded image-wide statistics, keyed by the module that uses them.

    Attributes:
        recording: True while passes add to the sums; False to replay them.
        region: (rows, cols) of the current input whose pixels count when recording
            (None: all of them); a tile's outer margin is left out because its features
            see zero padding instead of the neighbouring pixels.
    """

    recording: bool = True
    region: tuple[slice, slice] | None = None
    _moments: dict[int, _Moments] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._moments)

    def add(self, module: nn.Module, x: torch.Tensor, squares: bool) -> None:
        """Add the sums of ``x`` (B, C, H, W) over :attr:`region` for ``module``."""
        if self.region is not None:
            x = x[..., self.region[0], self.region[1]]
        x = x.detach().to(torch.float64)
        total = x.sum((2, 3), keepdim=True)
        sq = x.square().sum((2, 3), keepdim=True) if squares else None
        moments = self._moments.get(id(module))
        if moments is None:
            self._moments[id(module)] = _Moments(total, sq, x.shape[2] * x.shape[3])
            return
        moments.total += total
        if sq is not None:
            assert moments.squares is not None
            moments.squares += sq
        moments.count += x.shape[2] * x.shape[3]

    def moments(self, module: nn.Module) -> _Moments:
        try:
            return self._moments[id(module)]
        except KeyError:
            raise RuntimeError(
                "no statistics recorded for this module: record a pass of the same model first"
            ) from None


_ACTIVE: ContextVar[SharedStatistics | None] = ContextVar("textmef_shared_stats", default=None)


@contextmanager
def sharing_statistics(stats: SharedStatistics) -> Iterator[SharedStatistics]:
    """Route the network's global operations through ``stats`` inside the block."""
    token = _ACTIVE.set(stats)
    try:
        yield stats
    finally:
        _ACTIVE.reset(token)


def instance_norm(norm: nn.InstanceNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)``, or normalised with the shared image-wide mean and variance."""
    stats = _ACTIVE.get()
    if stats is None:
        return norm(x)
    if stats.recording:
        stats.add(norm, x, squares=True)
        return norm(x)
    moments = stats.moments(norm)
    mean = moments.mean().to(x.dtype)
    scale = torch.rsqrt(moments.variance() + norm.eps).to(x.dtype)
    out = (x - mean) * scale
    if norm.affine:
        out = out * norm.weight[:, None, None] + norm.bias[:, None, None]
    return out


def global_mean(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x.mean((2, 3), keepdim=True)``, or the shared image-wide mean for ``module``."""
    stats = _ACTIVE.get()
    if stats is None:
        return x.mean((2, 3), keepdim=True)
    if stats.recording:
        stats.add(module, x, squares=False)
        return x.mean((2, 3), keepdim=True)
    return stats.moments(module).mean().to(x.dtype)
