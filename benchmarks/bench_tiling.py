"""How far tiled fusion strays from whole-image fusion with the packaged checkpoint.

Usage: python benchmarks/bench_tiling.py [--data DIR] [--count 5] [--tile 512] [--overlap 32]
       [--threads 2]
For the first COUNT stacks (sorted) under DIR, the darkest and the brightest frame by mean
linearised Rec.709 luminance are fused by ``textmef.load_model()`` once whole-image and once
tiled; both outputs are clamped to [0, 1] and compared (max and mean absolute difference in
1/255 steps, PSNR of tiled against whole). Skips with a message when DIR is absent.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

import textmef
from textmef.inference import fuse_tensors

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}


def read_rgb(path: Path) -> np.ndarray:
    """Read an image as float32 RGB in [0, 1]."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED | cv2.IMREAD_COLOR)
    if raw is None:
        raise SystemExit(f"bench_tiling: cannot read {path}")
    scale = 65535.0 if raw.dtype == np.uint16 else 255.0
    return cv2.cvtColor(raw, cv2.COLOR_BGR2RGB).astype(np.float32) / scale


def mean_luminance(rgb: np.ndarray) -> float:
    """Mean Rec.709 luminance of the sRGB-linearised image."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return float((linear @ np.float32([0.2126, 0.7152, 0.0722])).mean())


def extremes(stack: Path) -> tuple[np.ndarray, np.ndarray]:
    """The darkest and the brightest frame of a stack folder."""
    frames = [read_rgb(p) for p in sorted(stack.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    frames.sort(key=mean_luminance)
    return frames[0], frames[-1]


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/brackets/deepfuse")
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    data = Path(args.data)
    if not data.is_dir():
        print(f"bench_tiling: skipped, {data} is absent")
        return
    stacks = sorted(p for p in data.iterdir() if p.is_dir())[: args.count]
    if not stacks:
        print(f"bench_tiling: skipped, no stack folders in {data}")
        return

    torch.set_num_threads(args.threads)
    model = textmef.load_model()
    print(f"checkpoint: packaged; tile {args.tile}, overlap {args.overlap}, {args.threads} threads")
    print("| pair | size | max abs diff (/255) | mean abs diff (/255) | PSNR tiled vs whole (dB) |")
    print("|---|---|---|---|---|")
    max_all, abs_sum, sq_sum, count = 0.0, 0.0, 0.0, 0
    with torch.inference_mode():
        for stack in stacks:
            under_np, over_np = extremes(stack)
            under, over = to_tensor(under_np), to_tensor(over_np)
            ref = fuse_tensors(model, under, over, tile=0).clamp(0, 1)  # whole image
            tiled = fuse_tensors(model, under, over, tile=args.tile, overlap=args.overlap)
            tiled = tiled.clamp(0, 1)
            diff = (tiled - ref).abs().double()
            mse = float((diff**2).mean())
            psnr = math.inf if mse == 0 else 10 * math.log10(1 / mse)
            max_all = max(max_all, float(diff.max()))
            abs_sum += float(diff.sum())
            sq_sum += float((diff**2).sum())
            count += diff.numel()
            height, width = under.shape[-2:]
            print(
                f"| {stack.parent.name}/{stack.name} | {width}x{height} "
                f"| {255 * float(diff.max()):.2f} | {255 * float(diff.mean()):.3f} "
                f"| {psnr:.2f} |",
                flush=True,
            )
    mse_all = sq_sum / count
    psnr_all = math.inf if mse_all == 0 else 10 * math.log10(1 / mse_all)
    print(
        f"| all {len(stacks)} | | {255 * max_all:.2f} | {255 * abs_sum / count:.3f} "
        f"| {psnr_all:.2f} |"
    )


if __name__ == "__main__":
    sys.exit(main())
