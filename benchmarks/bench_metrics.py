"""Seconds per metric for one fused image (what `textmef eval` / `bench` spend scoring).

Usage: python benchmarks/bench_metrics.py [--size 1200x800] [--repeat 3] [--threads 2]
Synthetic smooth images; the cost depends on the size only.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from textmef.bench.scoring import METRICS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1200x800", help="WIDTHxHEIGHT")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    w, h = map(int, args.size.split("x"))
    rng = np.random.default_rng(0)
    i, j = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    scene = np.stack([0.5 + 0.4 * np.sin(9 * i + k) * np.cos(7 * j - k) for k in range(3)])
    scene = np.clip(scene + 0.02 * rng.standard_normal(scene.shape), 0, 1)
    gt = torch.from_numpy(scene).float()[None]
    under, over = gt * 0.3, (gt * 2).clamp(0, 1)
    fused = (0.5 * under + 0.5 * over).clamp(0, 1)
    total = 0.0
    print(f"| metric | s per {w}x{h} image |\n|---|---|")
    for spec in METRICS:
        spec.compute(under, over, fused, gt, None)  # warm-up
        start = time.perf_counter()
        for _ in range(args.repeat):
            spec.compute(under, over, fused, gt, None)
        seconds = (time.perf_counter() - start) / args.repeat
        total += seconds
        print(f"| {spec.name} | {seconds:.3f} |")
    print(f"| all | {total:.3f} |")


if __name__ == "__main__":
    main()
