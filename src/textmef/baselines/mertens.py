"""Mertens exposure fusion (Mertens, Kautz, Van Reeth 2007) through OpenCV."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def mertens(frames: Sequence[np.ndarray], contrast: float = 1.0, saturation: float = 1.0,
            exposedness: float = 1.0) -> np.ndarray:
    """Fuse RGB frames (float32 HxWx3 in [0, 1], any count >= 2) into one, clipped to [0, 1].

    Frames are quantised to 8 bits first, as OpenCV's ``MergeMertens`` is normally fed (and
    as the benchmark's reference fusions were made).

    Args:
        frames: Exposures of one scene, all the same size.
        contrast: Weight of the contrast measure.
        saturation: Weight of the saturation measure.
        exposedness: Weight of the well-exposedness measure.
    """
    if len(frames) < 2:
        raise ValueError(f"Mertens fusion needs at least 2 frames, got {len(frames)}")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"frames differ in size: {sorted(shapes)}")
    bgr = [cv2.cvtColor(np.rint(np.clip(f, 0, 1) * 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
           for f in frames]
    fused = cv2.createMergeMertens(contrast, saturation, exposedness).process(bgr)
    return np.clip(cv2.cvtColor(fused, cv2.COLOR_BGR2RGB), 0.0, 1.0).astype(np.float32)
