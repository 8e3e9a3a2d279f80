"""Where and how wide the computation runs: devices and CPU threads."""

from __future__ import annotations

import torch

from textmef.errors import InputError

__all__ = ["resolve_device", "set_threads"]


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads for both PyTorch and the numba scan kernels."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    try:
        import numba
    except ImportError:
        return
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def resolve_device(device: str | torch.device) -> torch.device:
    """Validate a device name (``cpu``, ``cuda``, ``cuda:1``) with a clear error."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(None, f"unknown device {device!r}; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(None, "device 'cuda' requested but no CUDA GPU is available")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(None, f"unsupported device {device!r}; use cpu or cuda")
    return dev
