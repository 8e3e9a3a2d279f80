"""Mamba block (selective state space) in token-major layout, single- or bidirectional."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from textmef.ssm import resolve_backend, selective_scan
from textmef.ssm.fused import conv_silu, fused_scan


class _ScanBranch(nn.Module):
    """The per-direction parameters of a Mamba block: conv, projections, A and D."""

    def __init__(
        self,
        d_inner: int,
        d_state: int,
        d_conv: int,
        dt_rank: int,
        dt_min: float,
        dt_max: float,
        dt_init_floor: float,
    ) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state))
        self.D = nn.Parameter(torch.empty(d_inner))
        self._dt_range = (dt_min, dt_max, dt_init_floor)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Mamba's initialisation: log-uniform step sizes, A = -(1..N), D = 1."""
        dt_min, dt_max, floor = self._dt_range
        dt_rank = self.dt_proj.in_features
        nn.init.uniform_(self.dt_proj.weight, -(dt_rank**-0.5), dt_rank**-0.5)
        dt = torch.exp(
            torch.rand(self.dt_proj.out_features) * (math.log(dt_max) - math.log(dt_min))
            + math.log(dt_min)
        ).clamp(min=floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            d_state = self.A_log.shape[1]
            self.A_log.copy_(
                torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).expand_as(self.A_log)
            )
            self.D.fill_(1.0)

    def forward(self, x: torch.Tensor, backend: str) -> torch.Tensor:
        """x: (B, L, d_inner) -> SSM output (B, L, d_inner), before gating."""
        x = F.silu(causal_depthwise_conv(x, self.conv1d.weight, self.conv1d.bias))
        d_state = self.A_log.shape[1]
        dt, B, C = self.x_proj(x).split([self.dt_proj.in_features, d_state, d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))
        A = -torch.exp(self.A_log.float())
        y = selective_scan(x, delta, A, B, C, backend=backend)
        return y + x * self.D

    def forward_fused(
        self,
        x: torch.Tensor,
        reverse: bool,
        z: torch.Tensor | None = None,
        y_add: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The same through the fused CPU kernels of :mod:`textmef.ssm.fused`.

        ``reverse=True`` equals ``forward(x.flip(1)).flip(1)`` without the copies; ``y_add`` is
        added to the output and ``z`` gates it, ``(y + y_add) * silu(z)``.
        """
        xc = conv_silu(x, self.conv1d.weight, self.conv1d.bias, reverse)
        x_dbl = F.linear(xc, self.x_proj.weight)
        A = -torch.exp(self.A_log.float())
        return fused_scan(
            xc,
            x_dbl,
            self.dt_proj.weight,
            self.dt_proj.bias,
            A,
            self.D,
            reverse=reverse,
            z=z,
            y_add=y_add,
        )


def causal_depthwise_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Mamba's causal depthwise conv1d, computed token-major: (B, L, D) -> (B, L, D).

    Equals ``Conv1d(D, D, K, groups=D, padding=K - 1)`` on ``x.transpose(1, 2)`` cut to the
    first L outputs, with the same weights, but as K shifted multiply-adds on the token-major
    tensor. On CPU, PyTorch's backward for that depthwise conv1d on a transposed view takes a
    slow path (2 s per call on a 96x96 crop, 60 % of a training step); this form needs no
    transposes and its backward is as cheap as its forward.

    Args:
        x: Tokens (B, L, D).
        weight: Conv1d weight (D, 1, K).
        bias: Conv1d bias (D,) or None.
    """
    length, taps = x.shape[1], weight.shape[-1]
    padded = F.pad(x, (0, 0, taps - 1, 0))
    kernel = weight[:, 0, :].to(x.dtype)
    out = padded[:, :length] * kernel[:, 0]
    for k in range(1, taps):
        out = out + padded[:, k : k + length] * kernel[:, k]
    return out if bias is None else out + bias.to(x.dtype)


class Mamba(nn.Module):
    """Mamba mixer on (B, L, d_model) tokens.

    ``bidirectional=True`` is the "v2" variant of Vision Mamba / Pan-Mamba: a second,
    independent branch scans the reversed sequence and the two outputs are summed before the
    output projection.

    Args:
        d_model: Token width.
        d_state: SSM state size N.
        d_conv: Width of the causal depthwise convolution.
        expand: d_inner = expand * d_model.
        bidirectional: Add the reversed-direction branch.
        scan_backend: One of :data:`textmef.ssm.BACKENDS`. ``"fused"`` runs the fused CPU
            kernels of :mod:`textmef.ssm.fused` (conv + SiLU, then step sizes + scan + skip +
            gate, CPU only); the other values run the unfused composition with that
            :func:`textmef.ssm.selective_scan` backend.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        bidirectional: bool = False,
        scan_backend: str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        d_inner = expand * d_model
        dt_rank = math.ceil(d_model / 16)
        self.scan_backend = scan_backend
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        branch = (d_inner, d_state, d_conv, dt_rank, dt_min, dt_max, dt_init_floor)
        self.forward_branch = _ScanBranch(*branch)
        self.backward_branch = _ScanBranch(*branch) if bidirectional else None
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def uses_fused(self, device: torch.device) -> bool:
        """Whether :meth:`forward` takes the fused path for tokens on ``device``."""
        # "auto" keeps the unfused composition for now: the fused kernels are 1.6-1.8x faster
        # on a d_model 64 block but not yet on whole networks (see textmef.ssm.fused).
        return resolve_backend(self.scan_backend, device) == "fused"

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, d_model) -> (B, L, d_model)."""
        x, z = self.in_proj(tokens).chunk(2, dim=-1)
        if self.uses_fused(tokens.device):
            if self.backward_branch is None:
                return self.out_proj(self.forward_branch.forward_fused(x, False, z=z))
            y = self.forward_branch.forward_fused(x, False)
            return self.out_proj(self.backward_branch.forward_fused(x, True, z=z, y_add=y))
        y = self.forward_branch(x, self.scan_backend)
        if self.backward_branch is not None:
            y = y + self.backward_branch(x.flip(1), self.scan_backend).flip(1)
        return self.out_proj(y * F.silu(z))
