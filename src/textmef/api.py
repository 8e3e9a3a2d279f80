"""Python API: ``load_model`` and ``fuse``; the CLI is a thin layer over these."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from textmef.checkpoint import load_checkpoint, packaged_weights_path
from textmef.errors import CheckpointError, InputError
from textmef.inference import DEFAULT_OVERLAP, DEFAULT_TILE, fuse_tensors
from textmef.models.fusionnet import FusionNet

ImageLike = str | os.PathLike | np.ndarray | torch.Tensor


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


def load_model(
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    strict: bool = True,
) -> FusionNet:
    """Load a fusion network in eval mode.

    Args:
        weights: A ``.safetensors`` checkpoint; None uses the one shipped in the package.
        device: ``cpu`` or ``cuda``.
        strict: Refuse checkpoints whose keys do not match the model exactly.

    Raises:
        CheckpointError: No weights given and none packaged, or the file is unusable.
    """
    if weights is None:
        weights = packaged_weights_path()
        if weights is None:
            raise CheckpointError(
                None,
                "no checkpoint ships with this version of textmef yet; "
                "pass weights (--weights PATH) to a .safetensors file",
            )
    model, _ = load_checkpoint(weights, strict=strict)
    return model.to(resolve_device(device))


def _as_tensor(image: ImageLike, name: str) -> tuple[torch.Tensor, dict]:
    """Normalise any accepted input to (1|B, 3, H, W) float32 plus how to convert back."""
    from textmef import io

    if isinstance(image, (str, os.PathLike)):
        loaded = io.read_image(Path(image))
        return io.to_tensor(loaded.pixels), {"kind": "array", "dtype": np.float32}
    if isinstance(image, torch.Tensor):
        t = image.float()
        if t.ndim == 3:
            t = t.unsqueeze(0)
        if t.ndim != 4 or t.shape[1] != 3:
            raise InputError(
                None, f"{name} tensor must be (B,3,H,W) or (3,H,W), got {tuple(image.shape)}"
            )
        return t, {"kind": "tensor", "batched": image.ndim == 4}
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise InputError(None, f"{name} array must be (H,W,3) RGB, got {image.shape}")
        scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(image.dtype, 1.0)
        return io.to_tensor(image.astype(np.float32) / scale), {
            "kind": "array",
            "dtype": image.dtype,
        }
    raise InputError(
        None, f"{name} must be a path, numpy array or torch tensor, got {type(image).__name__}"
    )


def _restore(fused: torch.Tensor, how: dict):
    from textmef import io

    fused = fused.clamp(0, 1)
    if how["kind"] == "tensor":
        return fused if how["batched"] else fused[0]
    pixels = io.from_tensor(fused.cpu())
    dtype = np.dtype(how["dtype"])
    if dtype == np.uint8:
        return np.round(pixels * 255).astype(np.uint8)
    if dtype == np.uint16:
        return np.round(pixels * 65535).astype(np.uint16)
    return pixels.astype(dtype if dtype.kind == "f" else np.float32)


def fuse(
    under: ImageLike,
    over: ImageLike,
    *,
    model: FusionNet | None = None,
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    tile: int | None = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
):
    """Fuse an under- and an over-exposed image of the same scene.

    Args:
        under: Path, (H,W,3) array (uint8, uint16 or float in [0,1]) or (B,3,H,W) tensor.
        over: Same kind and size as ``under``.
        model: A loaded model; defaults to ``load_model(weights, device)``.
        weights: Checkpoint used when ``model`` is None (None: the packaged one).
        device: Where to run when ``model`` is None.
        tile: Tile side for bounded memory (None fuses in one piece).
        overlap: Blend width between tiles.

    Returns:
        The fused image in the form of ``under``: an array of the same dtype (float32 for
        paths), or a tensor; values clamped to [0, 1] (or the integer range).
    """
    u, how = _as_tensor(under, "under")
    o, _ = _as_tensor(over, "over")
    if u.shape != o.shape:
        raise InputError(
            None, f"under and over differ in size: {tuple(u.shape[-2:])} vs {tuple(o.shape[-2:])}"
        )
    if model is None:
        model = load_model(weights, device)
    dev = next(model.parameters()).device
    fused = fuse_tensors(model, u.to(dev), o.to(dev), tile=tile, overlap=overlap)
    return _restore(fused, how)
