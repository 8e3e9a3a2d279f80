"""MEF-SSIM loss: 1 − MEF-SSIM of a fused image against its sources, differentiable.

MEF-Net (Ma et al., "Deep Guided Learning for Fast Multi-Exposure Image Fusion", IEEE TIP
2019) trains on MEF-SSIM directly. This module computes the definition that
:func:`textmef.metrics.mef_ssim` scores (MEFB's ``mef_ms_ssim.m``; Ma, Zeng and Wang 2015),
not MEF-Net's simplified training variant (which takes the structure of the single
highest-contrast source per window):

* gray images on a 0..255 scale (MATLAB's ``rgb2gray`` weights);
* per 11x11 box window, a desired patch built from the K sources: their mean-removed
  structures weighted by ``(ed_k / 11)^p`` (``ed_k`` the patch contrast + 0.001, ``p`` =
  tan(π/2 · R), at most 10, with R the structure-consistency ratio), rescaled to the
  highest source contrast;
* compared with the fused patch by the contrast/structure part of SSIM over the Gaussian
  window (sigma 1.5, C = (0.03 · 255)^2);
* means over all valid windows at 3 dyadic scales (2x2 box, subsample), combined as a
  weighted geometric mean with MS-SSIM's weights (0.0448, 0.2856, 0.3001), renormalised.

Differences from the metric, all deliberate:

* float32 (float64 inputs stay float64) and convolutions instead of the metric's in-place
  float64 shift-and-add; no 8-bit rounding or clamping of the fused image (both would cut
  the gradient; the metric's ``quantize=False`` path on in-range images is what this
  matches: to ~1e-7 on synthetic stacks and SICE pairs, measured).
* Gradients flow to the fused image only. The desired patch depends on the sources alone,
  so it is computed under ``torch.no_grad``: its square roots (contrasts of flat source
  patches are exactly 0) and divisions never enter the backward pass. On the fused side
  there is no square root and every denominator is at least C, so a flat fused image has
  finite gradients; the metric's Cauchy-Schwarz clamp of the covariance (rounding
  insurance) is left out, as it would zero the gradient of a flat fused window.
* The geometric mean is taken as exp(sum_s w_s log q_s), with log q continued below
  q = 0.01 as log 0.01 + (q − 0.01) (slope 1 instead of 1/q: a kink, like ReLU's). The
  metric returns NaN for a negative per-scale score (MATLAB would return a complex
  number), and q^w with w < 1 is infinitely steep at 0; the continuation gives every
  output, even one with inverted structure, a finite loss and a gradient (bounded by about
  5) that still points towards more structure, without vanishing (the score stays above
  e^-5.6). Where every per-scale score is at least 0.01 (any remotely sensible fusion)
  the value is the metric's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from textmef.losses._filters import box_sum_valid, compute_dtype, gaussian_valid, rgb_to_gray
from textmef.metrics._common import GAUSS_11, downsample2
from textmef.metrics.mef_ssim import ED_OFFSET, EPS, MAX_POWER, SCALE_WEIGHTS, WINDOW, C

__all__ = ["MEFSSIMLoss", "mef_ssim_loss", "mef_ssim_per_image"]

# Below this, log(per-scale score) is continued with slope 1 (see the module docstring).
LOG_LINEAR_BELOW = 0.01
# p = tan(π/2 R) reaches MAX_POWER = 10 at R = 2/π atan(10) = 0.9365, so capping R at 0.99
# changes no weight, and keeps float32's tan away from its pole: float32(π/2) is above π/2,
# where tan is hugely negative instead of hugely positive.
_MAX_RATIO = 0.99
_N = float(WINDOW * WINDOW)
_GAUSS_MAX = GAUSS_11[WINDOW // 2] ** 2  # largest weight of the 2-D Gaussian window


def mef_ssim_per_image(
    fused: torch.Tensor, sources: torch.Tensor | Sequence[torch.Tensor]
) -> torch.Tensor:
    """Multi-scale MEF-SSIM of each fused image against its K sources, (B,).

    Args:
        fused: fused images, (B, 3, H, W) RGB or (B, 1, H, W) gray, values in [0, 1] (values
            outside are used as they are, see the module docstring).
        sources: the exposures, (B, K, C, H, W) with K >= 2, or a sequence of K (B, C, H, W)
            tensors such as ``(under, over)``; the same C, H, W as ``fused``. Treated as
            data: no gradient flows to them.

    Returns:
        (B,) scores in (0, 1]; float32, or float64 for float64 inputs. Differentiable with
        respect to ``fused``. Equal to the metric (``quantize=False``) wherever all three
        per-scale scores are at least 0.01; see the module docstring for below.

    Raises:
        ValueError: mismatched shapes, fewer than 2 sources, or sides shorter than the 41
            pixels three scales of 11x11 windows need.
    """
    stack = _check(fused, sources)
    dtype = compute_dtype(fused, stack)
    f = 255.0 * rgb_to_gray(fused.to(dtype))  # (B, H, W)
    with torch.no_grad():
        x = 255.0 * rgb_to_gray(stack.detach().to(dtype).clamp(0.0, 1.0))  # (B, K, H, W)
    scores = []
    for level in range(len(SCALE_WEIGHTS)):
        if level > 0:
            f = downsample2(f.unsqueeze(1))[:, 0]
            x = downsample2(x)
        scores.append(_single_scale(x, f))
    q = torch.stack(scores, dim=1)  # (B, 3)
    w = torch.tensor(SCALE_WEIGHTS, dtype=q.dtype, device=q.device)
    return torch.exp((_log_continued(q) * (w / w.sum())).sum(dim=1))


def _log_continued(q: torch.Tensor) -> torch.Tensor:
    """log q for q >= LOG_LINEAR_BELOW, continued with slope 1 below it (never NaN)."""
    c = LOG_LINEAR_BELOW
    return torch.log(q.clamp(min=c)) + (q - c).clamp(max=0.0)


def mef_ssim_loss(
    fused: torch.Tensor,
    sources: torch.Tensor | Sequence[torch.Tensor],
    reduction: str = "mean",
) -> torch.Tensor:
    """1 − MEF-SSIM(fused; sources), the batch mean by default.

    Args:
        fused: fused images, (B, 3, H, W) or (B, 1, H, W), values in [0, 1].
        sources: (B, K, C, H, W), or a sequence of K (B, C, H, W) tensors such as
            ``(under, over)``.
        reduction: ``"mean"`` (0-dim) or ``"none"`` ((B,) per-image losses).

    Returns:
        Loss >= 0, 0 when every fused window has the desired structure and contrast.

    Raises:
        ValueError: see :func:`mef_ssim_per_image`; also an unknown ``reduction``.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    losses = 1.0 - mef_ssim_per_image(fused, sources)
    return losses.mean() if reduction == "mean" else losses


class MEFSSIMLoss(nn.Module):
    """``nn.Module`` form of :func:`mef_ssim_loss`, called as ``loss(fused, sources)``.

    Args:
        reduction: ``"mean"`` or ``"none"``.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(
        self, fused: torch.Tensor, sources: torch.Tensor | Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """1 − MEF-SSIM of ``fused`` against ``sources``; see :func:`mef_ssim_loss`."""
        return mef_ssim_loss(fused, sources, self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


def _check(fused: torch.Tensor, sources: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Validate the shapes; return the sources as (B, K, C, H, W)."""
    if not isinstance(sources, torch.Tensor):
        sources = list(sources)
        if any(s.shape != fused.shape for s in sources):
            shapes = [tuple(s.shape) for s in sources]
            raise ValueError(f"sources {shapes} must each have fused's shape {tuple(fused.shape)}")
        sources = torch.stack(sources, dim=1) if sources else fused.new_empty(0)
    if fused.dim() != 4 or fused.shape[1] not in (1, 3):
        raise ValueError(f"fused must be (B, 3, H, W) or (B, 1, H, W), got {tuple(fused.shape)}")
    if sources.dim() != 5 or sources.shape[:1] + sources.shape[2:] != fused.shape:
        raise ValueError(
            f"sources must be (B, K, C, H, W) matching fused {tuple(fused.shape)}, "
            f"got {tuple(sources.shape)}"
        )
    if sources.shape[1] < 2:
        raise ValueError(f"MEF-SSIM needs at least 2 sources, got {sources.shape[1]}")
    min_side = 4 * (WINDOW - 1) + 1  # the coarsest scale, ceil(side / 4), needs one window
    if min(fused.shape[-2:]) < min_side:
        raise ValueError(
            f"images of {tuple(fused.shape[-2:])} are too small: three scales of "
            f"{WINDOW}x{WINDOW} windows need each side to be at least {min_side} pixels"
        )
    return sources


def _desired_patch_statistics(
    x: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per valid window: coefficients a_k, source Gaussian means, var(r) and the rescaling.

    The desired patch is r = s · sum_k a_k (x_k − mu_k) (box means mu_k, s the rescaling to
    the highest source contrast). It is linear in the sources, so its norm and Gaussian
    variance are quadratic forms in the windowed covariances of source pairs; r itself never
    materialises.

    Args:
        x: sources, (B, K, H, W) gray on 0..255, each centred on its image mean:
            covariances are shift-invariant, and smaller float32 moments cancel less in
            E[xy] - E[x]E[y].

    Returns:
        a (B, K, H', W'), Gaussian means of the sources (B, K, H', W'), the Gaussian variance
        of the rescaled r (B, H', W') and the scale s (B, H', W').
    """
    k_count = x.shape[1]
    pairs = [(k, j) for k in range(k_count) for j in range(k, k_count)]
    products = torch.stack([x[:, k] * x[:, j] for k, j in pairs], dim=1)
    box = box_sum_valid(torch.cat([x, products], dim=1), WINDOW)
    gauss = gaussian_valid(torch.cat([x, products], dim=1))
    sx, gx = box[:, :k_count], gauss[:, :k_count]
    # Window covariance sums, sum_w (x_k - mu_k)(x_j - mu_j), and Gaussian covariances.
    box_cov = {
        (k, j): box[:, k_count + i] - sx[:, k] * sx[:, j] / _N for i, (k, j) in enumerate(pairs)
    }
    gauss_cov = {
        (k, j): gauss[:, k_count + i] - gx[:, k] * gx[:, j] for i, (k, j) in enumerate(pairs)
    }

    norms = torch.stack([box_cov[k, k].clamp(min=0.0).sqrt() for k in range(k_count)], dim=1)
    ed = norms + ED_OFFSET
    # ||sum_k (x_k - mu_k)||^2 is the sum of all pair covariances (off-diagonal ones twice).
    total = sum((1.0 if k == j else 2.0) * box_cov[k, j] for k, j in pairs)
    assert isinstance(total, torch.Tensor)
    ratio = (total.clamp(min=0.0).sqrt() + EPS) / (norms.sum(1) + EPS)
    ratio = ratio.clamp(min=EPS, max=_MAX_RATIO)
    power = torch.tan(ratio * (math.pi / 2.0)).clamp(max=MAX_POWER)
    weights = torch.exp(power.unsqueeze(1) * torch.log(ed / WINDOW)) + EPS
    weights = weights / weights.sum(1, keepdim=True)
    a = weights / ed
    max_ed = ed.amax(1)

    norm_r2 = torch.zeros_like(max_ed)
    var_r = torch.zeros_like(max_ed)
    for k, j in pairs:
        coef = a[:, k] * a[:, j] * (1.0 if k == j else 2.0)
        norm_r2 = norm_r2 + coef * box_cov[k, j]
        var_r = var_r + coef * gauss_cov[k, j]
    norm_r2 = norm_r2.clamp(min=0.0)
    # As the metric: sum g (r - mu)^2 <= max(g) ||r||^2 bounds away rounding residue.
    var_r = torch.minimum(var_r.clamp(min=0.0), _GAUSS_MAX * norm_r2)
    # MATLAB: if norm(r) > 0, r <- r / norm(r) * max_k ed_k.
    nonzero = norm_r2 > 0.0
    scale = torch.where(nonzero, max_ed / torch.where(nonzero, norm_r2, 1.0).sqrt(), 1.0)
    return a, gx, var_r * scale * scale, scale


def _single_scale(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Mean quality over all valid windows, (B,); x (B, K, H, W) sources, f (B, H, W) fused."""
    with torch.no_grad():
        xc = x - x.mean(dim=(-2, -1), keepdim=True)
        a, gx, var_r, scale = _desired_patch_statistics(xc)
    # The fused image is centred too (its mean taken as a constant: covariances do not
    # depend on it, so neither does the exact gradient).
    fc = (f - f.detach().mean(dim=(-2, -1), keepdim=True)).unsqueeze(1)
    fused_moments = gaussian_valid(torch.cat([fc, fc * fc, xc * fc], dim=1))
    gf, gff, gxf = fused_moments[:, 0], fused_moments[:, 1], fused_moments[:, 2:]
    var_f = (gff - gf * gf).clamp(min=0.0)
    # The metric clamps this to the Cauchy-Schwarz bound sqrt(var_r var_f) to absorb rounding;
    # here that would cut the gradient exactly where it matters most, at a flat fused window
    # (bound 0, while d cov / d f is not), and the residue it removes is far below C.
    cov_rf = ((gxf - gx * gf.unsqueeze(1)) * a).sum(1) * scale
    quality = (2.0 * cov_rf + C) / (var_r + var_f + C)
    return quality.mean(dim=(-2, -1))
