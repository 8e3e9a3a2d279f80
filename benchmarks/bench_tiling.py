"""How far tiled fusion strays from whole-image fusion, with and without shared statistics.

Usage: python benchmarks/bench_tiling.py [--data DIR] [--min-mp 0.5] [--all] [--tile 512]
       [--overlap 64] [--threads 2] [--weights FILE]

Takes the held-out sequences of ``DIR`` (the same split by sequence name as training and
``textmef bench --split val``; ``--all`` takes every stack) whose frames have at least
``--min-mp`` megapixels, fuses the darkest and the brightest frame (by mean linearised
luminance) with the packaged checkpoint (or ``--weights``) once in one piece and twice in
tiles: with the image-wide statistics shared across tiles (the default of ``textmef fuse``)
and with every tile fused on its own (before 0.3). Outputs are clamped to [0, 1] and
compared with the whole image: maximum, 99.9th percentile and mean absolute difference in
1/255 steps. Prints a Markdown table; skips with a message when DIR is absent.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import textmef
from textmef import io
from textmef.data.stacks import find_stacks, stack_name
from textmef.data.triplets import split_by_sequence
from textmef.exposure import mean_luminance
from textmef.inference import fuse_tensors, tile_grid
from textmef.tiling import DEFAULT_OVERLAP, DEFAULT_TILE


class _Named:
    def __init__(self, name: str, folder: Path) -> None:
        self.name, self.folder = name, folder


def extremes(stack: Path) -> tuple[np.ndarray, np.ndarray]:
    """The darkest and the brightest frame of a stack folder, RGB float32 in [0, 1]."""
    frames = [
        io.read_image(p).pixels
        for p in sorted(stack.iterdir())
        if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".tif", ".tiff"}
    ]
    frames.sort(key=mean_luminance)
    return frames[0], frames[-1]


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]


def differences(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    """Max, 99.9th percentile and mean of |a - b| in 1/255 steps."""
    d = ((a - b).abs() * 255).flatten().double()
    # quantile() refuses > 16M elements; a 1.2 MP RGB image is 3.6M.
    p999 = float(np.quantile(d.numpy(), 0.999))
    return float(d.max()), p999, float(d.mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/brackets")
    parser.add_argument("--min-mp", type=float, default=0.5)
    parser.add_argument("--all", action="store_true", help="every stack, not only held-out")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE)
    parser.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", default=None)
    args = parser.parse_args()

    data = Path(args.data)
    if not data.is_dir():
        print(f"bench_tiling: skipped, {data} is absent")
        return 0
    stacks = [_Named(stack_name(p.relative_to(data), data), p) for p in find_stacks(data)]
    if not args.all:
        _, stacks = split_by_sequence(stacks, args.val_fraction)
    torch.set_num_threads(args.threads)
    model = textmef.load_model(args.weights)
    print(
        f"weights: {args.weights or 'packaged'}; tile {args.tile}, overlap {args.overlap}, "
        f"{args.threads} threads; {'all' if args.all else 'held-out'} stacks >= {args.min_mp} MP"
    )
    print(
        "| pair | size | strips | whole s | shared: max | shared: p99.9 | shared: mean "
        "| shared s | alone: max | alone: p99.9 | alone: mean |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    worst = [0.0, 0.0]
    done = 0
    with torch.inference_mode():
        warm = torch.rand(1, 3, 64, 64)
        model(warm, warm)  # numba compile or cache load, outside the timings
        for stack in sorted(stacks, key=lambda s: s.name):
            under_np, over_np = extremes(stack.folder)
            height, width = under_np.shape[:2]
            if height * width < args.min_mp * 1e6:
                continue
            under, over = to_tensor(under_np), to_tensor(over_np)
            start = time.perf_counter()
            whole = fuse_tensors(model, under, over, tile=0).clamp(0, 1)
            whole_s = time.perf_counter() - start
            start = time.perf_counter()
            shared = fuse_tensors(model, under, over, tile=args.tile, overlap=args.overlap)
            seconds = time.perf_counter() - start
            alone = fuse_tensors(
                model, under, over, tile=args.tile, overlap=args.overlap, shared_statistics=False
            )
            s = differences(shared.clamp(0, 1), whole)
            a = differences(alone.clamp(0, 1), whole)
            worst = [max(worst[0], s[1]), max(worst[1], a[1])]
            strips = len(list(tile_grid(height, width, args.tile, args.overlap)))
            print(
                f"| {stack.name} | {width}x{height} | {strips} | {whole_s:.1f} "
                f"| {s[0]:.3f} | {s[1]:.3f} "
                f"| {s[2]:.4f} | {seconds:.1f} | {a[0]:.2f} | {a[1]:.2f} | {a[2]:.3f} |",
                flush=True,
            )
            done += 1
    print(
        f"\n{done} pairs; worst 99.9th percentile: shared {worst[0]:.3f}/255, "
        f"alone {worst[1]:.2f}/255"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
