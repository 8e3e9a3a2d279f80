"""The Python API: ``load_model`` and ``fuse``.

:func:`fuse` is the one way a pair becomes a fused image: the command line, the web app,
stack fusion (:mod:`textmef.stack`), the benchmark's network methods and training's
validation all go through it, so tiling, device placement, threads, clamping and the
dtype round trip behave the same everywhere.
"""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch

from textmef.checkpoint import load_checkpoint, packaged_weights_path
from textmef.errors import CheckpointError, InputError
from textmef.io import DEFAULT_MAX_PIXELS
from textmef.models.fusionnet import FusionNet
from textmef.runtime import resolve_device, set_threads
from textmef.tiling import (
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    DEFAULT_WORK_SIZE,
    check_tiling,
    check_work_size,
)

__all__ = ["ImageLike", "fuse", "load_model", "resolve_device", "set_threads"]

ImageLike: TypeAlias = "str | os.PathLike[str] | np.ndarray | torch.Tensor"
log = logging.getLogger(__name__)


def load_model(
    weights: str | os.PathLike[str] | None = None,
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
                "this installation of textmef lacks its packaged weights "
                "(textmef/weights/textmef.safetensors); reinstall textmef or pass "
                "weights (--weights PATH) to a .safetensors file",
            )
    model, _ = load_checkpoint(os.fspath(weights), strict=strict)
    return model.to(resolve_device(device))


def _as_tensor(
    image: ImageLike, name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Normalise any accepted input to (1|B, 3, H, W) float32 plus how to convert back."""
    from textmef import io

    if isinstance(image, (str, os.PathLike)):
        loaded = io.read_image(Path(image), max_pixels)
        return io.to_tensor(loaded.pixels), {"kind": "array", "dtype": np.float32}
    if isinstance(image, torch.Tensor):
        t = image.float()
        if t.ndim == 3:
            t = t.unsqueeze(0)
        if t.ndim != 4 or t.shape[1] != 3:
            raise InputError(
                None, f"{name} tensor must be (B,3,H,W) or (3,H,W), got {tuple(image.shape)}"
            )
        return t, {"kind": "tensor", "batched": image.ndim == 4, "device": image.device}
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise InputError(None, f"{name} array must be (H,W,3) RGB, got {image.shape}")
        scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(image.dtype, 1.0)
        return io.to_tensor(image.astype(np.float32) / scale), {
            "kind": "array",
            "dtype": image.dtype,
        }
    raise InputError(
        None,
        f"{name} must be a path, numpy array or torch tensor, got {type(image).__name__}",
    )


def _check_path_pair(under: Path, over: Path, max_pixels: int | None) -> None:
    """Headers of both files, their sizes and distinctness, before any decoding."""
    from textmef import io

    first = io.check_image_file(under, max_pixels)
    second = io.check_image_file(over, max_pixels)
    if io.same_file(under, over):
        raise InputError(over, "is the same file as the under-exposed image")
    if (first.width, first.height) != (second.width, second.height):
        raise InputError(
            over,
            f"is {second.size_text} but {under.name} is {first.size_text}; the exposures "
            "must be the same size",
        )


def _restore(fused: torch.Tensor, how: dict[str, Any]) -> np.ndarray | torch.Tensor:
    from textmef import io

    fused = fused.clamp_(0, 1)
    if how["kind"] == "tensor":
        fused = fused.to(how["device"])
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
    model: torch.nn.Module | None = None,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    work_size: int = DEFAULT_WORK_SIZE,
    full_res: bool = False,
    threads: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Any:
    """Fuse an under- and an over-exposed image of the same scene.

    Args:
        under: Path, (H,W,3) array (uint8, uint16 or float in [0,1]), (3,H,W) or (B,3,H,W)
            tensor in [0, 1].
        over: Same kind and size as ``under``.
        model: A loaded model; defaults to ``load_model(weights, device)``.
        weights: Checkpoint used when ``model`` is None (None: the packaged one).
        device: Where to run (``cpu``, ``cuda``); None keeps the model where it is (a
            model loaded here goes to the CPU). A given model is moved there.
        tile: Pixel budget of a tile (``tile * tile`` pixels) for bounded memory; larger
            images are fused in full-width strips with the whole image's statistics, which
            gives the one-piece result (see :mod:`textmef.inference`); 0 fuses the whole
            image in one piece.
        overlap: Rows shared by neighbouring strips.
        work_size: Images of more than ``work_size * work_size`` pixels take the guided
            path: the network fuses the pair downscaled to about that many pixels and a
            local colour transform fitted against the exposures carries its result to full
            resolution (:func:`textmef.inference.fuse_guided`; logged at INFO).
        full_res: Run the network at full resolution (tiled) whatever the size.
        threads: CPU threads for PyTorch and the scan kernels (None: leave as set).
        max_pixels: for paths, the most pixels per image, checked from the header before
            anything is decoded (None: no limit).

    Returns:
        The fused image in the form of ``under``: an array of the same dtype (float32 for
        paths), or a tensor on ``under``'s device; values clamped to [0, 1] (or the
        integer range).

    Raises:
        InputError: unreadable or mismatched inputs, bad tile settings or device.
        CheckpointError: the weights cannot be loaded.
    """
    from textmef.inference import fuse_guided, fuse_tensors, plan_fusion

    check_tiling(tile, overlap)
    check_work_size(work_size)
    if isinstance(under, (str, os.PathLike)) and isinstance(over, (str, os.PathLike)):
        _check_path_pair(Path(under), Path(over), max_pixels)
    u, how = _as_tensor(under, "under", max_pixels)
    o, _ = _as_tensor(over, "over", max_pixels)
    if u.shape != o.shape:
        raise InputError(
            None,
            f"under and over differ in size: {tuple(u.shape[-2:])} vs {tuple(o.shape[-2:])}",
        )
    if threads:
        set_threads(threads)
    if model is None:
        model = load_model(weights, device or "cpu")
    elif device is not None:
        model = model.to(resolve_device(device))
    dev = next(model.parameters()).device
    height, width = u.shape[-2:]
    plan = plan_fusion(height, width, work_size, full_res)
    if plan.guided:
        log.info("%s", plan.describe())
    # fuse_guided is fuse_tensors itself for images within the working size.
    run = fuse_tensors if full_res else partial(fuse_guided, work_size=work_size)
    fused = run(model, u.to(dev), o.to(dev), tile=tile, overlap=overlap)
    return _restore(fused, how)
