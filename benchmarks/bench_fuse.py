"""Speed and memory of textmef on this machine.

    python benchmarks/bench_fuse.py                 # 600x400 and 2048x1536 pairs, scan, GEMM
    python benchmarks/bench_fuse.py --sizes 4000x3000 --skip-scan   # the 12-megapixel case

Each fusion case runs in its own subprocess so that its peak RSS is its own. The network is
the C = 64 config with random weights (speed does not depend on the weights). OpenCV's
MergeMertens runs on the same pair in the same process for comparison. Prints a Markdown
table; ``--json PATH`` also saves the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def gemm_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def network_flops(height: int, width: int, tile: int, overlap: int) -> float:
    """FLOPs of convolutions and matmuls over all tiles (the scan itself is not included).

    Counted once on a 128x128 input and scaled by the pixels actually processed: every
    layer's cost is linear in the pixel count.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from textmef.inference import tile_grid
    from textmef.models import FusionNet, model_config

    model = FusionNet(model_config("textmef")).eval()
    x = torch.rand(1, 3, 128, 128)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x, x)
    per_pixel = counter.get_total_flops() / (128 * 128)
    pixels = (
        sum(
            (r.stop - r.start) * (c.stop - c.start)
            for r, c in tile_grid(height, width, tile, overlap)
        )
        if tile
        else height * width
    )
    return per_pixel * pixels


def scan_flops(height: int, width: int, d_inner: int = 128, d_state: int = 16) -> float:
    """State updates of the 12 scans of one pass: 8 at full resolution, 4 at a quarter."""
    tokens = height * width
    quarter = ((height + 1) // 2) * ((width + 1) // 2)
    return (8 * tokens + 4 * quarter) * d_inner * d_state


def case_fuse(height: int, width: int, tile: int, overlap: int) -> dict:
    import cv2
    import numpy as np
    import torch

    from textmef.inference import fuse_tensors
    from textmef.models import FusionNet, model_config

    torch.manual_seed(0)
    model = FusionNet(model_config("textmef")).eval()
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 3, height, width, generator=g)
    under, over = base * 0.3, (base * 1.7).clamp(0, 1)
    fuse_tensors(model, under[..., :64, :64], over[..., :64, :64])  # compile numba, warm up
    t = time.perf_counter()
    fuse_tensors(model, under, over, tile=tile, overlap=overlap)
    seconds = time.perf_counter() - t
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    u8 = (under[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    o8 = (over[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    mertens = cv2.createMergeMertens()
    t = time.perf_counter()
    mertens.process([u8, o8])
    mertens_s = time.perf_counter() - t
    return {
        "size": f"{width}x{height}",
        "seconds": seconds,
        "peak_rss_gb": rss_gb,
        "mertens_seconds": mertens_s,
        "threads": torch.get_num_threads(),
    }


def case_scan(length: int, d_inner: int = 128, d_state: int = 16, reference: bool = True) -> dict:
    import torch
    import torch.nn.functional as F

    from textmef.ssm import selective_scan, selective_scan_reference

    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, length, d_inner, generator=g)
    delta = F.softplus(torch.randn(1, length, d_inner, generator=g) - 3)
    A = -torch.arange(1, d_state + 1).float().repeat(d_inner, 1)
    B = torch.randn(1, length, d_state, generator=g)
    C = torch.randn(1, length, d_state, generator=g)
    result = {"length": length}
    with torch.no_grad():
        selective_scan(u[:, :256], delta[:, :256], A, B[:, :256], C[:, :256])
        t = time.perf_counter()
        selective_scan(u, delta, A, B, C, backend="numba")
        result["numba_tok_s"] = length / (time.perf_counter() - t)
        t = time.perf_counter()
        selective_scan(u, delta, A, B, C, backend="torch")
        result["torch_tok_s"] = length / (time.perf_counter() - t)
        if reference:
            t = time.perf_counter()
            selective_scan_reference(u, delta, A, B, C)
            result["reference_tok_s"] = length / (time.perf_counter() - t)
    ins = [x.clone().requires_grad_() for x in (u, delta, A, B, C)]
    selective_scan(*[x[:, :256] if x.ndim == 3 else x for x in ins]).sum().backward()
    t = time.perf_counter()
    selective_scan(*ins, backend="numba").sum().backward()
    result["numba_fwd_bwd_tok_s"] = length / (time.perf_counter() - t)
    return result


def run_sub(args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="600x400,2048x1536")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--skip-scan", action="store_true")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.case:  # child process: one measurement, JSON on stdout
        kind, value = args.case.split(":")
        if kind == "fuse":
            w, h = map(int, value.split("x"))
            print(json.dumps(case_fuse(h, w, args.tile, args.overlap)))
        else:
            print(json.dumps(case_scan(int(value))))
        return

    import torch

    peak = gemm_peak_gflops()
    print(f"machine: {torch.get_num_threads()} threads, measured GEMM peak {peak:.0f} GFLOP/s")
    print(
        "\n| pair | textmef C=64 (s) | GFLOP (conv+matmul) | achieved GFLOP/s | % of GEMM peak "
        "| scan state updates (G) | peak RSS (GB) | OpenCV Mertens (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    results = {"gemm_peak_gflops": peak, "fuse": [], "scan": []}
    for size in args.sizes.split(","):
        w, h = map(int, size.split("x"))
        r = run_sub(
            ["--case", f"fuse:{size}", "--tile", str(args.tile), "--overlap", str(args.overlap)]
        )
        r["gflop"] = network_flops(h, w, args.tile, args.overlap) / 1e9
        r["achieved_gflops"] = r["gflop"] / r["seconds"]
        r["scan_gupdates"] = scan_flops(h, w) / 1e9
        results["fuse"].append(r)
        print(
            f"| {size} | {r['seconds']:.2f} | {r['gflop']:.0f} | {r['achieved_gflops']:.0f} | "
            f"{100 * r['achieved_gflops'] / peak:.0f}% | {r['scan_gupdates']:.1f} | "
            f"{r['peak_rss_gb']:.2f} | {r['mertens_seconds']:.3f} |",
            flush=True,
        )
    if not args.skip_scan:
        print(
            "\n| scan L (d_inner 128, N 16) | numba fwd (tok/s) | torch chunked fwd (tok/s) "
            "| sequential reference (tok/s) | numba vs reference | numba fwd+bwd (tok/s) |"
        )
        print("|---|---|---|---|---|---|")
        for length in (50_000, 240_000):
            r = run_sub(["--case", f"scan:{length}"])
            results["scan"].append(r)
            print(
                f"| {length:,} | {r['numba_tok_s']:,.0f} | {r['torch_tok_s']:,.0f} | "
                f"{r['reference_tok_s']:,.0f} | {r['numba_tok_s'] / r['reference_tok_s']:.0f}x | "
                f"{r['numba_fwd_bwd_tok_s']:,.0f} |",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
