"""Plain sequential selective scan: the ground truth every fast path is tested against.

Layout (token-major, as the Mamba blocks produce it):
    u, delta: (batch, length, d_inner)
    A:        (d_inner, d_state), negative real
    B, C:     (batch, length, d_state)
Recurrence per token t, channel d and state n:
    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t = sum_n C_t * h_t
"""

from __future__ import annotations

import torch


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
) -> torch.Tensor:
    """Run the scan one token at a time with ordinary autograd.

    Args:
        u: Input sequence, (batch, length, d_inner).
        delta: Positive step sizes, same shape as ``u``.
        A: State matrix, (d_inner, d_state).
        B: Input projections, (batch, length, d_state).
        C: Output projections, (batch, length, d_state).

    Returns:
        y of shape (batch, length, d_inner), without the ``D * u`` skip term.
    """
    batch, length, d_inner = u.shape
    h = u.new_zeros(batch, d_inner, A.shape[1])
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, t, :, None] * A)
        h = decay * h + (delta[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))
    return torch.stack(ys, dim=1)
