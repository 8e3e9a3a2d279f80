"""Carry a low-resolution result to full resolution with a local affine colour transform.

The guided full-resolution path (``textmef fuse`` above :data:`DEFAULT_WORK_SIZE`) runs the
network on a downscaled pair and brings its result back to full size with the fast guided
filter's local linear model (He, Sun & Tang, *Guided Image Filtering*, TPAMI 2013; He & Sun,
*Fast Guided Filter*, 2015) in the form learned photo pipelines use to upsample an operator
(Chen et al., *Bilateral Guided Upsampling*, 2016; HDRNet's local affine colour transforms):

1. at the working size, fit in every window of radius ``r`` the affine map that takes the
   guide (here both exposures, six channels) to the network's output, by ridge regression
   with regulariser ``eps`` (:func:`fit_local_affine`);
2. average the maps of all windows covering a pixel (the guided filter's second box filter),
   upsample those smooth coefficients bilinearly and apply them to the full-resolution guide
   (:func:`apply_local_affine`, strip by strip so memory stays bounded).

Tone and colour come from the network (the maps reproduce its output where the guide can
explain it); detail and edges come from the full-resolution exposures, which the maps are
applied to, so an edge in the guide stays an edge and no tile seam can arise. Everything is
plain PyTorch and runs on any device.

Tensors follow the package convention: float (B, C, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from textmef.tiling import working_size

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_RADIUS",
    "DEFAULT_STRIP_PIXELS",
    "GuidedUpsample",
    "LocalAffine",
    "apply_local_affine",
    "box_filter",
    "downscale",
    "fit_local_affine",
    "guided_upsample",
]

# Window radius as a fraction of the working image's shorter side and the ridge
# regulariser: chosen on the held-out pairs (docs/performance.md, "Guided full resolution").
DEFAULT_RADIUS = 1 / 32
DEFAULT_EPS = 1e-4
# Full-resolution pixels per strip when the maps are applied: bounds the upsampled
# coefficients (one float per pixel per coefficient) to ~100 MB for a six-channel guide.
DEFAULT_STRIP_PIXELS = 1 << 18


@dataclass(frozen=True)
class LocalAffine:
    """Per-pixel affine maps from a C-channel guide to a 3-channel image, at a low size.

    Attributes:
        weight: (B, C, 3, h, w): output channel j at a pixel is
            ``sum_i weight[:, i, j] * guide[:, i] + bias[:, j]``.
        bias: (B, 3, h, w).
    """

    weight: torch.Tensor
    bias: torch.Tensor

    @property
    def size(self) -> tuple[int, int]:
        """(h, w) of the grid the maps are defined on."""
        return int(self.bias.shape[-2]), int(self.bias.shape[-1])


def box_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over the (2r+1)² window around every pixel, the window cut at the image edges.

    The cost does not grow with the radius, and sums are accumulated in float64 so the window
    means keep their precision for the covariances taken from them: OpenCV's box filter on
    the CPU (double accumulators, ~25x faster than the PyTorch form), cumulative sums in
    PyTorch elsewhere (e.g. on a GPU).

    Args:
        x: (B, C, H, W), float32 or float64.
        radius: window radius r >= 0.

    Returns:
        The window means, (B, C, H, W), in ``x``'s dtype.
    """
    if radius <= 0:
        return x.clone()
    height, width = x.shape[-2:]
    counts = _window_counts(height, width, radius, x.device, x.dtype)
    if x.device.type == "cpu":
        return _box_sum_opencv(x, radius) / counts
    sums = _box_sum_1d(_box_sum_1d(x.double(), radius, dim=-2), radius, dim=-1)
    return sums.to(x.dtype) / counts


def _window_counts(
    height: int, width: int, radius: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """How many pixels each cut window holds: a separable product of two 1-D counts."""

    def count(length: int) -> torch.Tensor:
        index = torch.arange(length, device=device)
        return ((index + radius).clamp(max=length - 1) - (index - radius).clamp(min=0) + 1).to(
            dtype
        )

    return count(height)[:, None] * count(width)[None, :]


def _box_sum_opencv(x: torch.Tensor, radius: int) -> torch.Tensor:
    import cv2

    size = (2 * radius + 1, 2 * radius + 1)
    planes = x.detach().contiguous().reshape(-1, *x.shape[-2:]).numpy()
    out = torch.empty(planes.shape, dtype=x.dtype)
    sums = out.numpy()
    for i, plane in enumerate(planes):
        cv2.boxFilter(plane, -1, size, dst=sums[i], normalize=False, borderType=cv2.BORDER_CONSTANT)
    return out.reshape(x.shape)


def _box_sum_1d(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    length = x.shape[dim]
    padded = torch.cumsum(F.pad(x, _pad_for(dim, 1)), dim=dim)  # padded[k] = sum x[:k]
    index = torch.arange(length, device=x.device)
    upper = (index + radius + 1).clamp(max=length)
    lower = (index - radius).clamp(min=0)
    return padded.index_select(dim, upper) - padded.index_select(dim, lower)


def _pad_for(dim: int, before: int) -> tuple[int, ...]:
    # F.pad lists (left, right) pairs from the last dimension backwards.
    return (before, 0) if dim == -1 else (0, 0, before, 0)


def fit_local_affine(
    guide: torch.Tensor, target: torch.Tensor, radius: int, eps: float = DEFAULT_EPS
) -> LocalAffine:
    """Fit, in every window, the ridge-regressed affine map from ``guide`` to ``target``.

    For the window around pixel k: ``a_k = (Σ_k + eps I)⁻¹ cov_k(guide, target)`` and
    ``b_k = mean_k(target) - a_kᵀ mean_k(guide)``; the maps of all windows covering a pixel
    are then averaged (He et al.'s guided filter, with a multi-channel guide).

    Args:
        guide: (B, C, h, w).
        target: (B, 3, h, w), same batch and size.
        radius: window radius in pixels of this size.
        eps: ridge regulariser: larger values give flatter maps (smoother output).

    Returns:
        The averaged maps, float32 (window sums accumulated and systems solved in float64).
    """
    if guide.shape[0] != target.shape[0] or guide.shape[-2:] != target.shape[-2:]:
        raise ValueError(
            f"guide {tuple(guide.shape)} and target {tuple(target.shape)} differ in batch or size"
        )
    g, t = guide.float(), target.float()
    channels = g.shape[1]
    mean_g, mean_t = box_filter(g, radius), box_filter(t, radius)
    rows, cols = torch.triu_indices(channels, channels).tolist()
    products = box_filter(g[:, rows] * g[:, cols], radius)
    cov: dict[tuple[int, int], torch.Tensor] = {}
    for k, (i, j) in enumerate(zip(rows, cols)):
        cov[j, i] = products[:, k].double() - mean_g[:, i].double() * mean_g[:, j].double()
        if i == j:
            cov[i, i] += eps
    del products
    cross = box_filter(g.unsqueeze(2) * t.unsqueeze(1), radius).flatten(1, 2)
    cross = cross.unflatten(1, (channels, 3)).double() - (
        mean_g.unsqueeze(2).double() * mean_t.unsqueeze(1).double()
    )
    weight = _solve_per_pixel(cov, cross, channels).float()  # (B, C, 3, h, w)
    del cov, cross
    bias = mean_t - (weight * mean_g.unsqueeze(2)).sum(1)
    weight = box_filter(weight.flatten(1, 2), radius).unflatten(1, (channels, 3))
    return LocalAffine(weight=weight.float(), bias=box_filter(bias, radius).float())


def _solve_per_pixel(
    cov: dict[tuple[int, int], torch.Tensor], rhs: torch.Tensor, channels: int
) -> torch.Tensor:
    """Solve ``cov x = rhs`` at every pixel by Cholesky, written out over whole images.

    ``cov[i, j]`` (i >= j) holds entry (i, j) of the symmetric positive-definite C x C
    system as a (B, h, w) image; ``rhs`` is (B, C, K, h, w). A batched LAPACK call would cost
    microseconds per pixel; these O(C³) image-wide operations cost milliseconds in all.
    """
    lower: dict[tuple[int, int], torch.Tensor] = {}
    for j in range(channels):
        diagonal = cov[j, j] - sum((lower[j, k] ** 2 for k in range(j)), torch.zeros(()))
        lower[j, j] = diagonal.clamp(min=torch.finfo(diagonal.dtype).tiny).sqrt()
        for i in range(j + 1, channels):
            dot = sum((lower[i, k] * lower[j, k] for k in range(j)), torch.zeros(()))
            lower[i, j] = (cov[i, j] - dot) / lower[j, j]
    columns = rhs.unbind(1)  # C tensors of (B, K, h, w)
    forward: list[torch.Tensor] = []
    for i in range(channels):
        value = columns[i] - sum((lower[i, k].unsqueeze(1) * forward[k] for k in range(i)), 0)
        forward.append(value / lower[i, i].unsqueeze(1))
    solution: list[torch.Tensor] = [forward[0]] * channels
    for i in reversed(range(channels)):
        value = forward[i] - sum(
            (lower[k, i].unsqueeze(1) * solution[k] for k in range(i + 1, channels)), 0
        )
        solution[i] = value / lower[i, i].unsqueeze(1)
    return torch.stack(solution, 1)


def _bilinear_taps(
    size_in: int, size_out: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights of bilinear resizing, as ``F.interpolate`` computes them
    (``align_corners=False``): pixel centres aligned, edges clamped."""
    position = (torch.arange(size_out, device=device, dtype=torch.float64) + 0.5) * (
        size_in / size_out
    ) - 0.5
    position = position.clamp(min=0)
    low = position.floor().long().clamp(max=size_in - 1)
    high = (low + 1).clamp(max=size_in - 1)
    return low, high, (position - low).float()


def apply_local_affine(
    maps: LocalAffine,
    guide: torch.Tensor | Sequence[torch.Tensor],
    *,
    strip_pixels: int = DEFAULT_STRIP_PIXELS,
    out: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Apply maps fitted at a low size to a full-size guide, upsampling them bilinearly.

    The full-size coefficients are never stored for the whole image: the numba kernel
    interpolates them pixel by pixel, the PyTorch form one strip of rows at a time, so the
    extra memory is bounded whatever the image size.

    Args:
        maps: from :func:`fit_local_affine`.
        guide: (B, C, H, W), or two tensors whose channels concatenate to C (saves
            concatenating two full-size exposures).
        strip_pixels: full-size pixels per strip of the PyTorch form.
        out: (B, 3, H, W) float32 tensor to write into (default: a new one).
        backend: ``"numba"`` (CPU, float32), ``"torch"`` (any device), or ``"auto"``: numba
            for float32 CPU tensors when it is installed, else PyTorch.

    Returns:
        (B, 3, H, W), unclamped: equal (to float rounding) to upsampling every map with
        ``F.interpolate(mode="bilinear", align_corners=False)`` and applying it at once.
    """
    parts = [guide] if isinstance(guide, torch.Tensor) else list(guide)
    if not 1 <= len(parts) <= 2:
        raise ValueError(f"the guide comes in one or two parts, got {len(parts)}")
    batch, _, height, width = parts[0].shape
    channels = sum(int(p.shape[1]) for p in parts)
    if channels != maps.weight.shape[1]:
        raise ValueError(f"maps are for a {maps.weight.shape[1]}-channel guide, got {channels}")
    device = parts[0].device
    if out is None:
        out = torch.empty(batch, 3, height, width, device=device)
    coefficients = torch.cat([maps.weight.flatten(1, 2), maps.bias], 1).to(device, out.dtype)
    low_h, low_w = maps.size
    rows = _bilinear_taps(low_h, height, device)
    cols = _bilinear_taps(low_w, width, device)
    if _use_numba(backend, parts, out):
        from textmef import _guided_kernels

        apply_maps: Any = _guided_kernels.apply_maps  # a numba dispatcher
        empty = torch.empty(0, height, width)
        for b in range(batch):
            second = parts[1][b] if len(parts) == 2 else empty
            apply_maps(
                *(t.numpy() for t in (coefficients[b], *rows, *cols)),
                parts[0][b].contiguous().numpy(),
                second.contiguous().numpy(),
                out[b].numpy(),
            )
        return out
    _apply_torch(coefficients, parts, rows, cols, strip_pixels, out)
    return out


def _use_numba(backend: str, parts: list[torch.Tensor], out: torch.Tensor) -> bool:
    if backend not in ("auto", "numba", "torch"):
        raise ValueError(f"unknown backend {backend!r}; use auto, numba or torch")
    from textmef.ssm.scan import numba_available

    cpu_float = all(t.device.type == "cpu" and t.dtype == torch.float32 for t in (*parts, out))
    if backend == "numba" and not cpu_float:
        raise ValueError("the numba backend takes float32 CPU tensors")
    if backend == "auto":
        return cpu_float and out.is_contiguous() and numba_available()
    return backend == "numba"


def _apply_torch(
    coefficients: torch.Tensor,
    parts: list[torch.Tensor],
    rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    cols: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    strip_pixels: int,
    out: torch.Tensor,
) -> None:
    row_low, row_high, row_t = rows
    col_low, col_high, col_t = cols
    height, width = out.shape[-2:]
    channels = sum(int(p.shape[1]) for p in parts)
    step = max(1, strip_pixels // max(width, 1))
    for top in range(0, height, step):
        strip_rows = slice(top, min(top + step, height))
        t = row_t[strip_rows][:, None]
        strip = torch.lerp(
            coefficients[..., row_low[strip_rows], :], coefficients[..., row_high[strip_rows], :], t
        )
        strip = torch.lerp(strip[..., col_low], strip[..., col_high], col_t)
        weight = strip[:, : 3 * channels].unflatten(1, (channels, 3))
        result = strip[:, 3 * channels :].clone()
        first = 0
        for part in parts:
            values = part[..., strip_rows, :].to(result.dtype)
            for i in range(part.shape[1]):
                result.addcmul_(weight[:, first + i], values[:, i : i + 1])
            first += part.shape[1]
        out[..., strip_rows, :] = result


def downscale(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Area-average ``image`` (B, C, H, W) to (height, width) (no aliasing, no blur beyond
    the averaging); the image itself when the size already matches."""
    if image.shape[-2:] == (height, width):
        return image
    return F.adaptive_avg_pool2d(image, (height, width))


def window_radius(height: int, width: int, fraction: float = DEFAULT_RADIUS) -> int:
    """The fitting window's radius for a working image of this size (at least 1 pixel)."""
    return max(1, round(fraction * min(height, width)))


def guided_upsample(
    low: torch.Tensor,
    guide: torch.Tensor | Sequence[torch.Tensor],
    *,
    guide_low: torch.Tensor | None = None,
    fit_size: int | None = None,
    radius: float = DEFAULT_RADIUS,
    eps: float = DEFAULT_EPS,
    strip_pixels: int = DEFAULT_STRIP_PIXELS,
) -> torch.Tensor:
    """Bring ``low`` (B, 3, h, w) to the guide's size, edge-aware.

    The guide is downscaled to (h, w), maps from it to ``low`` are fitted there
    (:func:`fit_local_affine`, window radius ``radius`` times the shorter side) and applied
    to the full-size guide (:func:`apply_local_affine`).

    Args:
        low: the low-resolution result, e.g. the network's output on a downscaled pair.
        guide: the full-resolution guide (B, C, H, W), or parts of it (see
            :func:`apply_local_affine`), with detail and edges where they belong.
        guide_low: the guide already downscaled to (h, w), all C channels (saves
            downscaling the full-size guide again).
        fit_size: fit on at most ``fit_size`` squared pixels (both ``low`` and the guide
            area-downscaled further): the maps are smooth, so a smaller grid costs little
            (He & Sun's fast guided filter). None fits at (h, w).
        radius: window radius as a fraction of the shorter side of the fitting grid.
        eps: ridge regulariser of the fit.
        strip_pixels: full-size pixels per strip when the maps are applied.

    Returns:
        (B, 3, H, W), unclamped.
    """
    parts = [guide] if isinstance(guide, torch.Tensor) else list(guide)
    height, width = low.shape[-2:]
    if guide_low is None:
        guide_low = torch.cat([downscale(p, height, width) for p in parts], 1)
    if fit_size is not None:
        height, width = working_size(height, width, fit_size)
    maps = fit_local_affine(
        downscale(guide_low, height, width),
        downscale(low, height, width).float(),
        window_radius(height, width, radius),
        eps,
    )
    return apply_local_affine(maps, parts, strip_pixels=strip_pixels)


class GuidedUpsample(nn.Module):
    """:func:`guided_upsample` as a module: ``m(low, guide) -> full``.

    Args:
        radius: window radius as a fraction of the low image's shorter side.
        eps: ridge regulariser.
    """

    def __init__(self, radius: float = DEFAULT_RADIUS, eps: float = DEFAULT_EPS) -> None:
        super().__init__()
        if not (radius > 0 and math.isfinite(radius)) or not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"radius and eps must be positive, got {radius} and {eps}")
        self.radius, self.eps = radius, eps

    def forward(
        self, low: torch.Tensor, guide: torch.Tensor | Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """See :func:`guided_upsample`."""
        return guided_upsample(low, guide, radius=self.radius, eps=self.eps)

    def extra_repr(self) -> str:
        return f"radius={self.radius}, eps={self.eps}"
