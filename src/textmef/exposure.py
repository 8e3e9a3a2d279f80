"""Exposure order of a stack of frames: EXIF exposure time, else linearised luminance.

Used by inference (``textmef fuse`` on 2+ frames, :mod:`textmef.stack`) and by training-data
preparation (``textmef make-pairs``, :mod:`textmef.data.stacks`), so both sort a stack the
same way.

* **Mean luminance**: the mean over pixels of Rec.709 luminance
  ``0.2126 R + 0.7152 G + 0.0722 B`` computed on *linearised* values ``v ** 2.2``. Camera
  files are gamma-encoded; linearising first makes the number proportional to the light
  recorded, so it grows with exposure and ratios between frames mean something.
* **Exposure order**: by EXIF ExposureTime when every frame of the stack has one and they
  are not all equal (aperture and ISO are assumed fixed, as in ordinary bracketing), ties
  broken by mean luminance; otherwise by mean luminance. Remaining ties go by file name.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.ExifTags
import PIL.Image

__all__ = [
    "GAMMA",
    "ORDER_EXIF",
    "ORDER_LUMINANCE",
    "Frame",
    "linear_luma",
    "make_frame",
    "mean_luminance",
    "order_by_exposure",
    "read_exposure_time",
]

ORDER_EXIF = "exif"
ORDER_LUMINANCE = "luminance"
GAMMA = 2.2
_REC709 = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


@dataclass(frozen=True, eq=False)
class Frame:
    """One exposure of a stack.

    Attributes:
        path: the file it was read from.
        pixels: float32 (H, W, 3) RGB in [0, 1] (downsized where the caller asked).
        bit_depth: 8 or 16, of the file.
        exposure_time: EXIF ExposureTime in seconds, or None.
        mean_luminance: see the module docstring.
    """

    path: Path
    pixels: np.ndarray
    bit_depth: int
    exposure_time: float | None
    mean_luminance: float


def read_exposure_time(path: str | os.PathLike[str]) -> float | None:
    """The EXIF ExposureTime of an image file in seconds, or None when it has none."""
    try:
        with PIL.Image.open(path) as im:
            exif = im.getexif()
    except Exception:  # Pillow cannot parse every file OpenCV can; no EXIF then
        return None
    value = exif.get_ifd(PIL.ExifTags.IFD.Exif).get(PIL.ExifTags.Base.ExposureTime)
    if value is None:  # a few writers put it in IFD0
        value = exif.get(PIL.ExifTags.Base.ExposureTime)
    try:
        seconds = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def linear_luma(pixels: np.ndarray) -> np.ndarray:
    """Rec.709 luminance of gamma-2.2-linearised RGB pixels in [0, 1], per pixel."""
    return np.power(np.clip(pixels, 0, 1), GAMMA, dtype=np.float32) @ _REC709


def mean_luminance(pixels: np.ndarray) -> float:
    """Mean Rec.709 luminance of gamma-2.2-linearised RGB pixels in [0, 1]."""
    return float(linear_luma(pixels).mean(dtype=np.float64))


def make_frame(path: str | os.PathLike[str], pixels: np.ndarray, bit_depth: int) -> Frame:
    """A :class:`Frame` of already decoded pixels, with its EXIF time and luminance."""
    return Frame(
        path=Path(path),
        pixels=pixels,
        bit_depth=bit_depth,
        exposure_time=read_exposure_time(path),
        mean_luminance=mean_luminance(pixels),
    )


def order_by_exposure(frames: Sequence[Frame]) -> tuple[list[Frame], str]:
    """Sort frames from darkest to brightest exposure.

    Args:
        frames: the frames of one stack.

    Returns:
        The sorted frames and the method used, ``"exif"`` or ``"luminance"``.
    """
    times = [f.exposure_time for f in frames]
    if all(t is not None for t in times) and len(set(times)) > 1:
        return sorted(
            frames, key=lambda f: (f.exposure_time, f.mean_luminance, f.path.name)
        ), ORDER_EXIF
    return sorted(frames, key=lambda f: (f.mean_luminance, f.path.name)), ORDER_LUMINANCE
