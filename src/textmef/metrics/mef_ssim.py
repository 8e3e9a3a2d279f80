"""MEF-SSIM: structural fidelity of a fused image to a stack of exposures.

Ma, Zeng and Wang, "Perceptual Quality Assessment for Multi-Exposure Image Fusion",
IEEE TIP 24(11), 2015. This module reproduces the number the MEFB benchmark (Zhang, 2021,
``metricsMef_ssim.m`` -> ``mef_ms_ssim.m`` -> ``mef_ssim.m``) reports, for any number of
exposures K >= 2.

For every 11x11 patch the method builds a "desired" patch from the K source patches: their
mean-removed structures, weighted by a contrast power whose exponent depends on how
consistent the structures are, and rescaled to the highest source contrast. The fused patch
is compared with it by the structure/contrast part of SSIM (Gaussian window, no luminance
term). Per-scale scores are averaged over all valid patch positions and combined over three
dyadic scales as a weighted geometric mean.

MATLAB evaluates this patch by patch. Here the desired patch never materialises: it is linear
in the sources, so its norm and its Gaussian-weighted moments are quadratic forms in local
box- and Gaussian-filtered products of source pairs (K(K+1)/2 of them), which are computed
with whole-tensor shift-and-add filters, a band of rows at a time to stay in the CPU cache.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from textmef.metrics._common import GAUSS_11, RGB2GRAY_WEIGHTS, downsample2, gaussian_valid

__all__ = ["MEFSSIM", "mef_ssim"]

# mef_ms_ssim.m: three scales, MS-SSIM weights of its first three scales, renormalised.
SCALE_WEIGHTS = (0.0448, 0.2856, 0.3001)
WINDOW = 11  # patch side: box window for the desired patch, Gaussian window for the comparison
SIGMA = 1.5
# Stabilising constant C = (K L)^2 with K = 0.03 and L = 255: MEFB works on 0..255 values.
C = (0.03 * 255.0) ** 2
EPS = 2.220446049250313e-16  # MATLAB eps, used by the reference to avoid 0/0 and 0**p
ED_OFFSET = 0.001  # mef_ssim.m adds this to every patch's contrast ("avoid instability")
MAX_POWER = 10.0  # mef_ssim.m clips the contrast exponent p at 10

# Elements per (pairs x band rows x width) working tensor; ~2 MB of float64 keeps the
# shift-and-add passes in L2/L3 instead of streaming every pass through main memory.
_BAND_ELEMENTS = 1 << 18


def mef_ssim(sources: torch.Tensor, fused: torch.Tensor, *, quantize: bool = True) -> torch.Tensor:
    """Multi-scale MEF-SSIM of a fused image against its exposure stack, as MEFB computes it.

    Mapping to MEFB: MEFB reads 8-bit files with ``imread`` and works on 0..255 values. Here
    inputs are floats in [0, 1] (as :func:`textmef.io.read_image` returns them), so they are
    multiplied by 255 and, with ``quantize=True``, clamped and rounded to integers (round
    half up), which recovers the file's uint8 values exactly for images read from 8-bit
    files. RGB images then go through MATLAB's ``rgb2gray`` on uint8: weights
    0.298936021293775 R + 0.587043074451121 G + 0.114020904254103 B, result rounded to an
    integer again. Everything after that is float64 on 0..255 values, like MEFB's doubles.
    With ``quantize=False`` neither rounding happens (MATLAB's behaviour for double images
    in 0..255); use it for scores of unquantised network outputs, knowing that MEFB itself
    only ever saw 8-bit images.

    Gray inputs skip ``rgb2gray``; in a mixed stack each RGB image is converted on its own.
    MEFB itself only scores RGB sources against an RGB fused image.

    The score is the weighted geometric mean, with weights (0.0448, 0.2856, 0.3001)
    renormalised, of the single-scale score at 3 scales; between scales every image is
    smoothed with a 2x2 box (last row/column repeated) and subsampled by 2.

    Args:
        sources: the K >= 2 exposures of one scene, (K, 3, H, W) RGB or (K, 1, H, W) gray,
            values in [0, 1]. Their order does not matter.
        fused: the fused image, (3, H, W), (1, 3, H, W), or the gray forms (1, H, W),
            (1, 1, H, W), values in [0, 1].
        quantize: round to 8-bit levels as MEFB's uint8 pipeline does (see above).

    Returns:
        0-dim float64 tensor on the inputs' device. At most 1, reached when every fused
        patch has the structure and contrast of the desired patch. If a per-scale score is
        negative (MATLAB would return a complex number) the result is NaN. Computed under
        ``torch.no_grad``: this is a metric, not a loss.

    Raises:
        TypeError: an input is not a floating-point tensor.
        ValueError: wrong shapes, fewer than 2 sources, or images too small for three
            scales of 11x11 windows (each side must be at least 41 pixels).
    """
    stack, image = _check_inputs(sources, fused)
    with torch.no_grad():
        x = _to_gray255(stack, quantize)  # (K, H, W) float64
        f = _to_gray255(image.unsqueeze(0), quantize)[0]  # (H, W)
        scores = []
        for level in range(len(SCALE_WEIGHTS)):
            if level > 0:
                x, f = downsample2(x), downsample2(f.unsqueeze(0))[0]
            scores.append(_single_scale(x, f))
        q = torch.stack(scores)
        w = torch.tensor(SCALE_WEIGHTS, dtype=torch.float64, device=q.device)
        return torch.prod(q ** (w / w.sum()))


class MEFSSIM(nn.Module):
    """``nn.Module`` form of :func:`mef_ssim`.

    Args:
        quantize: round inputs to 8-bit levels as MEFB's uint8 pipeline does.
    """

    def __init__(self, quantize: bool = True) -> None:
        super().__init__()
        self.quantize = quantize

    def forward(self, sources: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
        """Score ``fused`` against ``sources``; see :func:`mef_ssim` for the shapes."""
        return mef_ssim(sources, fused, quantize=self.quantize)

    def extra_repr(self) -> str:
        return f"quantize={self.quantize}"


def _check_inputs(sources: torch.Tensor, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate shapes; return sources (K, C, H, W) and fused (C, H, W)."""
    for name, t in (("sources", sources), ("fused", fused)):
        if not t.is_floating_point():
            # A uint8 tensor would silently be read as 0..255 * 255: refuse it instead.
            raise TypeError(f"{name} must be a float tensor in [0, 1], got {t.dtype}")
    if sources.dim() != 4 or sources.shape[1] not in (1, 3):
        raise ValueError(
            f"sources must be (K, 3, H, W) or (K, 1, H, W), got {tuple(sources.shape)}"
        )
    if sources.shape[0] < 2:
        raise ValueError(f"MEF-SSIM needs at least 2 sources, got {sources.shape[0]}")
    image = fused[0] if fused.dim() == 4 and fused.shape[0] == 1 else fused
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"fused must be (3, H, W), (1, 3, H, W) or a gray form, got {tuple(fused.shape)}"
        )
    if image.shape[-2:] != sources.shape[-2:]:
        raise ValueError(
            f"fused is {tuple(image.shape[-2:])} but sources are {tuple(sources.shape[-2:])}"
        )
    # The coarsest scale is ceil(side / 4) pixels and needs at least one 11x11 window.
    min_side = 4 * (WINDOW - 1) + 1
    if min(image.shape[-2:]) < min_side:
        raise ValueError(
            f"images of {tuple(image.shape[-2:])} are too small: three scales of "
            f"{WINDOW}x{WINDOW} windows need each side to be at least {min_side} pixels"
        )
    return sources, image


def _to_gray255(images: torch.Tensor, quantize: bool) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> (N, H, W) float64 gray on MEFB's 0..255 scale."""
    # One channel at a time with in-place ops: the stack can be hundreds of MB in float64.
    # float64 from the start, so that 255 * x is exact for float32 input before rounding.
    gray = None
    weights = RGB2GRAY_WEIGHTS if images.shape[1] == 3 else (1.0,)
    for c, weight in enumerate(weights):
        plane = images[:, c].to(torch.float64, copy=True).mul_(255.0).clamp_(0.0, 255.0)
        if quantize:
            # floor(v + 0.5) is MATLAB's round (half away from zero) for non-negative values.
            plane.add_(0.5).floor_()
        if images.shape[1] == 1:
            return plane
        if gray is None:
            gray = plane.mul_(weight)
        else:
            gray.add_(plane, alpha=weight)  # imlincomb's order: R, then G, then B
    assert gray is not None  # weights is never empty, so the loop above set it
    if quantize:
        gray.add_(0.5).floor_().clamp_(0.0, 255.0)  # rgb2gray on uint8 returns uint8
    return gray


_GAUSS = GAUSS_11
_GAUSS_MAX = _GAUSS[WINDOW // 2] ** 2  # largest weight of the 2-D window


def _box_sum_valid(padded: torch.Tensor) -> torch.Tensor:
    """'valid' 11x11 window sums over the last two dims.

    ``padded`` holds the data from column 1 on and zeros in column 0. Rows are summed by
    shift-and-add (cumsum along a non-last dim is slow in torch), columns as differences of
    running sums, which the zero column turns into one subtraction. On 8-bit data all
    values (and their 2x2 averages and products) are dyadic rationals, so these sums are
    exact in float64: flat patches give exactly zero variance, as the patch-wise MATLAB
    code does.
    """
    ho = padded.shape[-2] - WINDOW + 1
    rows = padded[..., 0:ho, :] + padded[..., 1 : ho + 1, :]
    for i in range(2, WINDOW):
        rows += padded[..., i : i + ho, :]
    c = rows.cumsum_(-1)
    return c[..., WINDOW:] - c[..., :-WINDOW]


def _box_sum_andgaussian_valid(padded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both :func:`_box_sum_valid` and :func:`_gauss_valid` of the same zero-bordered data.

    The two share the vertical pass: the Gaussian is symmetric, so the sums of mirrored
    row pairs serve the box sum and, weighted, the Gaussian (16 passes instead of 21).
    """
    ho = padded.shape[-2] - WINDOW + 1
    half = WINDOW // 2
    centre = padded[..., half : half + ho, :]
    box_rows = centre.clone()
    gauss_rows = centre * _GAUSS[half]
    for i in range(half):
        mirrored = WINDOW - 1 - i
        pair = padded[..., i : i + ho, :] + padded[..., mirrored : mirrored + ho, :]
        box_rows += pair
        gauss_rows.add_(pair, alpha=_GAUSS[i])
    c = box_rows.cumsum_(-1)
    box = c[..., WINDOW:] - c[..., :-WINDOW]
    gauss_rows = gauss_rows[..., 1:]
    wo = gauss_rows.shape[-1] - WINDOW + 1
    gauss = gauss_rows[..., 0:wo] * _GAUSS[0]
    for i in range(1, WINDOW):
        gauss.add_(gauss_rows[..., i : i + wo], alpha=_GAUSS[i])
    return box, gauss


def _single_scale(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """mef_ssim.m: mean quality over all valid 11x11 positions; x (K, H, W), f (H, W)."""
    k_count, h, w = x.shape
    ho = h - WINDOW + 1
    # The pair loop holds up to K images of (band + halo) rows; at least 16 output rows per
    # band so that the 10-row halo and the per-op overhead stay small.
    rows = max(16, _BAND_ELEMENTS // (k_count * w) - (WINDOW - 1))
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for r0 in range(0, ho, rows):
        r1 = min(r0 + rows, ho)
        total += _band_quality(x[:, r0 : r1 + WINDOW - 1], f[r0 : r1 + WINDOW - 1]).sum()
    return total / (ho * (w - WINDOW + 1))


def _band_quality(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Quality map for every valid window of a band of rows; x (K, Hb, W), f (Hb, W)."""
    n = float(WINDOW * WINDOW)

    # --- Box statistics: patch means, contrasts and the structure-consistency ratio R.
    k_count, hb, w = x.shape
    padded = x.new_zeros(2 * k_count + 2, hb, w + 1)
    inner = padded[..., 1:]
    inner[:k_count] = x
    torch.mul(x, x, out=inner[k_count : 2 * k_count])
    torch.sum(x, 0, out=inner[2 * k_count])
    torch.mul(inner[2 * k_count], inner[2 * k_count], out=inner[2 * k_count + 1])
    box = _box_sum_valid(padded)
    sx, sxx = box[:k_count], box[k_count : 2 * k_count]
    s_sum, s_sq = box[2 * k_count], box[2 * k_count + 1]
    # ||x - mean(x)||^2 = (n*sum(x^2) - sum(x)^2) / n; the numerator is exact on 8-bit data.
    norms = sxx.mul_(n).sub_(sx * sx).clamp_(min=0.0).div_(n).sqrt_()
    ed = norms + ED_OFFSET
    numerator = s_sq.mul_(n).sub_(s_sum * s_sum).clamp_(min=0.0).div_(n).sqrt_()
    ratio = (numerator + EPS).div_(norms.sum(0) + EPS)
    ratio.masked_fill_(ratio > 1.0, 1.0 - EPS).clamp_(min=EPS)
    power = ratio.mul_(math.pi / 2.0).tan_().clamp_(max=MAX_POWER)
    # (ed / 11)^p as exp(p log(ed / 11)): torch's float64 pow with a tensor exponent is
    # scalar code, exp and log are vectorised; the difference is a few ulp.
    weights = (ed / WINDOW).log_().mul_(power).exp_().add_(EPS)
    weights /= weights.sum(0)
    # Desired patch before rescaling: r = sum_k a_k (x_k - mu_k), with a_k = w_k / ed_k.
    a = weights.div_(ed)
    max_ed = ed.amax(0)

    # --- Gaussian moments of the sources and the fused patch.
    gauss = gaussian_valid(torch.cat([x, f.unsqueeze(0), (f * f).unsqueeze(0), x * f]))
    gx, gf, gff, gxf = gauss[:k_count], gauss[k_count], gauss[k_count + 1], gauss[k_count + 2 :]
    var_f = gff.sub_(gf * gf).clamp_(min=0.0)
    cov_rf = gxf.sub_(gx * gf).mul_(a).sum(0)

    # --- Quadratic forms in a over source pairs: n ||r||^2 (box) and var_g(r) (Gaussian).
    # Each pair's covariance is centred before it is weighted: summing raw second moments
    # and subtracting (sum_k a_k mu_k)^2 afterwards would cancel catastrophically when a
    # flat source (ed = 0.001) gets a large a_k.
    a_twice = 2.0 * a  # off-diagonal pairs appear twice in the symmetric form
    norm_r2 = torch.zeros_like(max_ed)
    var_r = torch.zeros_like(max_ed)
    for k in range(k_count):
        # Reuse the zero-bordered buffer: its column 0 is still zero.
        buffer = padded[: k_count - k]
        prods = buffer[..., 1:]
        torch.mul(x[k], x[k:], out=prods)
        coef = a[k] * a_twice[k:]
        coef[0].mul_(0.5)
        box_prods, gauss_prods = _box_sum_andgaussian_valid(buffer)
        norm_r2 += box_prods.mul_(n).sub_(sx[k] * sx[k:]).mul_(coef).sum(0)
        var_r += gauss_prods.sub_(gx[k] * gx[k:]).mul_(coef).sum(0)
    norm_r2.div_(n).clamp_(min=0.0)
    # sum g (r - mu)^2 <= sum g r^2 <= max(g) ||r||^2: clamping to this true bound removes
    # rounding residue, which matters when r is (near) zero and then gets rescaled.
    var_r = torch.clamp(var_r, min=torch.zeros_like(var_r), max=_GAUSS_MAX * norm_r2)

    # MATLAB: if norm(r) > 0, r <- r / norm(r) * max_k ed_k.
    nonzero = norm_r2 > 0.0
    scale2 = torch.where(nonzero, max_ed * max_ed / torch.where(nonzero, norm_r2, 1.0), 1.0)
    var_r *= scale2
    cov_rf *= scale2.sqrt_()
    # Cauchy-Schwarz bound, again only to absorb rounding.
    bound = (var_r * var_f).sqrt_()
    cov_rf = torch.clamp(cov_rf, min=-bound, max=bound)
    return cov_rf.mul_(2.0).add_(C).div_(var_r.add_(var_f).add_(C))
