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
    # numba.config fills its settings in through globals() at import time, so mypy cannot
    # see NUMBA_NUM_THREADS (the number of threads numba launched, the most it accepts).
    max_threads: int = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
    numba.set_num_threads(min(threads, max_threads))


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
