"""The fused Mamba inner pass on CPU: compiled conv + SiLU and step sizes + scan + skip + gate.

:func:`conv_silu` and :func:`fused_scan` are autograd functions around the numba kernels of
:mod:`textmef.ssm._fused_kernels`. Per direction a Mamba block computes::

    xc    = conv_silu(x, conv_w, conv_b, reverse)          # (B, L, Din), token-major
    x_dbl = xc @ W_x.T                                     # torch GEMM: [dt | B | C]
    y     = fused_scan(xc, x_dbl, W_dt, b_dt, A, D, reverse, z=..., y_add=...)

``fused_scan`` folds in ``softplus(dt @ W_dt.T + b_dt)``, the selective scan, the ``D * xc``
skip, an added tensor (the other direction's output) and the ``silu(z)`` gate. ``reverse=True``
scans from the last token to the first with every buffer kept at the original token index,
which equals running the forward composition on flipped inputs and flipping the result back.

The kernels run on CPU tensors in float32 (float64 too, for gradient checks); other dtypes are
computed in float32 and cast back.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from textmef.ssm.scan import DEFAULT_CHUNK

_CHANNEL_BLOCK = 64
_MIN_CHANNEL_BLOCK = 16


def _kernels() -> Any:
    from textmef.ssm import _fused_kernels

    return _fused_kernels


def _channel_block(batch: int, channels: int) -> int:
    """Channels per job: 64, or fewer (down to 16) so there is a job for every thread."""
    threads = max(1, torch.get_num_threads())
    block = _CHANNEL_BLOCK
    while block > _MIN_CHANNEL_BLOCK and batch * math.ceil(channels / block) < threads:
        block //= 2
    return block


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            dtype = torch.float64
    return dtype


def _arr(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Detached, in ``dtype``, with unit stride along the channels (other strides are kept)."""
    t = t.detach().to(dtype)
    return t if t.stride(-1) == 1 else t.contiguous()


class _ConvSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, reverse):  # noqa: D102
        k = _kernels()
        dtype = _compute_dtype(x, weight)
        xa = _arr(x, dtype)
        WT = weight.detach().to(dtype)[:, 0, :].t().contiguous()
        ba = bias.detach().to(dtype).contiguous() if bias is not None else xa.new_zeros(x.shape[-1])
        out = xa.new_empty(x.shape)
        dblk = _channel_block(x.shape[0], x.shape[-1])
        k.conv_forward(xa.numpy(), WT.numpy(), ba.numpy(), out.numpy(), bool(reverse), dblk)
        ctx.save_for_backward(xa, WT, ba)
        ctx.reverse = bool(reverse)
        ctx.has_bias = bias is not None
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, dout):  # noqa: D102
        k = _kernels()
        xa, WT, ba = ctx.saved_tensors
        dout = dout.to(xa.dtype).contiguous()
        dpre = torch.empty_like(dout)
        dx = torch.empty_like(dout)
        batch, _, channels = xa.shape
        dWT = xa.new_empty(batch, *WT.shape)
        dbias = xa.new_empty(batch, channels)
        dblk = _channel_block(batch, channels)
        k.conv_backward(
            xa.numpy(),
            WT.numpy(),
            ba.numpy(),
            dout.numpy(),
            dpre.numpy(),
            dx.numpy(),
            dWT.numpy(),
            dbias.numpy(),
            ctx.reverse,
            dblk,
        )
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        dweight = dWT.sum(0).t().unsqueeze(1).to(w_dtype)
        dbias_out = dbias.sum(0).to(b_dtype) if ctx.has_bias else None
        return dx.to(x_dtype), dweight, dbias_out, None


def conv_silu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, reverse: bool = False
) -> torch.Tensor:
    """``silu(causal depthwise conv(x))`` on token-major (B, L, D) CPU tensors.

    Equals ``F.silu(causal_depthwise_conv(x, weight, bias))`` of :mod:`textmef.nn.mamba`; with
    ``reverse=True`` it equals that on ``x.flip(1)``, flipped back (the conv reads the following
    tokens).

    Args:
        x: Tokens (B, L, D); only the channel dimension needs unit stride.
        weight: Conv1d weight (D, 1, K).
        bias: Conv1d bias (D,) or None.
        reverse: Direction of the causal window.
    """
    out: torch.Tensor = _ConvSiLU.apply(x, weight, bias, reverse)
    return out


class _FusedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xc, x_dbl, W_dt, b_dt, A, D, z, y_add, reverse, chunk, keep):  # noqa: D102
        k = _kernels()
        dtype = _compute_dtype(xc, x_dbl, W_dt, b_dt, A, D, z, y_add)
        batch, length, channels = xc.shape
        xa = _arr(xc, dtype)
        xd = _arr(x_dbl, dtype)
        WT = W_dt.detach().to(dtype).t().contiguous()
        ba = b_dt.detach().to(dtype).contiguous()
        AT = A.detach().to(dtype).t().contiguous()
        Da = D.detach().to(dtype).contiguous()
        gate, add = z is not None, y_add is not None
        # Placeholders for absent z / y_add; z's is strided like the usual z (a view of in_proj's
        # output) so the gated and ungated calls share one compiled specialisation.
        za = _arr(z, dtype) if gate else xa.new_empty(1, 2, 2)[..., :1]
        ya = _arr(y_add, dtype) if add else xa.new_empty(1, 1, 1)
        n_chunks = math.ceil(length / chunk) if keep else 0
        out = xa.new_empty(batch, length, channels)
        ckpt = xa.new_empty(batch, n_chunks, AT.shape[0], channels)
        dblk = _channel_block(batch, channels)
        k.scan_forward(
            xa.numpy(),
            xd.numpy(),
            WT.numpy(),
            ba.numpy(),
            AT.numpy(),
            Da.numpy(),
            za.numpy(),
            ya.numpy(),
            out.numpy(),
            ckpt.numpy(),
            chunk,
            bool(reverse),
            gate,
            add,
            dblk,
        )
        if keep:
            ctx.save_for_backward(xa, xd, WT, ba, AT, Da, za, ya, ckpt)
            ctx.flags = (bool(reverse), gate, add, chunk)
            ctx.dtypes = tuple(
                None if t is None else t.dtype for t in (xc, x_dbl, W_dt, b_dt, A, D, z, y_add)
            )
        return out.to(xc.dtype)

    @staticmethod
    def backward(ctx, dout):  # noqa: D102
        k = _kernels()
        xa, xd, WT, ba, AT, Da, za, ya, ckpt = ctx.saved_tensors
        reverse, gate, add, chunk = ctx.flags
        dout = dout.to(xa.dtype).contiguous()
        batch, length, channels = xa.shape
        dblk = _channel_block(batch, channels)
        n_blocks = math.ceil(channels / dblk)
        dxc = torch.empty_like(xa, memory_format=torch.contiguous_format)
        dxdbl = xa.new_empty(n_blocks, batch, length, xd.shape[-1])
        dWT = xa.new_empty(batch, *WT.shape)
        dbdt = xa.new_empty(batch, channels)
        dAT = xa.new_empty(batch, *AT.shape)
        dD = xa.new_empty(batch, channels)
        dummy = xa.new_empty(1, 1, 1)
        dz = torch.empty_like(dxc) if gate else dummy
        dya = torch.empty_like(dxc) if add else dummy
        k.scan_backward(
            xa.numpy(),
            xd.numpy(),
            WT.numpy(),
            ba.numpy(),
            AT.numpy(),
            Da.numpy(),
            za.numpy(),
            ya.numpy(),
            dout.numpy(),
            ckpt.numpy(),
            chunk,
            reverse,
            gate,
            add,
            dblk,
            dxc.numpy(),
            dxdbl.numpy(),
            dWT.numpy(),
            dbdt.numpy(),
            dAT.numpy(),
            dD.numpy(),
            dz.numpy(),
            dya.numpy(),
        )
        dts = ctx.dtypes
        grads = [
            dxc,
            dxdbl[0] if n_blocks == 1 else dxdbl.sum(0),
            dWT.sum(0).t(),
            dbdt.sum(0),
            dAT.sum(0).t(),
            dD.sum(0),
            dz if gate else None,
            dya if add else None,
        ]
        out = [g if g is None else g.to(dt) for g, dt in zip(grads, dts)]
        return (*out, None, None, None)


def fused_scan(
    xc: torch.Tensor,
    x_dbl: torch.Tensor,
    W_dt: torch.Tensor,
    b_dt: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor,
    *,
    reverse: bool = False,
    z: torch.Tensor | None = None,
    y_add: torch.Tensor | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """One direction of the Mamba inner pass, fused, on token-major CPU tensors.

    Computes, with ``R = W_dt.shape[1]`` and ``N = A.shape[1]``::

        dt, B, C = x_dbl.split([R, N, N], -1)
        y = selective_scan(xc, softplus(dt @ W_dt.T + b_dt), A, B, C) + xc * D
        y = y + y_add                  # if y_add is given
        y = y * silu(z)                # if z is given

    With ``reverse=True`` the scan runs from the last token to the first (the result equals the
    above on every input flipped along the tokens, flipped back). Differentiable in every
    tensor input.

    Args:
        xc: Scan inputs (B, L, Din).
        x_dbl: ``[dt | B | C]`` (B, L, R + 2N).
        W_dt: Step-size projection weight (Din, R).
        b_dt: Step-size projection bias (Din,).
        A: Negative state matrix (Din, N).
        D: Skip weights (Din,).
        reverse: Scan direction.
        z: Gate input (B, L, Din), or None for no gate.
        y_add: Added to the output before the gate, (B, L, Din), or None.
        chunk: Steps between the forward pass's state checkpoints (backward memory bound).
    """
    inputs = (xc, x_dbl, W_dt, b_dt, A, D, z, y_add)
    keep = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    out: torch.Tensor = _FusedScan.apply(*inputs, reverse, chunk, keep)
    return out
