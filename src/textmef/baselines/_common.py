"""Tensor plumbing every baseline shares: input checks, per-image loops, clamped output.

Every baseline has the fusion network's call signature: ``fn(under, over)`` takes two
float tensors of shape (B, 3, H, W) (or one image as (3, H, W)), RGB in [0, 1], and
returns a float32 tensor of the same shape on the same device, clamped to [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

NumpyFusion = Callable[[np.ndarray, np.ndarray], np.ndarray]


def prepare_pair(
    under: torch.Tensor, over: torch.Tensor, method: str
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Check an exposure pair and bring it to float32 batches of shape (B, 3, H, W).

    Args:
        under: the under-exposed image(s), (B, 3, H, W) or (3, H, W), any float dtype.
        over: the over-exposed image(s), same shape, dtype kind and device as ``under``.
        method: the baseline's name, used in error messages.

    Returns:
        ``(under, over, single)``: float32 4-D tensors on the input device, and whether the
        input was a single (3, H, W) image, so :func:`finish` can drop the batch axis again.

    Raises:
        TypeError: an input is not a tensor, or not floating point.
        ValueError: the shapes or devices differ, the shape is not (B, 3, H, W) or
            (3, H, W), or an image has no pixels.
    """
    for name, tensor in (("under", under), ("over", over)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(
                f"{method} fusion: {name} must be a torch.Tensor, got {type(tensor).__name__}"
            )
        if not tensor.is_floating_point():
            # Integer images are almost always 0..255 and would silently saturate to white.
            raise TypeError(
                f"{method} fusion: {name} must be a float tensor with values in [0, 1], got "
                f"{tensor.dtype}; convert with tensor.float() / 255 (8-bit) or / 65535 (16-bit)"
            )
    if under.shape != over.shape:
        raise ValueError(
            f"{method} fusion: under and over differ in shape: "
            f"{tuple(under.shape)} vs {tuple(over.shape)}"
        )
    if under.device != over.device:
        raise ValueError(
            f"{method} fusion: under and over are on different devices: "
            f"{under.device} vs {over.device}"
        )
    if under.dim() not in (3, 4) or under.shape[-3] != 3:
        raise ValueError(
            f"{method} fusion: expected (B, 3, H, W) or (3, H, W) RGB tensors, "
            f"got {tuple(under.shape)}"
        )
    if under.shape[-1] == 0 or under.shape[-2] == 0:
        raise ValueError(f"{method} fusion: the images are empty ({tuple(under.shape)})")
    single = under.dim() == 3
    if single:
        under, over = under.unsqueeze(0), over.unsqueeze(0)
    return under.to(torch.float32), over.to(torch.float32), single


def finish(fused: torch.Tensor, single: bool, device: torch.device) -> torch.Tensor:
    """Clamp a fused batch to [0, 1] as float32 on ``device``, undoing the batch axis if added.

    NaN becomes 0, as in :func:`textmef.io.write_image`, so a benchmark never scores NaN.
    """
    fused = torch.nan_to_num(
        fused.to(device=device, dtype=torch.float32), nan=0.0, posinf=1.0, neginf=0.0
    ).clamp_(0.0, 1.0)
    return fused.squeeze(0) if single else fused


def fuse_per_image(
    under: torch.Tensor, over: torch.Tensor, fuse: NumpyFusion, method: str
) -> torch.Tensor:
    """Run a numpy fusion on each image pair of a batch and give back a tensor.

    Args:
        under: the under-exposed image(s), as for :func:`prepare_pair`.
        over: the over-exposed image(s), same shape.
        fuse: takes two float32 (H, W, 3) RGB arrays in [0, 1], returns one (H, W, 3) array.
        method: the baseline's name, used in error messages.

    Returns:
        The fused tensor, float32, clamped to [0, 1], same shape and device as ``under``.

    Raises:
        TypeError: see :func:`prepare_pair`.
        ValueError: see :func:`prepare_pair`.
    """
    device = under.device if isinstance(under, torch.Tensor) else torch.device("cpu")
    under, over, single = prepare_pair(under, over, method)
    fused = torch.empty_like(under, device="cpu")
    for i in range(under.shape[0]):
        result = fuse(_to_hwc(under[i]), _to_hwc(over[i]))
        fused[i] = torch.from_numpy(np.asarray(result, dtype=np.float32)).permute(2, 0, 1)
    return finish(fused, single, device)


def _to_hwc(chw: torch.Tensor) -> np.ndarray:
    # detach: numpy cannot hold autograd history; contiguous: OpenCV needs a dense array.
    return np.ascontiguousarray(chw.detach().cpu().permute(1, 2, 0).numpy())
