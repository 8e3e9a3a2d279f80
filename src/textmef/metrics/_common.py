"""Input handling shared by the MEFB-style metrics: shapes, the 0..255 scale, reductions.

MEFB reads 8-bit files with ``imread`` and computes on their 0..255 values as doubles. Our
images are floats in [0, 1] (what :func:`textmef.io.read_image` returns), so every MEFB
metric first maps them back with :func:`to_255`: times 255 in float64 and, with
``quantize=True``, rounded to the nearest level, which recovers an 8-bit file's values
exactly. ``quantize=False`` keeps unquantised network outputs as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GAUSS_11",
    "RGB2GRAY_WEIGHTS",
    "MEFBMetric",
    "ReferenceMetric",
    "as_batches",
    "downsample2",
    "gaussian_taps",
    "gaussian_valid",
    "reduce",
    "to_255",
]

# MATLAB rgb2gray coefficients (first row of the inverse NTSC matrix), as MEFB uses them.
RGB2GRAY_WEIGHTS = (0.298936021293775, 0.587043074451121, 0.114020904254103)


def as_batches(
    *images: torch.Tensor, names: tuple[str, ...] | None = None
) -> tuple[torch.Tensor, ...]:
    """Validate same-shaped float images and return them as (B, C, H, W).

    Args:
        *images: tensors of one shape, (B, C, H, W) or (C, H, W), floating point.
        names: how to call each input in error messages (default ``image0``, ...).

    Raises:
        TypeError: an input is not a floating-point tensor (a uint8 tensor would silently
            be scaled by 255 twice).
        ValueError: shapes differ, are not 3-D/4-D, or have neither 1 nor 3 channels
            (e.g. an (H, W, 3) array passed as it is).
    """
    names = names or tuple(f"image{i}" for i in range(len(images)))
    for name, t in zip(names, images):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            kind = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise TypeError(f"{name} must be a float tensor in [0, 1], got {kind}")
    shape = images[0].shape
    for name, t in zip(names, images):
        if t.shape != shape:
            raise ValueError(f"{name} is {tuple(t.shape)} but {names[0]} is {tuple(shape)}")
    if len(shape) not in (3, 4):
        raise ValueError(f"expected (B, C, H, W) or (C, H, W) images, got {tuple(shape)}")
    if shape[-3] not in (1, 3):
        raise ValueError(
            f"expected 1 (gray) or 3 (RGB) channels in dimension -3, got "
            f"{tuple(shape)}; channels-last arrays need .permute(2, 0, 1)"
        )
    if len(shape) == 3:
        return tuple(t.unsqueeze(0) for t in images)
    return images


def to_255(images: torch.Tensor, quantize: bool = True) -> torch.Tensor:
    """Images in [0, 1] -> float64 on MEFB's 0..255 scale (a new tensor).

    Args:
        images: any shape, floats in [0, 1] (values outside are clamped).
        quantize: round to integer levels, half up, as an 8-bit file stores them.
    """
    # float64 before scaling, so that 255 * x is exact for float32 input before rounding.
    out = images.to(torch.float64, copy=True).mul_(255.0).clamp_(0.0, 255.0)
    if quantize:
        out.add_(0.5).floor_()  # MATLAB's round (half away from zero) for values >= 0
    return out


def reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """``"mean"`` -> 0-dim batch mean; ``"none"`` -> the (B,) values unchanged."""
    if reduction == "mean":
        return values.mean()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def gaussian_taps(size: int = 11, sigma: float = 1.5) -> list[float]:
    """The normalised 1-D Gaussian whose outer product is ``fspecial('gaussian', size, sigma)``.

    Also scikit-image's SSIM window (scipy.ndimage's kernel, truncate 3.5 -> radius 5).
    """
    half = size // 2
    g = [math.exp(-(i * i) / (2.0 * sigma * sigma)) for i in range(-half, half + 1)]
    total = math.fsum(g)
    return [v / total for v in g]


GAUSS_11 = gaussian_taps()  # the 11x11, sigma 1.5 window of SSIM, MEF-SSIM and TMQI


def gaussian_valid(t: torch.Tensor, taps: list[float] = GAUSS_11) -> torch.Tensor:
    """'valid' separable filter over the last two dims (correlation; the taps are symmetric).

    By shift-and-add with in-place accumulation: torch has no fast float64 convolution on
    CPU, and this is ~10x quicker there, works on any device, and autograd handles it.
    """
    size = len(taps)
    ho = t.shape[-2] - size + 1
    v = t[..., 0:ho, :] * taps[0]
    for i in range(1, size):
        v.add_(t[..., i : i + ho, :], alpha=taps[i])
    wo = t.shape[-1] - size + 1
    out = v[..., 0:wo] * taps[0]
    for i in range(1, size):
        out.add_(v[..., i : i + wo], alpha=taps[i])
    return out


def downsample2(x: torch.Tensor) -> torch.Tensor:
    """``imfilter(x, ones(2)/4, 'symmetric', 'same')`` then ``x(1:2:end, 1:2:end)``.

    The 2x2 kernel is anchored at its top-left tap, so output (i, j) averages x[2i:2i+2,
    2j:2j+2]; on an odd side the last window sticks out by one symmetrically padded pixel,
    a copy of its neighbour, so it is the mean of the pixels inside, which is exactly what
    ``avg_pool2d(..., ceil_mode=True)`` divides by. Output is ceil(H/2) x ceil(W/2).
    Works on (N, H, W) and (N, C, H, W).
    """
    return F.avg_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)


class MEFBMetric(nn.Module):
    """``nn.Module`` form of an MEFB metric function with ``quantize`` and ``reduction``.

    Subclasses set ``function`` (wrapped in ``staticmethod``); ``forward`` passes its image
    arguments through in the function's order.

    Args:
        quantize: round inputs to 8-bit levels as MEFB's uint8 input is.
        reduction: ``"mean"`` or ``"none"``.
    """

    function: ClassVar[Callable[..., torch.Tensor]]

    def __init__(self, quantize: bool = True, reduction: str = "mean") -> None:
        super().__init__()
        self.quantize = quantize
        self.reduction = reduction

    def forward(self, *images: torch.Tensor) -> torch.Tensor:
        """The metric of ``images`` (as the wrapped function takes them)."""
        return self.function(*images, quantize=self.quantize, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"quantize={self.quantize}, reduction={self.reduction!r}"


class ReferenceMetric(nn.Module):
    """``nn.Module`` form of a full-reference metric ``function(pred, target, data_range,
    reduction)``; subclasses set ``function`` (wrapped in ``staticmethod``).

    Args:
        data_range: the peak value / dynamic range, 1.0 for images in [0, 1].
        reduction: ``"mean"`` or ``"none"``.
    """

    function: ClassVar[Callable[..., torch.Tensor]]

    def __init__(self, data_range: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        self.data_range = data_range
        self.reduction = reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The metric of ``pred`` against ``target``."""
        return self.function(pred, target, self.data_range, self.reduction)

    def extra_repr(self) -> str:
        return f"data_range={self.data_range}, reduction={self.reduction!r}"
