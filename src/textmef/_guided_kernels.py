"""Numba kernel that applies bilinearly upsampled local affine maps (textmef.guided).

Imported lazily (numba compiles on first call and caches the machine code on disk). One
pass over the output, rows in parallel: each output row interpolates the maps' two
neighbouring low-resolution rows once, then every pixel interpolates its coefficients
between two columns and takes the affine combination of its guide values, so the
full-resolution coefficients are never stored.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, fastmath=True, cache=True)
def apply_maps(coef, row_low, row_high, row_t, col_low, col_high, col_t, guide_a, guide_b, out):
    """coef (K, h, w) with K = 3 * C + 3 (weights channel-major, then the 3 biases);
    guide_a (Ca, H, W) and guide_b (Cb, H, W) with Ca + Cb = C; out (3, H, W)."""
    n_coef, _, low_w = coef.shape
    channels_a = guide_a.shape[0]
    channels = channels_a + guide_b.shape[0]
    height, width = out.shape[1], out.shape[2]
    for y in prange(height):
        r0, r1, t = row_low[y], row_high[y], row_t[y]
        band = np.empty((n_coef, low_w), dtype=np.float32)
        for k in range(n_coef):
            for x in range(low_w):
                band[k, x] = coef[k, r0, x] + t * (coef[k, r1, x] - coef[k, r0, x])
        for x in range(width):
            c0, c1, s = col_low[x], col_high[x], col_t[x]
            for j in range(3):
                k = 3 * channels + j
                acc = band[k, c0] + s * (band[k, c1] - band[k, c0])
                for i in range(channels):
                    k = 3 * i + j
                    value = guide_a[i, y, x] if i < channels_a else guide_b[i - channels_a, y, x]
                    acc += (band[k, c0] + s * (band[k, c1] - band[k, c0])) * value
                out[j, y, x] = acc
