"""Mertens exposure fusion (Mertens, Kautz, Van Reeth 2007) through OpenCV."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import cv2
import numpy as np


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


def mertens(frames: Sequence[np.ndarray]) -> np.ndarray:
    """Fuse RGB frames (float32 HxWx3 in [0, 1], any count >= 2, any order), clipped to [0, 1].

    OpenCV's MergeMertens with its default weights. It scales any input by 1/255, so float32
    in [0, 255] gives what uint8 frames give (to 1e-6) while keeping the precision of 16-bit
    or downsized frames. Deterministic (see :func:`opencv_serial`).
    """
    if len(frames) < 2:
        raise ValueError(f"Mertens fusion needs at least 2 frames, got {len(frames)}")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"frames differ in size: {sorted(shapes)}")
    bgr = [np.ascontiguousarray(np.clip(f[..., ::-1], 0, 1) * np.float32(255), dtype=np.float32)
           for f in frames]
    with opencv_serial():
        fused = cv2.createMergeMertens().process(bgr)
    fused = np.nan_to_num(fused, nan=0.0, posinf=1.0, neginf=0.0)
    return np.ascontiguousarray(np.clip(fused[..., ::-1], 0, 1), dtype=np.float32)
