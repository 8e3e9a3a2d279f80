"""Selective scan with interchangeable backends.

* ``"numba"``: compiled CPU kernels with a hand-written backward (the fast CPU path).
* ``"torch"``: chunked parallel scan in plain PyTorch; runs on any device, memory bounded by
  the chunk size (chunks are recomputed in the backward pass through activation checkpointing).
* ``"mamba_ssm"``: the CUDA kernel of the ``mamba_ssm`` package, used only when it is installed.
* ``"reference"``: the sequential loop of :mod:`textmef.ssm.reference` (slow, for tests).

``"auto"`` picks numba on CPU, mamba_ssm on CUDA if importable, otherwise torch.

``"fused"`` (CPU, numba) names the fused Mamba inner pass of :mod:`textmef.ssm.fused`, which
:class:`textmef.nn.mamba.Mamba` then uses in place of the composition around the scan (opt-in:
``"auto"`` keeps the composition); a bare :func:`selective_scan` runs the numba kernel for it.
"""

from __future__ import annotations

import functools
import importlib.util
import math

import torch
from torch.utils.checkpoint import checkpoint

from textmef.ssm.reference import selective_scan_reference

BACKENDS = ("auto", "numba", "torch", "mamba_ssm", "reference", "fused")
DEFAULT_CHUNK = 128
_CHANNEL_BLOCK = 64


@functools.cache
def numba_available() -> bool:
    return importlib.util.find_spec("numba") is not None


@functools.cache
def mamba_ssm_available() -> bool:
    return importlib.util.find_spec("mamba_ssm") is not None


def _kernels():
    from textmef.ssm import _numba_kernels

    return _numba_kernels


class _NumbaScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, chunk, keep_for_backward):  # noqa: D102
        k = _kernels()
        u, delta, B, C = (t.detach().contiguous() for t in (u, delta, B, C))
        AT = A.detach().t().contiguous()
        batch, length, d_inner = u.shape
        n_chunks = math.ceil(length / chunk) if keep_for_backward else 0
        y = torch.empty_like(u)
        ckpt = u.new_empty(batch, n_chunks, AT.shape[0], d_inner)
        k.scan_forward(
            u.numpy(),
            delta.numpy(),
            AT.numpy(),
            B.numpy(),
            C.numpy(),
            y.numpy(),
            ckpt.numpy(),
            chunk,
            _CHANNEL_BLOCK,
        )
        if n_chunks:
            ctx.save_for_backward(u, delta, AT, B, C, ckpt)
            ctx.chunk = chunk
        return y

    @staticmethod
    def backward(ctx, dy):  # noqa: D102
        k = _kernels()
        u, delta, AT, B, C, ckpt = ctx.saved_tensors
        dy = dy.contiguous()
        batch, length, d_inner = u.shape
        n_blocks = math.ceil(d_inner / _CHANNEL_BLOCK)
        du = torch.empty_like(u)
        ddelta = torch.empty_like(u)
        dAT = u.new_empty(batch, *AT.shape)
        dB = B.new_empty(n_blocks, *B.shape)
        dC = C.new_empty(n_blocks, *C.shape)
        k.scan_backward(
            u.numpy(),
            delta.numpy(),
            AT.numpy(),
            B.numpy(),
            C.numpy(),
            dy.numpy(),
            ckpt.numpy(),
            ctx.chunk,
            _CHANNEL_BLOCK,
            du.numpy(),
            ddelta.numpy(),
            dAT.numpy(),
            dB.numpy(),
            dC.numpy(),
        )
        return du, ddelta, dAT.sum(0).t(), dB.sum(0), dC.sum(0), None, None


def _chunk_scan_torch(u, delta, A, B, C, h0):
    """Exact scan of one chunk by log-depth doubling; returns (y, last state)."""
    decay = torch.exp(delta.unsqueeze(-1) * A.unsqueeze(0).unsqueeze(0))  # (b, T, d, n)
    drive = (delta * u).unsqueeze(-1) * B.unsqueeze(2)
    drive = torch.cat([drive[:, :1] + decay[:, :1] * h0.unsqueeze(1), drive[:, 1:]], dim=1)
    length = u.shape[1]
    step = 1
    while step < length:
        drive = torch.cat(
            [drive[:, :step], drive[:, step:] + decay[:, step:] * drive[:, :-step]], dim=1
        )
        decay = torch.cat([decay[:, :step], decay[:, step:] * decay[:, :-step]], dim=1)
        step *= 2
    y = torch.einsum("btdn,btn->btd", drive, C)
    return y, drive[:, -1]


def selective_scan_torch(u, delta, A, B, C, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Chunked parallel scan in pure PyTorch (any device)."""
    batch, length, d_inner = u.shape
    h = u.new_zeros(batch, d_inner, A.shape[1])
    ys = []
    use_ckpt = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C))
    for start in range(0, length, chunk):
        sl = slice(start, start + chunk)
        args = (u[:, sl], delta[:, sl], A, B[:, sl], C[:, sl], h)
        if use_ckpt:
            y, h = checkpoint(_chunk_scan_torch, *args, use_reentrant=False)
        else:
            y, h = _chunk_scan_torch(*args)
        ys.append(y)
    return torch.cat(ys, dim=1)


def _selective_scan_mamba_ssm(u, delta, A, B, C):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    y = selective_scan_fn(
        u.transpose(1, 2).contiguous(),
        delta.transpose(1, 2).contiguous(),
        A,
        B.transpose(1, 2).contiguous(),
        C.transpose(1, 2).contiguous(),
    )
    return y.transpose(1, 2)


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn ``"auto"`` into a concrete backend for ``device``; validate explicit choices."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        if device.type == "cpu" and numba_available():
            return "numba"
        if device.type == "cuda" and mamba_ssm_available():
            return "mamba_ssm"
        return "torch"
    if backend in ("numba", "fused") and device.type != "cpu":
        raise ValueError(f"the {backend} scan backend runs on CPU tensors only")
    if backend == "fused" and not numba_available():
        raise ValueError("scan backend 'fused' requested but numba is not installed")
    if backend == "mamba_ssm" and not mamba_ssm_available():
        raise ValueError("scan backend 'mamba_ssm' requested but the package is not installed")
    return backend


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    backend: str = "auto",
    chunk: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Selective scan ``y_t = C_t . h_t``, ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``.

    Args:
        u: Inputs, (batch, length, d_inner).
        delta: Positive step sizes, (batch, length, d_inner).
        A: Negative state matrix, (d_inner, d_state).
        B: Input projections, (batch, length, d_state).
        C: Output projections, (batch, length, d_state).
        backend: One of :data:`BACKENDS`.
        chunk: Tokens per chunk; bounds the scratch memory of the numba and torch backends.

    Returns:
        y, (batch, length, d_inner). Differentiable in every input.
    """
    backend = resolve_backend(backend, u.device)
    if backend in ("numba", "fused"):
        dtype = torch.promote_types(u.dtype, torch.float32)
        inputs = [t.to(dtype) for t in (u, delta, A, B, C)]
        keep = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
        y = _NumbaScan.apply(*inputs, chunk, keep)
        return y.to(u.dtype)
    if backend == "torch":
        return selective_scan_torch(u, delta, A, B, C, chunk=chunk)
    if backend == "mamba_ssm":
        return _selective_scan_mamba_ssm(u, delta, A, B, C)
    return selective_scan_reference(u, delta, A, B, C)
