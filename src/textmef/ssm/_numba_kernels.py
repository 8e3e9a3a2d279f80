"""Numba CPU kernels for the selective scan (forward and backward).

Imported lazily: numba compiles on first call and caches the machine code on disk, so
importing ``textmef`` stays cheap and later runs skip compilation.

Work split: one job per (batch, block of ``dblk`` channels); the state of a job is a
(d_state, dblk) array that stays in L1 cache, and the innermost loops run over contiguous
channels so LLVM vectorises them (the exponential included, see ``fast_exp``).

Memory: the forward pass keeps the state only at chunk boundaries (``ckpt``); the backward
pass recomputes one chunk at a time, so scratch memory is O(chunk * d_state * dblk) per job
instead of O(length * d_inner * d_state).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

_CACHE = True


def fast_exp(x):  # pragma: no cover - replaced by the overload inside compiled code
    return math.exp(x)


@njit(inline="always", fastmath=True)
def _exp_f32(x):
    # Cephes expf: Cody-Waite range reduction and a degree-5 polynomial; the 2**k factor is
    # built from its bit pattern so the whole function vectorises (LLVM has no vector expf
    # without SVML). Arguments here are always <= 0; clamping keeps 2**k a normal float.
    x = max(x, np.float32(-87.3))
    k = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
    r = x - k * np.float32(0.693359375)
    r = r + k * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    scale = np.int32((np.int32(k) + np.int32(127)) << np.int32(23))
    return p * scale.view(np.float32)


@overload(fast_exp, inline="always")
def _fast_exp_overload(x):
    if x == types.float32:
        return lambda x: _exp_f32(x)
    return lambda x: math.exp(x)


@njit(fastmath=True, cache=_CACHE)
def _forward_block(u, delta, AT, B, C, y, ckpt, chunk, b, d0, w):
    length = u.shape[1]
    d_state = AT.shape[0]
    save = ckpt.shape[1] > 0
    h = np.zeros((d_state, w), dtype=u.dtype)
    du = np.empty(w, dtype=u.dtype)
    dl = np.empty(w, dtype=u.dtype)
    acc = np.empty(w, dtype=u.dtype)
    # Row views (h[n], AT[n, ...]) rather than 2-D indexing let LLVM vectorise the j loops.
    for t in range(length):
        if save and t % chunk == 0:
            ckpt[b, t // chunk, :, d0 : d0 + w] = h
        u_t = u[b, t, d0 : d0 + w]
        delta_t = delta[b, t, d0 : d0 + w]
        for j in range(w):
            dl[j] = delta_t[j]
            du[j] = delta_t[j] * u_t[j]
            acc[j] = 0.0
        for n in range(d_state):
            bn = B[b, t, n]
            cn = C[b, t, n]
            h_n = h[n]
            a_n = AT[n, d0 : d0 + w]
            for j in range(w):
                hv = fast_exp(dl[j] * a_n[j]) * h_n[j] + du[j] * bn
                h_n[j] = hv
                acc[j] += cn * hv
        y_t = y[b, t, d0 : d0 + w]
        for j in range(w):
            y_t[j] = acc[j]


@njit(parallel=True, cache=_CACHE)
def scan_forward(u, delta, AT, B, C, y, ckpt, chunk, dblk):
    """y[b, t, d] = sum_n C[b, t, n] h[b, t, n, d]; stores h before every chunk in ckpt.

    ``ckpt`` has shape (batch, n_chunks, d_state, d_inner), or n_chunks == 0 to skip saving.
    """
    batch, _, d_inner = u.shape
    n_blocks = (d_inner + dblk - 1) // dblk
    for job in prange(batch * n_blocks):
        b = job // n_blocks
        d0 = (job - b * n_blocks) * dblk
        _forward_block(u, delta, AT, B, C, y, ckpt, chunk, b, d0, min(dblk, d_inner - d0))


@njit(fastmath=True, cache=_CACHE)
def _backward_block(
    u,
    delta,
    AT,
    B,
    C,
    dy,
    ckpt,
    chunk,
    b,
    d0,
    w,
    blk,
    du_out,
    ddelta_out,
    dAT_out,
    dB_part,
    dC_part,
):
    length = u.shape[1]
    d_state = AT.shape[0]
    n_chunks = ckpt.shape[1]
    hs = np.empty((chunk + 1, d_state, w), dtype=u.dtype)
    decays = np.empty((chunk, d_state, w), dtype=u.dtype)
    carry = np.zeros((d_state, w), dtype=u.dtype)  # decay_{t+1} * dL/dh_{t+1}
    dA = np.zeros((d_state, w), dtype=np.float64)
    dl = np.empty(w, dtype=u.dtype)
    uu = np.empty(w, dtype=u.dtype)
    gy = np.empty(w, dtype=u.dtype)
    du_t = np.empty(w, dtype=u.dtype)
    ddl_t = np.empty(w, dtype=u.dtype)
    for c in range(n_chunks - 1, -1, -1):
        t0 = c * chunk
        t1 = min(length, t0 + chunk)
        hs[0] = ckpt[b, c, :, d0 : d0 + w]
        for t in range(t0, t1):
            k = t - t0
            for j in range(w):
                dl[j] = delta[b, t, d0 + j]
                uu[j] = dl[j] * u[b, t, d0 + j]
            for n in range(d_state):
                bn = B[b, t, n]
                a_n = AT[n, d0 : d0 + w]
                dec = decays[k, n]
                h_prev = hs[k, n]
                h_next = hs[k + 1, n]
                for j in range(w):
                    a = fast_exp(dl[j] * a_n[j])
                    dec[j] = a
                    h_next[j] = a * h_prev[j] + uu[j] * bn
        for t in range(t1 - 1, t0 - 1, -1):
            k = t - t0
            for j in range(w):
                dl[j] = delta[b, t, d0 + j]
                uu[j] = u[b, t, d0 + j]
                gy[j] = dy[b, t, d0 + j]
                du_t[j] = 0.0
                ddl_t[j] = 0.0
            for n in range(d_state):
                bn = B[b, t, n]
                cn = C[b, t, n]
                a_n = AT[n, d0 : d0 + w]
                dec = decays[k, n]
                h_prev = hs[k, n]
                h_cur = hs[k + 1, n]
                carry_n = carry[n]
                dA_n = dA[n]
                s_c = np.float32(0.0)
                s_b = np.float32(0.0)
                for j in range(w):
                    g = carry_n[j] + gy[j] * cn
                    s_c += gy[j] * h_cur[j]
                    s_b += g * dl[j] * uu[j]
                    wv = g * h_prev[j] * dec[j]
                    dA_n[j] += wv * dl[j]
                    ddl_t[j] += wv * a_n[j] + g * bn * uu[j]
                    du_t[j] += g * dl[j] * bn
                    carry_n[j] = dec[j] * g
                dC_part[blk, b, t, n] = s_c
                dB_part[blk, b, t, n] = s_b
            for j in range(w):
                du_out[b, t, d0 + j] = du_t[j]
                ddelta_out[b, t, d0 + j] = ddl_t[j]
    for n in range(d_state):
        for j in range(w):
            dAT_out[b, n, d0 + j] = dA[n, j]


@njit(parallel=True, cache=_CACHE)
def scan_backward(
    u, delta, AT, B, C, dy, ckpt, chunk, dblk, du_out, ddelta_out, dAT_out, dB_part, dC_part
):
    """Gradients of ``scan_forward``; dB and dC come back per channel block (summed later)."""
    batch, _, d_inner = u.shape
    n_blocks = (d_inner + dblk - 1) // dblk
    for job in prange(batch * n_blocks):
        b = job // n_blocks
        blk = job - b * n_blocks
        d0 = blk * dblk
        _backward_block(
            u,
            delta,
            AT,
            B,
            C,
            dy,
            ckpt,
            chunk,
            b,
            d0,
            min(dblk, d_inner - d0),
            blk,
            du_out,
            ddelta_out,
            dAT_out,
            dB_part,
            dC_part,
        )
