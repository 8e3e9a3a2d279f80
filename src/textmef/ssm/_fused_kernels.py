"""Numba CPU kernels of the fused Mamba inner pass (forward and backward).

Two fused passes per scan direction, both on token-major (batch, length, channels) buffers:

* ``conv_forward`` / ``conv_backward``: causal depthwise conv + SiLU.
* ``scan_forward`` / ``scan_backward``: the rank-R step-size projection and softplus, the
  selective scan, the D skip, an optional added input (the other direction's output) and an
  optional SiLU(z) gate.

``reverse`` walks the tokens from the last to the first (and the causal conv looks at the
following tokens instead of the preceding ones), so the reversed-direction branch of a
bidirectional block needs no flipped copies: every buffer stays at the original token index.

Work split, memory and the vectorised exponential are those of :mod:`textmef.ssm._numba_kernels`:
one prange job per (batch, block of channels), the forward keeps the state every ``chunk``
steps and the backward recomputes one chunk at a time (scratch memory O(chunk)). Parameter
gradients are accumulated in float64 per job and summed over jobs by the caller.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from textmef.ssm._numba_kernels import fast_exp

_CACHE = True

# Scalar helpers with float32 constants in the float32 specialisation (a float64 literal would
# promote the whole expression to float64 and halve the vector width). exp(-x) is clamped at
# exp(80) so the float32 fast_exp stays finite.


def _sigmoid(x):  # pragma: no cover - replaced by the overload inside compiled code
    return 1.0 / (1.0 + math.exp(-x))


def _dsilu(x, s):  # pragma: no cover - d silu(x) / dx given s = sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


def _softplus(v):  # pragma: no cover - (softplus(v), softplus'(v)), torch's threshold of 20
    e = math.exp(min(v, 20.0))
    return (v, 1.0) if v > 20.0 else (math.log1p(e), e / (1.0 + e))


@overload(_sigmoid, inline="always")
def _sigmoid_overload(x):
    if x == types.float32:
        return lambda x: np.float32(1.0) / (np.float32(1.0) + fast_exp(min(-x, np.float32(80.0))))
    return lambda x: 1.0 / (1.0 + math.exp(min(-x, 80.0)))


@overload(_dsilu, inline="always")
def _dsilu_overload(x, s):
    if x == types.float32:
        return lambda x, s: s * (np.float32(1.0) + x * (np.float32(1.0) - s))
    return lambda x, s: s * (1.0 + x * (1.0 - s))


@njit(inline="always", fastmath=True)
def _log1p_small_f32(e):
    # log1p(e) for 0 <= e <= 1 as 2 atanh(s), s = e / (2 + e) <= 1/3: an odd series, no
    # cancellation for small e, and it vectorises (math.log1p is a scalar libm call).
    s = e / (np.float32(2.0) + e)
    s2 = s * s
    p = np.float32(1.0 / 17.0)
    p = p * s2 + np.float32(1.0 / 15.0)
    p = p * s2 + np.float32(1.0 / 13.0)
    p = p * s2 + np.float32(1.0 / 11.0)
    p = p * s2 + np.float32(1.0 / 9.0)
    p = p * s2 + np.float32(1.0 / 7.0)
    p = p * s2 + np.float32(1.0 / 5.0)
    p = p * s2 + np.float32(1.0 / 3.0)
    return np.float32(2.0) * s * (np.float32(1.0) + s2 * p)


@overload(_softplus, inline="always")
def _softplus_overload(v):
    if v == types.float32:

        def impl32(v):
            # softplus(v) = max(v, 0) + log1p(exp(-|v|)); sigmoid from the same exponential.
            e = fast_exp(-abs(v))
            r = np.float32(1.0) / (np.float32(1.0) + e)
            pos = v > np.float32(0.0)
            sp = max(v, np.float32(0.0)) + _log1p_small_f32(e)
            d = r if pos else e * r
            if v > np.float32(20.0):
                return v, np.float32(1.0)
            return sp, d

        return impl32

    def impl64(v):
        e = math.exp(min(v, 20.0))
        if v > 20.0:
            return v, 1.0
        return math.log1p(e), e / (1.0 + e)

    return impl64


@njit(inline="always")
def _token(s, length, reverse):
    return length - 1 - s if reverse else s


# --------------------------------------------------------------------------------------------
# causal depthwise conv + SiLU


@njit(fastmath=True, cache=_CACHE)
def _conv_forward_block(x, WT, bias, out, reverse, b, d0, w):
    length = x.shape[1]
    taps = WT.shape[0]
    acc = np.empty(w, dtype=out.dtype)
    for t in range(length):
        for j in range(w):
            acc[j] = bias[d0 + j]
        for k in range(taps):
            src = t + (taps - 1 - k) if reverse else t - (taps - 1 - k)
            if 0 <= src < length:
                w_k = WT[k, d0 : d0 + w]
                x_s = x[b, src, d0 : d0 + w]
                for j in range(w):
                    acc[j] += w_k[j] * x_s[j]
        o = out[b, t, d0 : d0 + w]
        for j in range(w):
            o[j] = acc[j] * _sigmoid(acc[j])


@njit(parallel=True, cache=_CACHE)
def conv_forward(x, WT, bias, out, reverse, dblk):
    """out = silu(causal depthwise conv(x)); WT is the (taps, channels) weight."""
    batch, _, d_inner = x.shape
    n_blocks = (d_inner + dblk - 1) // dblk
    for job in prange(batch * n_blocks):
        b = job // n_blocks
        d0 = (job - b * n_blocks) * dblk
        _conv_forward_block(x, WT, bias, out, reverse, b, d0, min(dblk, d_inner - d0))


@njit(fastmath=True, cache=_CACHE)
def _conv_backward_block(x, WT, bias, dout, dpre, dx, dWT, dbias, reverse, b, d0, w):
    length = x.shape[1]
    taps = WT.shape[0]
    acc = np.empty(w, dtype=x.dtype)
    dw = np.zeros((taps, w), dtype=np.float64)
    db = np.zeros(w, dtype=np.float64)
    # Pass 1: recompute the pre-activation, gradient through SiLU, weight and bias gradients.
    for t in range(length):
        for j in range(w):
            acc[j] = bias[d0 + j]
        for k in range(taps):
            src = t + (taps - 1 - k) if reverse else t - (taps - 1 - k)
            if 0 <= src < length:
                w_k = WT[k, d0 : d0 + w]
                x_s = x[b, src, d0 : d0 + w]
                for j in range(w):
                    acc[j] += w_k[j] * x_s[j]
        g_t = dout[b, t, d0 : d0 + w]
        p_t = dpre[b, t, d0 : d0 + w]
        for j in range(w):
            a = acc[j]
            s = _sigmoid(a)
            g = g_t[j] * _dsilu(a, s)
            p_t[j] = g
            db[j] += g
        for k in range(taps):
            src = t + (taps - 1 - k) if reverse else t - (taps - 1 - k)
            if 0 <= src < length:
                x_s = x[b, src, d0 : d0 + w]
                dw_k = dw[k]
                for j in range(w):
                    dw_k[j] += p_t[j] * x_s[j]
    # Pass 2: input gradient, dx[src] = sum_k w_k dpre[t] over the taps that read src.
    for src in range(length):
        for j in range(w):
            acc[j] = 0.0
        for k in range(taps):
            t = src - (taps - 1 - k) if reverse else src + (taps - 1 - k)
            if 0 <= t < length:
                w_k = WT[k, d0 : d0 + w]
                p_t = dpre[b, t, d0 : d0 + w]
                for j in range(w):
                    acc[j] += w_k[j] * p_t[j]
        dx_s = dx[b, src, d0 : d0 + w]
        for j in range(w):
            dx_s[j] = acc[j]
    for k in range(taps):
        for j in range(w):
            dWT[b, k, d0 + j] = dw[k, j]
    for j in range(w):
        dbias[b, d0 + j] = db[j]


@njit(parallel=True, cache=_CACHE)
def conv_backward(x, WT, bias, dout, dpre, dx, dWT, dbias, reverse, dblk):
    """Gradients of ``conv_forward``; dWT (batch, taps, C) and dbias (batch, C) per batch item."""
    batch, _, d_inner = x.shape
    n_blocks = (d_inner + dblk - 1) // dblk
    for job in prange(batch * n_blocks):
        b = job // n_blocks
        d0 = (job - b * n_blocks) * dblk
        _conv_backward_block(
            x, WT, bias, dout, dpre, dx, dWT, dbias, reverse, b, d0, min(dblk, d_inner - d0)
        )


# --------------------------------------------------------------------------------------------
# step sizes + selective scan + D skip (+ added input) (+ SiLU gate)


@njit(inline="always", fastmath=True)
def _step_sizes(xdbl, WT, bdt, b, t, d0, w, raw, dl, dsp):
    """raw = W_dt x_dbl[:R] + b_dt over the block's channels; dl, dsp = softplus, softplus'."""
    for j in range(w):
        raw[j] = bdt[d0 + j]
    for r in range(WT.shape[0]):
        xr = xdbl[b, t, r]
        w_r = WT[r, d0 : d0 + w]
        for j in range(w):
            raw[j] += xr * w_r[j]
    for j in range(w):
        dl[j], dsp[j] = _softplus(raw[j])


@njit(fastmath=True, cache=_CACHE)
def _scan_forward_block(
    xc, xdbl, WT, bdt, AT, Dv, z, yadd, out, ckpt, chunk, reverse, gate, add, b, d0, w
):
    length = xc.shape[1]
    d_state = AT.shape[0]
    rank = WT.shape[0]
    save = ckpt.shape[1] > 0
    h = np.zeros((d_state, w), dtype=xc.dtype)
    raw = np.empty(w, dtype=xc.dtype)
    dl = np.empty(w, dtype=xc.dtype)
    dsp = np.empty(w, dtype=xc.dtype)
    du = np.empty(w, dtype=xc.dtype)
    acc = np.empty(w, dtype=xc.dtype)
    Dblk = Dv[d0 : d0 + w]
    for s in range(length):
        t = _token(s, length, reverse)
        if save and s % chunk == 0:
            ckpt[b, s // chunk, :, d0 : d0 + w] = h
        _step_sizes(xdbl, WT, bdt, b, t, d0, w, raw, dl, dsp)
        u_t = xc[b, t, d0 : d0 + w]
        for j in range(w):
            du[j] = dl[j] * u_t[j]
            acc[j] = 0.0
        for n in range(d_state):
            bn = xdbl[b, t, rank + n]
            cn = xdbl[b, t, rank + d_state + n]
            h_n = h[n]
            a_n = AT[n, d0 : d0 + w]
            for j in range(w):
                hv = fast_exp(dl[j] * a_n[j]) * h_n[j] + du[j] * bn
                h_n[j] = hv
                acc[j] += cn * hv
        for j in range(w):
            acc[j] += u_t[j] * Dblk[j]
        if add:
            ya = yadd[b, t, d0 : d0 + w]
            for j in range(w):
                acc[j] += ya[j]
        o = out[b, t, d0 : d0 + w]
        if gate:
            z_t = z[b, t, d0 : d0 + w]
            for j in range(w):
                zv = z_t[j]
                o[j] = acc[j] * zv * _sigmoid(zv)
        else:
            for j in range(w):
                o[j] = acc[j]


@njit(parallel=True, cache=_CACHE)
def scan_forward(xc, xdbl, WT, bdt, AT, Dv, z, yadd, out, ckpt, chunk, reverse, gate, add, dblk):
    """out = [scan(xc, softplus(W_dt x_dbl[:R] + b_dt), A, B, C) + D xc (+ yadd)] (* silu(z)).

    ``xdbl`` is (batch, length, R + 2N) = [dt | B | C]; ``WT`` is W_dt transposed (R, channels);
    ``AT`` is A transposed (N, channels). ``ckpt`` (batch, n_chunks, N, channels) receives the
    state before every ``chunk`` steps, or has n_chunks == 0 to skip saving.
    """
    batch, _, d_inner = xc.shape
    n_blocks = (d_inner + dblk - 1) // dblk
    for job in prange(batch * n_blocks):
        b = job // n_blocks
        d0 = (job - b * n_blocks) * dblk
        _scan_forward_block(
            xc,
            xdbl,
            WT,
            bdt,
            AT,
            Dv,
            z,
            yadd,
            out,
            ckpt,
            chunk,
            reverse,
            gate,
            add,
            b,
            d0,
            min(dblk, d_inner - d0),
        )


@njit(fastmath=True, cache=_CACHE)
def _scan_backward_block(
    xc,
    xdbl,
    WT,
    bdt,
    AT,
    Dv,
    z,
    yadd,
    dout,
    ckpt,
    chunk,
    reverse,
    gate,
    add,
    b,
    d0,
    w,
    blk,
    dxc,
    dxdbl_part,
    dWT,
    dbdt,
    dAT,
    dD,
    dz,
    dyadd,
):
    length = xc.shape[1]
    d_state = AT.shape[0]
    rank = WT.shape[0]
    n_chunks = ckpt.shape[1]
    dtype = xc.dtype
    hs = np.empty((chunk + 1, d_state, w), dtype=dtype)
    decays = np.empty((chunk, d_state, w), dtype=dtype)
    dls = np.empty((chunk, w), dtype=dtype)
    dsp = np.empty((chunk, w), dtype=dtype)  # softplus'(raw)
    carry = np.zeros((d_state, w), dtype=dtype)  # decay_{s+1} * dL/dh_{s+1}
    raw = np.empty(w, dtype=dtype)
    uu = np.empty(w, dtype=dtype)
    gy = np.empty(w, dtype=dtype)
    du_t = np.empty(w, dtype=dtype)
    ddl_t = np.empty(w, dtype=dtype)
    dA = np.zeros((d_state, w), dtype=np.float64)
    dDa = np.zeros(w, dtype=np.float64)
    dba = np.zeros(w, dtype=np.float64)
    dWa = np.zeros((rank, w), dtype=np.float64)
    Dblk = Dv[d0 : d0 + w]
    for c in range(n_chunks - 1, -1, -1):
        s0 = c * chunk
        s1 = min(length, s0 + chunk)
        hs[0] = ckpt[b, c, :, d0 : d0 + w]
        # Recompute the chunk's step sizes, decays and states.
        for s in range(s0, s1):
            t = _token(s, length, reverse)
            k = s - s0
            dl = dls[k]
            _step_sizes(xdbl, WT, bdt, b, t, d0, w, raw, dl, dsp[k])
            u_t = xc[b, t, d0 : d0 + w]
            for j in range(w):
                uu[j] = dl[j] * u_t[j]
            for n in range(d_state):
                bn = xdbl[b, t, rank + n]
                a_n = AT[n, d0 : d0 + w]
                dec = decays[k, n]
                h_prev = hs[k, n]
                h_next = hs[k + 1, n]
                for j in range(w):
                    a = fast_exp(dl[j] * a_n[j])
                    dec[j] = a
                    h_next[j] = a * h_prev[j] + uu[j] * bn
        # Walk the chunk backwards.
        for s in range(s1 - 1, s0 - 1, -1):
            t = _token(s, length, reverse)
            k = s - s0
            dl = dls[k]
            u_t = xc[b, t, d0 : d0 + w]
            g_t = dout[b, t, d0 : d0 + w]
            if gate:
                # Gradient through out = y * silu(z): recompute y from the state.
                for j in range(w):
                    uu[j] = u_t[j] * Dblk[j]
                if add:
                    ya = yadd[b, t, d0 : d0 + w]
                    for j in range(w):
                        uu[j] += ya[j]
                for n in range(d_state):
                    cn = xdbl[b, t, rank + d_state + n]
                    h_cur = hs[k + 1, n]
                    for j in range(w):
                        uu[j] += cn * h_cur[j]
                z_t = z[b, t, d0 : d0 + w]
                dz_t = dz[b, t, d0 : d0 + w]
                for j in range(w):
                    zv = z_t[j]
                    sg = _sigmoid(zv)
                    dz_t[j] = g_t[j] * uu[j] * _dsilu(zv, sg)
                    gy[j] = g_t[j] * zv * sg
            else:
                for j in range(w):
                    gy[j] = g_t[j]
            if add:
                dya = dyadd[b, t, d0 : d0 + w]
                for j in range(w):
                    dya[j] = gy[j]
            for j in range(w):
                uu[j] = u_t[j]
                dDa[j] += gy[j] * uu[j]
                du_t[j] = gy[j] * Dblk[j]
                ddl_t[j] = 0.0
            for n in range(d_state):
                bn = xdbl[b, t, rank + n]
                cn = xdbl[b, t, rank + d_state + n]
                a_n = AT[n, d0 : d0 + w]
                dec = decays[k, n]
                h_prev = hs[k, n]
                h_cur = hs[k + 1, n]
                carry_n = carry[n]
                dA_n = dA[n]
                s_c = np.float32(0.0)  # unifies with float64 in the float64 specialisation
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
                dxdbl_part[blk, b, t, rank + d_state + n] = s_c
                dxdbl_part[blk, b, t, rank + n] = s_b
            # Through softplus and the rank-R projection.
            sp = dsp[k]
            for j in range(w):
                ddl_t[j] *= sp[j]
                dba[j] += ddl_t[j]
            for r in range(rank):
                xr = xdbl[b, t, r]
                w_r = WT[r, d0 : d0 + w]
                dW_r = dWa[r]
                s_r = np.float32(0.0)
                for j in range(w):
                    dW_r[j] += ddl_t[j] * xr
                    s_r += ddl_t[j] * w_r[j]
                dxdbl_part[blk, b, t, r] = s_r
            dxc_t = dxc[b, t, d0 : d0 + w]
            for j in range(w):
                dxc_t[j] = du_t[j]
    for n in range(d_state):
        for j in range(w):
            dAT[b, n, d0 + j] = dA[n, j]
    for r in range(rank):
        for j in range(w):
            dWT[b, r, d0 + j] = dWa[r, j]
    for j in range(w):
        dD[b, d0 + j] = dDa[j]
        dbdt[b, d0 + j] = dba[j]


@njit(parallel=True, cache=_CACHE)
def scan_backward(
    xc,
    xdbl,
    WT,
    bdt,
    AT,
    Dv,
    z,
    yadd,
    dout,
    ckpt,
    chunk,
    reverse,
    gate,
    add,
    dblk,
    dxc,
    dxdbl_part,
    dWT,
    dbdt,
    dAT,
    dD,
    dz,
    dyadd,
):
    """Gradients of ``scan_forward``.

    ``dxdbl_part`` (n_blocks, batch, length, R + 2N) is filled per channel block (summed by the
    caller); dWT (batch, R, C), dbdt, dD (batch, C) and dAT (batch, N, C) per batch item.
    """
    batch, _, d_inner = xc.shape
    n_blocks = (d_inner + dblk - 1) // dblk
    for job in prange(batch * n_blocks):
        b = job // n_blocks
        blk = job - b * n_blocks
        d0 = blk * dblk
        _scan_backward_block(
            xc,
            xdbl,
            WT,
            bdt,
            AT,
            Dv,
            z,
            yadd,
            dout,
            ckpt,
            chunk,
            reverse,
            gate,
            add,
            b,
            d0,
            min(dblk, d_inner - d0),
            blk,
            dxc,
            dxdbl_part,
            dWT,
            dbdt,
            dAT,
            dD,
            dz,
            dyadd,
        )
