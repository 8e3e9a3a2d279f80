"""TMQI: the tone-mapped image quality index, used in MEF papers against a ground truth.

Yeganeh and Wang, "Objective Quality Assessment of Tone-Mapped Images", IEEE TIP 22(2),
2013. This module follows the authors' ``TMQI.m`` (version 1.0) step by step; the few
places where it deliberately computes differently are listed in :func:`tmqi`.

TMQI compares a high-dynamic-range reference with a low-dynamic-range test image. Q mixes
two parts: a multi-scale structural fidelity S (an SSIM-like comparison of local contrast,
where each contrast first passes through a soft visibility threshold derived from a
contrast sensitivity function) and a statistical naturalness N of the test image alone (how
typical its mean brightness and mean local contrast are of natural images):
Q = a S^alpha + (1 - a) N^beta with a = 0.8012, alpha = 0.3046, beta = 0.7088.

MEF papers report TMQI with the ground-truth (well-exposed) image as the reference, and that
image is itself an 8-bit RGB image. The algorithm is applied to it unchanged: its luminance
is still stretched to 0 .. 2^32 - 1 as an HDR luminance would be, which makes its local
contrast visible (probability ~1) wherever it is not exactly flat.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from textmef.metrics._common import as_batches, downsample2, gaussian_valid, reduce, to_255

__all__ = ["TMQI", "tmqi"]

# TMQI.m's RGBtoYxy: Y is the second row of the sRGB (linear, D65) -> XYZ matrix
# [0.4124 0.3576 0.1805; 0.2126 0.7152 0.0722; 0.0193 0.1192 0.9505].
RGB2Y_WEIGHTS = (0.2126, 0.7152, 0.0722)
# Q = a S^alpha + (1 - a) N^beta, fitted by the authors to subjective scores.
A_WEIGHT = 0.8012
ALPHA = 0.3046
BETA = 0.7088
# Structural fidelity: MS-SSIM's five scale weights; 11x11 Gaussian window, sigma 1.5.
SCALE_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW = 11
C1 = 0.01  # stabilises the visibility (contrast) term, whose inputs are probabilities
C2 = 10.0  # stabilises the structure (correlation) term, on the 0..255 / 0..2^32 scales
HDR_RANGE = 2.0**32 - 1.0  # TMQI.m stretches the reference luminance to this range
# The coarsest scale is ceil(side / 16) pixels and needs one 11x11 window: side >= 161.
MIN_SIDE = 2 ** (len(SCALE_WEIGHTS) - 1) * (WINDOW - 1) + 1
# Statistical naturalness: block size of the local standard deviations, the Beta model of
# their mean (divided by 64.29) and the Gaussian model of the mean luminance.
BLOCK = 11
CONTRAST_SHAPE = (4.4, 10.1)
CONTRAST_SCALE = 64.29
BRIGHTNESS_MEAN = 115.94
BRIGHTNESS_STD = 27.99


def tmqi(
    reference: torch.Tensor,
    image: torch.Tensor,
    *,
    reduction: str = "mean",
    return_components: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TMQI of images against references, following the authors' ``TMQI.m`` v1.0.

    Mapping to ``TMQI.m`` (``TMQI(hdrImage, ldrImage)``): ``reference`` plays the role of
    ``hdrImage`` and ``image`` that of ``ldrImage``. In MEF papers the reference is the
    ground-truth (well-exposed) image, an LDR RGB image like the fused one.

    * Inputs are floats in [0, 1]; both are mapped to 0..255 float64 with
      :func:`~textmef.metrics._common.to_255` *without* rounding to 8-bit levels
      (``TMQI.m`` takes doubles as given; an 8-bit image read as float32 differs from its
      integer levels by less than 2e-5 of a level, which changes Q by far less than 1e-6).
    * RGB -> luminance Y = 0.2126 R + 0.7152 G + 0.0722 B, not rounded. One-channel inputs
      are taken as the luminance itself, as ``TMQI.m`` does for 2-D input.
    * Reference: L_hdr = round((2^32 - 1) / (lmax - lmin)) * (Y - lmin), with lmin, lmax
      the extremes of Y over the image; it is the *factor* that is rounded (half away from
      zero). The test luminance L_ldr is used on its 0..255 scale, unscaled.
    * Structural fidelity S = prod_l s_l^w_l over 5 scales, w = (0.0448, 0.2856, 0.3001,
      0.2363, 0.1333). At scale l = 1..5, with sf = 32 / 2^l: local Gaussian (11x11,
      sigma 1.5) means over the 'valid' windows, sigma^2 = E[x^2] - mu^2,
      sigma = sqrt(max(0, sigma^2)), sigma12 = E[xy] - mu1 mu2; CSF = 260 (0.0192 +
      0.114 sf) exp(-(0.114 sf)^1.1), u = 128 / (1.4 CSF); p_i = normcdf(sigma_i, u, u/3);
      s_map = (2 p1 p2 + C1) / (p1^2 + p2^2 + C1) * (sigma12 + C2) / (sigma1 sigma2 + C2)
      with C1 = 0.01, C2 = 10; s_l = mean of s_map. Between scales both images are
      filtered with ``imfilter(x, ones(2)/4, 'symmetric', 'same')`` and subsampled by 2.
    * Statistical naturalness of L_ldr: u = its mean; sig = mean of the local standard
      deviations from ``blkproc(L, [11 11], @(x) std(x(:)) * ones(size(x)))``;
      pc = betapdf(sig / 64.29, 4.4, 10.1) / betapdf(mode, 4.4, 10.1) with mode =
      3.4 / 12.5; pb = normpdf(u, 115.94, 27.99) / normpdf(115.94, 115.94, 27.99);
      N = pb pc.
    * Q = 0.8012 S^0.3046 + 0.1988 N^0.7088.

    Deliberate differences from ``TMQI.m``, none of which changes the exact-arithmetic
    value of the formulas above:

    * The reference's local statistics are computed on Y - lmin (0..255) and then scaled
      by the rounded factor (sigma1 and sigma12 once, as they are linear in L_hdr), which
      is the same in exact arithmetic. MATLAB squares L_hdr itself (values up to 4.3e9,
      squares up to 1.8e19), where E[x^2] - mu^2 carries an absolute rounding error of
      order eps * L_hdr^2, i.e. hundreds to thousands.
    * Windows in which an image is exactly constant get sigma = 0 for that image and
      sigma12 = 0, the exact values. In MATLAB the rounding residue above survives in
      them, with a sign and size that depend on the summation order; where it is
      positive, sigma1 jumps to tens, far above the visibility threshold u (0.9 .. 2.9
      over the five scales), and p1 from normcdf(0, u, u/3) ~= 0.0013 to 1, in flat
      regions such as clipped highlights. Here such regions consistently count as flat.
      (On images without exactly flat windows the two agree to rounding.)
    * ``blkproc`` zero-pads L_ldr at the bottom and right to a multiple of 11, and the std
      of each 11x11 block (sample std, N - 1) includes those zeros. Its assembled output
      is averaged over the image's own H x W pixels, i.e. each block's std is weighted by
      the number of its pixels inside the image. (If MATLAB's ``blkproc`` returned the
      padded output uncropped, border blocks would weigh as much as the others; the two
      agree whenever both sides are multiples of 11.)

    Computed in float64 under ``torch.no_grad``: this is a metric, not a loss.

    Args:
        reference: reference images (the ground truth), (B, C, H, W) or (C, H, W), C = 3
            (RGB) or 1 (luminance), values in [0, 1]. Each must have some contrast.
        image: test images (e.g. fused), same shape as ``reference``, values in [0, 1].
        reduction: ``"mean"`` for batch means, 0-dim tensors, or ``"none"`` for (B,)
            tensors (a (1,) tensor for (C, H, W) input).
        return_components: also return the structural fidelity S and the naturalness N.

    Returns:
        Q in [0, 1] (float64, on the inputs' device), or the tuple (Q, S, N), each reduced
        the same way. S is 1 for an image that matches the stretched reference exactly,
        which an LDR image never can, so Q stays below 1 in practice. Should a scale's
        mean s_map be negative (strongly anti-correlated images; MATLAB would return a
        complex number) S and Q are NaN.

    Raises:
        TypeError: an input is not a floating-point tensor.
        ValueError: the shapes differ or are not 3-D/4-D, C is not 1 or 3, a side is
            shorter than 161 pixels (five dyadic scales of 11x11 windows), a reference is
            constant (lmax == lmin), or ``reduction`` is unknown.
    """
    ref, img = as_batches(reference, image, names=("reference", "image"))
    if ref.shape[1] not in (1, 3):
        raise ValueError(
            f"expected RGB (C = 3) or luminance (C = 1) images, got C = {ref.shape[1]}"
        )
    if min(ref.shape[-2:]) < MIN_SIDE:
        raise ValueError(
            f"images of {tuple(ref.shape[-2:])} are too small: {len(SCALE_WEIGHTS)} scales of "
            f"{WINDOW}x{WINDOW} windows need each side to be at least {MIN_SIDE} pixels"
        )
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    with torch.no_grad():
        l_ref = _luminance(ref)
        l_img = _luminance(img)
        lmin = l_ref.amin(dim=(-2, -1))
        lmax = l_ref.amax(dim=(-2, -1))
        constant = (lmax == lmin).nonzero().flatten().tolist()
        if constant:
            raise ValueError(
                f"reference image(s) {constant} of the batch are constant (lmax == lmin): "
                "TMQI stretches the reference luminance by 1 / (lmax - lmin)"
            )
        # MATLAB's round is half away from zero; the quotient is positive.
        scale = torch.floor(HDR_RANGE / (lmax - lmin) + 0.5)
        s = _structural_fidelity(l_ref - lmin[:, None, None], l_img, scale)
        n = _naturalness(l_img)
        q = A_WEIGHT * s**ALPHA + (1.0 - A_WEIGHT) * n**BETA
    if return_components:
        return reduce(q, reduction), reduce(s, reduction), reduce(n, reduction)
    return reduce(q, reduction)


class TMQI(nn.Module):
    """``nn.Module`` form of :func:`tmqi`.

    Args:
        reduction: ``"mean"`` or ``"none"``.
        return_components: also return the structural fidelity S and the naturalness N.
    """

    def __init__(self, reduction: str = "mean", return_components: bool = False) -> None:
        super().__init__()
        self.reduction = reduction
        self.return_components = return_components

    def forward(
        self, reference: torch.Tensor, image: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Score ``image`` against ``reference``; see :func:`tmqi`."""
        return tmqi(
            reference,
            image,
            reduction=self.reduction,
            return_components=self.return_components,
        )

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, return_components={self.return_components}"


def _luminance(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> (B, H, W) float64 luminance on the 0..255 scale."""
    x = to_255(images, quantize=False)
    if x.shape[1] == 1:
        return x[:, 0]
    r, g, b = RGB2Y_WEIGHTS
    return r * x[:, 0] + g * x[:, 1] + b * x[:, 2]


def _structural_fidelity(
    ref: torch.Tensor, test: torch.Tensor, ref_scale: torch.Tensor | float = 1.0
) -> torch.Tensor:
    """(B,) multi-scale S of luminances (B, H, W); the reference counts as ``ref * ref_scale``.

    Downsampling is linear, so it commutes with the scale, which is applied to the local
    statistics at every scale (see :func:`_local_fidelity`).
    """
    s = torch.ones(ref.shape[0], dtype=torch.float64, device=ref.device)
    for level, weight in enumerate(SCALE_WEIGHTS):
        if level:
            ref, test = downsample2(ref), downsample2(test)
        sf = 32.0 / 2.0 ** (level + 1)
        s = s * _local_fidelity(ref, test, ref_scale, sf) ** weight
    return s


def _local_fidelity(
    ref: torch.Tensor, test: torch.Tensor, ref_scale: torch.Tensor | float, sf: float
) -> torch.Tensor:
    """TMQI.m's Slocal: (B,) mean of the s_map of one scale, ``ref`` scaled by ``ref_scale``."""
    mu1, mu2, e11, e22, e12 = gaussian_valid(
        torch.stack([ref, test, ref * ref, test * test, ref * test])
    )
    var1 = e11 - mu1 * mu1
    var2 = e22 - mu2 * mu2
    cov = e12 - mu1 * mu2
    # A constant window has exactly zero (co)variance; E[x^2] - mu^2 would leave rounding
    # residue that the huge reference scale and the steep normcdf blow up (see tmqi).
    flat1, flat2 = _flat_windows(ref), _flat_windows(test)
    var1 = var1.masked_fill(flat1, 0.0)
    var2 = var2.masked_fill(flat2, 0.0)
    cov = cov.masked_fill(flat1 | flat2, 0.0)
    if isinstance(ref_scale, torch.Tensor):
        ref_scale = ref_scale.reshape(-1, 1, 1)
    sigma1 = var1.clamp(min=0.0).sqrt() * ref_scale
    sigma2 = var2.clamp(min=0.0).sqrt()
    sigma12 = cov * ref_scale

    # Soft visibility threshold: contrast is mapped through a normal cdf centred at the
    # contrast the CSF says is just visible at this scale's spatial frequency sf.
    csf = 100.0 * 2.6 * (0.0192 + 0.114 * sf) * math.exp(-((0.114 * sf) ** 1.1))
    u = 128.0 / (1.4 * csf)
    sig = u / 3.0
    p1 = torch.special.ndtr((sigma1 - u) / sig)
    p2 = torch.special.ndtr((sigma2 - u) / sig)
    s_map = ((2.0 * p1 * p2 + C1) / (p1 * p1 + p2 * p2 + C1)) * (
        (sigma12 + C2) / (sigma1 * sigma2 + C2)
    )
    return s_map.mean(dim=(-2, -1))


def _flat_windows(x: torch.Tensor) -> torch.Tensor:
    """Which 'valid' 11x11 windows of (B, H, W) are exactly constant."""
    # (B, H, W) passes as an unbatched (C, H, W) input: pooling is per plane either way.
    high = F.max_pool2d(x, WINDOW, stride=1)
    low = -F.max_pool2d(-x, WINDOW, stride=1)
    return high == low


def _naturalness(lum: torch.Tensor) -> torch.Tensor:
    """(B,) statistical naturalness N = pb * pc of luminances (B, H, W) on 0..255."""
    batch, h, w = lum.shape
    mean = lum.mean(dim=(-2, -1))
    # blkproc: zero padding at the bottom/right to whole 11x11 blocks, sample std per block.
    pad_h, pad_w = -h % BLOCK, -w % BLOCK
    padded = F.pad(lum, (0, pad_w, 0, pad_h))
    rows, cols = padded.shape[-2] // BLOCK, padded.shape[-1] // BLOCK
    blocks = padded.reshape(batch, rows, BLOCK, cols, BLOCK)
    block_std = blocks.std(dim=(2, 4), correction=1)
    # Averaging the assembled map over the H x W image pixels weights each block's std by
    # the number of its pixels inside the image (documented in tmqi).
    inside_h = torch.full((rows,), float(BLOCK), dtype=lum.dtype, device=lum.device)
    inside_w = torch.full((cols,), float(BLOCK), dtype=lum.dtype, device=lum.device)
    inside_h[-1] = BLOCK - pad_h
    inside_w[-1] = BLOCK - pad_w
    sig = (block_std * torch.outer(inside_h, inside_w)).sum(dim=(-2, -1)) / (h * w)

    a, b = CONTRAST_SHAPE
    mode = (a - 1.0) / (a + b - 2.0)
    peak = _beta_pdf(torch.tensor(mode, dtype=lum.dtype, device=lum.device), a, b)
    pc = _beta_pdf(sig / CONTRAST_SCALE, a, b) / peak
    # normpdf(u) / normpdf(peak): the 1 / (sqrt(2 pi) sigma) factors cancel.
    pb = torch.exp(-0.5 * ((mean - BRIGHTNESS_MEAN) / BRIGHTNESS_STD) ** 2)
    return pb * pc


def _beta_pdf(x: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """MATLAB's betapdf(x, a, b) for a, b > 1: zero outside the open interval (0, 1)."""
    inside = (x > 0.0) & (x < 1.0)
    xs = torch.where(inside, x, 0.5)  # keeps log() finite where the result is masked
    log_norm = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)  # log B(a, b)
    log_pdf = (a - 1.0) * torch.log(xs) + (b - 1.0) * torch.log1p(-xs) - log_norm
    return torch.where(inside, torch.exp(log_pdf), 0.0)
