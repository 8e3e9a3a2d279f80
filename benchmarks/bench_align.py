"""Seconds to register a hand-held pair (textmef.align) at a few sizes, and the residual.

Usage: python benchmarks/bench_align.py [--sizes 1200x800,4000x3000] [--threads 2]
A synthetic textured scene, the bright frame moved by (+7.3, -4.6) px and 1.2 degrees.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from textmef.align import align_frames, estimate_motion, misalignment_px


def scene(width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    noise = cv2.resize(
        rng.random((height // 16, width // 16, 3)).astype(np.float32),
        (width, height),
        interpolation=cv2.INTER_CUBIC,
    )
    base = 0.3 + 0.4 * noise
    for _ in range(200):
        y, x = int(rng.integers(0, height - 60)), int(rng.integers(0, width - 60))
        base[y : y + int(rng.integers(10, 60)), x : x + int(rng.integers(10, 60))] = rng.random(3)
    return np.clip(base, 0, 1).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1200x800,4000x3000")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)
    print("| size | align_frames (s) | misalignment_px (s) | max corner error (px) |")
    print("|---|---|---|---|")
    for size in args.sizes.split(","):
        w, h = map(int, size.split("x"))
        base = scene(w, h)
        true = cv2.getRotationMatrix2D((w / 2, h / 2), 1.2, 1.0)
        true[:, 2] += (7.3, -4.6)
        moved = cv2.warpAffine(
            base, true, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
        under, over = base * 0.35, np.clip(moved * 2.2, 0, 1)
        start = time.perf_counter()
        align_frames([under, over])
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        misalignment_px(under, over)
        quick = time.perf_counter() - start
        # The estimate maps the moved frame back onto the reference: compose with the truth.
        matrix = estimate_motion(under, over).matrix
        corners = np.float64([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]]).T
        moved_corners = np.vstack([true @ corners, np.ones(4)])
        back = matrix @ moved_corners
        error = np.abs(back[:2] / back[2] - corners[:2]).max()
        print(f"| {w}x{h} | {seconds:.2f} | {quick:.3f} | {error:.3f} |")


if __name__ == "__main__":
    main()
