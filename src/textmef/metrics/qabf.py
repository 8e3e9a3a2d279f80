"""Q^{AB/F}: the Xydeas-Petrovic gradient-transfer fusion metric, as MEFB computes it.

Xydeas and Petrovic, "Objective image fusion performance measure", Electronics Letters
36(4), 2000. This module reproduces the number the MEFB benchmark (Zhang, 2021,
``metricsQabf.m``) reports, quirks included, so that scores compare with published tables.

Every pixel of each source has a Sobel gradient strength and orientation. How much of the
source's edge survives in the fused image is measured per pixel by two sigmoids, one of the
relative strength and one of the orientation agreement; their product, weighted by the
source's gradient strength and pooled over both sources, is the score. It lies in [0, 1);
the ideal value (an exact copy of every source edge) is derived in :func:`qabf`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from textmef.metrics._common import MEFBMetric, as_batches, reduce, to_255

__all__ = ["QABF", "qabf"]

# metricsQabf.m's model parameters: sigmoid gains (T), slopes (k) and midpoints (D) for the
# strength (g) and orientation (a) terms. Its L = 1 (the weight exponent) is unused.
TG, KG, DG = 0.9994, -15.0, 0.5
TA, KA, DA = 0.9879, -22.0, 0.8
# MEFB's Sobel kernels as conv2 receives them: h3 gives the x response, h1 the y response.
SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
SOBEL_Y = ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0))
# metricsQabf.m multiplies every plane by 255 once more (255 * im2double of a double image);
# it changes nothing but the value the "gX == gF" tie rule below assigns.
EXTRA_SCALE = 255.0


def qabf(
    under: torch.Tensor,
    over: torch.Tensor,
    fused: torch.Tensor,
    *,
    quantize: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """Q^{AB/F} of fused images against their two sources, as MEFB computes it.

    Mapping to MEFB (``metricsQabf.m``, called as ``metricsQabf(A, B, F)`` on uint8 RGB):

    * Inputs are floats in [0, 1] (as :func:`textmef.io.read_image` returns them). They are
      mapped to MEFB's 0..255 doubles with :func:`~textmef.metrics._common.to_255`; with
      ``quantize=True`` they are rounded to 8-bit levels, which recovers an 8-bit file's
      values exactly. Then, like MEFB, every plane is multiplied by 255 once more.
    * Each channel is scored on its own (source channel k against fused channel k) and the
      channel scores are averaged, as MEFB's per-channel wrapper does for RGB. Gray images
      (C = 1) are scored as one channel. Both sources and the fused image must have the
      same shape here; MEFB's special case of gray sources with an RGB fused image (which
      uses the fused image's first channel) is not offered.
    * Sobel responses use true convolution with zero padding outside the image, MATLAB's
      ``conv2(X, h, 'same')``: S_x with [[-1,0,1],[-2,0,2],[-1,0,1]], S_y with
      [[1,2,1],[0,0,0],[-1,-2,-1]]. g = sqrt(S_x^2 + S_y^2); alpha = atan(S_y / S_x) (plain
      atan, in (-pi/2, pi/2)), and alpha = pi/2 wherever S_x == 0.
    * Relative strength of source X against F: G = g_F / g_X where g_X > g_F, g_X / g_F
      where g_X < g_F, and, where g_X == g_F, the raw value g_F (not 1) -- a quirk of the
      reference code kept on purpose. Orientation agreement A = 1 - |alpha_X - alpha_F| /
      (pi/2). Q_XF = Tg / (1 + exp(kg (G - Dg))) * Ta / (1 + exp(ka (A - Da))) with
      Tg = 0.9994, kg = -15, Dg = 0.5, Ta = 0.9879, ka = -22, Da = 0.8.
    * Per channel: sum(Q_AF g_A + Q_BF g_B) / sum(g_A + g_B) over all pixels.

    Because of the tie rule, a fused image that copies a source's gradient exactly at a
    pixel gets G = g_F there; on the doubly scaled 8-bit scale every non-zero g_F is at
    least 255, so the strength term is Tg to machine precision, slightly more than the
    Tg / (1 + exp(-7.5)) that G = 1 would give. ``qabf(A, A, A)`` is therefore exactly
    Tg * Ta / (1 + exp(-4.4)) ~= 0.975333 for any 8-bit image with some gradient.

    Computed in float64 under ``torch.no_grad``: this is a metric, not a loss.

    Args:
        under: under-exposed sources (MEFB's A), (B, C, H, W) or (C, H, W), values in [0, 1].
        over: over-exposed sources (MEFB's B), same shape. The score is symmetric in
            ``under`` and ``over``.
        fused: fused images, same shape.
        quantize: round to 8-bit levels as MEFB's uint8 pipeline does. With ``False`` the
            values are only scaled (MATLAB's behaviour for double images in 0..255); use it
            for unquantised network outputs, knowing that MEFB itself only saw 8-bit images.
        reduction: ``"mean"`` for the batch mean, a 0-dim tensor, or ``"none"`` for a (B,)
            tensor (a (1,) tensor for (C, H, W) input).

    Returns:
        float64 score(s) on the inputs' device. A channel where both sources have zero
        gradient everywhere (only possible for all-black planes, because the zero padding
        makes the border of any other plane an edge) is 0 / 0 = NaN, as in MATLAB.

    Raises:
        TypeError: an input is not a floating-point tensor.
        ValueError: the shapes differ or are not 3-D/4-D, or ``reduction`` is unknown.
    """
    a, b, f = as_batches(under, over, fused, names=("under", "over", "fused"))
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    with torch.no_grad():
        x = to_255(torch.stack([a, b, f]), quantize).mul_(EXTRA_SCALE)  # (3, B, C, H, W)
        g, alpha = _sobel(x)
        q_af = _edge_preservation(g[0], alpha[0], g[2], alpha[2])
        q_bf = _edge_preservation(g[1], alpha[1], g[2], alpha[2])
        numerator = (q_af * g[0] + q_bf * g[1]).sum(dim=(-2, -1))
        denominator = (g[0] + g[1]).sum(dim=(-2, -1))
        values = (numerator / denominator).mean(dim=1)  # channels -> one value per image
        return reduce(values, reduction)


class QABF(MEFBMetric):
    """``nn.Module`` form of :func:`qabf`, called as ``m(under, over, fused)``.

    Args:
        quantize: round inputs to 8-bit levels as MEFB's uint8 input is.
        reduction: ``"mean"`` or ``"none"``.
    """

    function = staticmethod(qabf)


def _sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient strength and MEFB's orientation of every plane of ``x`` (..., H, W)."""
    shape = x.shape
    planes = x.reshape(-1, 1, shape[-2], shape[-1])
    kernels = torch.tensor([SOBEL_X, SOBEL_Y], dtype=x.dtype, device=x.device)
    # conv2d correlates; conv2 convolves, i.e. correlates with the kernel turned by 180
    # degrees. (Both Sobel kernels only change sign under that turn, which leaves g and
    # alpha alike, but the flip keeps S_x and S_y literally MATLAB's.)
    weight = torch.flip(kernels, dims=(-2, -1)).unsqueeze(1)
    s = F.conv2d(planes, weight, padding=1)  # zero padding: conv2's 'same'
    sx, sy = s[:, 0].reshape(shape), s[:, 1].reshape(shape)
    g = torch.sqrt(sx * sx + sy * sy)
    vertical = sx == 0
    # MATLAB sets pi/2 wherever S_x == 0, whatever S_y is (even 0 or negative).
    alpha = torch.where(vertical, math.pi / 2, torch.atan(sy / torch.where(vertical, 1.0, sx)))
    return g, alpha


def _edge_preservation(
    g_x: torch.Tensor, a_x: torch.Tensor, g_f: torch.Tensor, a_f: torch.Tensor
) -> torch.Tensor:
    """Per-pixel Q_XF of source X in fused F (metricsQabf.m's QgXF .* QaXF)."""
    # Denominators set to 1 where their branch is not taken, so no 0/0 is ever formed.
    weaker = g_x > g_f
    stronger = g_x < g_f
    strength = torch.where(
        weaker,
        g_f / torch.where(weaker, g_x, 1.0),
        torch.where(stronger, g_x / torch.where(stronger, g_f, 1.0), g_f),  # tie: g_F (sic)
    )
    orientation = 1.0 - (a_x - a_f).abs() / (math.pi / 2)
    q_g = TG / (1.0 + torch.exp(KG * (strength - DG)))
    q_a = TA / (1.0 + torch.exp(KA * (orientation - DA)))
    return q_g * q_a
