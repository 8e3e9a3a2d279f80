"""Mertens exposure fusion (Mertens, Kautz, Van Reeth 2007) through OpenCV."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from textmef.baselines._common import fuse_per_image


@contextlib.contextmanager
def opencv_serial() -> Iterator[None]:
    """Run OpenCV single-threaded and without log lines, restoring both afterwards.

    One thread: MergeMertens (and OpenCV's HDR code) add per-frame results into a shared sum
    from worker threads in whatever order they finish, so threaded runs differ in the last
    float bit and, after rounding, by one level in a few pixels; serial runs are
    byte-identical. Quiet: the HDR code warns about an internal API change on its first
    call, which says nothing to users and breaks progress bars.
    """
    threads, level = cv2.getNumThreads(), cv2.utils.logging.getLogLevel()
    cv2.setNumThreads(1)
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)
        cv2.setNumThreads(threads)


# Mertens et al. weigh contrast, saturation and well-exposedness equally (all exponents 1).
# OpenCV's createMergeMertens() defaults to an exposure weight of 0, i.e. no well-exposedness
# term, which is not the published method; make-pairs keeps those defaults for its pseudo
# references (see OPENCV_DEFAULT_WEIGHTS) so that existing data sets reproduce.
PAPER_WEIGHTS = (1.0, 1.0, 1.0)
OPENCV_DEFAULT_WEIGHTS = (1.0, 1.0, 0.0)


def mertens(
    frames: Sequence[np.ndarray], weights: tuple[float, float, float] = PAPER_WEIGHTS
) -> np.ndarray:
    """Fuse RGB frames (float32 HxWx3 in [0, 1], any count >= 2, any order), clipped to [0, 1].

    OpenCV's MergeMertens. It scales any input by 1/255, so float32 in [0, 255] gives what
    uint8 frames give (exactly) while keeping the precision of 16-bit or downsized frames.
    Deterministic (see :func:`opencv_serial`).

    Args:
        frames: the exposures.
        weights: exponents of (contrast, saturation, well-exposedness); the default is the
            paper's (1, 1, 1), not OpenCV's default (1, 1, 0).
    """
    if len(frames) < 2:
        raise ValueError(f"Mertens fusion needs at least 2 frames, got {len(frames)}")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"frames differ in size: {sorted(shapes)}")
    bgr = [
        np.ascontiguousarray(np.clip(f[..., ::-1], 0, 1) * np.float32(255), dtype=np.float32)
        for f in frames
    ]
    with opencv_serial():
        fused = cv2.createMergeMertens(*map(float, weights)).process(bgr)
    fused = np.nan_to_num(fused, nan=0.0, posinf=1.0, neginf=0.0)
    return np.ascontiguousarray(np.clip(fused[..., ::-1], 0, 1), dtype=np.float32)


def mertens_fusion(
    under: torch.Tensor, over: torch.Tensor, weights: tuple[float, float, float] = PAPER_WEIGHTS
) -> torch.Tensor:
    """Mertens exposure fusion of each under/over pair in a batch, as tensors.

    Runs :func:`mertens` on the CPU one image at a time, so the result equals the numpy
    form exactly and is deterministic; inputs on a GPU come back on that GPU.

    Args:
        under: the under-exposed image(s), (B, 3, H, W) or (3, H, W), float, RGB in [0, 1].
        over: the over-exposed image(s), same shape and device.
        weights: (contrast, saturation, well-exposedness) exponents; default the paper's.

    Returns:
        float32 tensor of the input's shape and device, values in [0, 1].

    Raises:
        TypeError: an input is not a float tensor.
        ValueError: the shapes or devices differ, or the shape is not an RGB image (batch).
    """
    return fuse_per_image(under, over, lambda u, o: mertens([u, o], weights), "Mertens")


class MertensFusion(nn.Module):
    """:func:`mertens_fusion` as a module, called like the fusion network: ``m(under, over)``.

    Args:
        weights: (contrast, saturation, well-exposedness) exponents; default the paper's.
    """

    def __init__(self, weights: tuple[float, float, float] = PAPER_WEIGHTS) -> None:
        super().__init__()
        contrast, saturation, exposedness = weights
        self.weights = (float(contrast), float(saturation), float(exposedness))

    def forward(self, under: torch.Tensor, over: torch.Tensor) -> torch.Tensor:
        """Fuse with Mertens exposure fusion; see :func:`mertens_fusion`."""
        return mertens_fusion(under, over, self.weights)

    def extra_repr(self) -> str:
        return f"weights={self.weights}"
