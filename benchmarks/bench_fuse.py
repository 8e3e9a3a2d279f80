"""Speed and memory of textmef on this machine.

    python benchmarks/bench_fuse.py                 # 600x400 and 2048x1536 pairs, scan, GEMM
    python benchmarks/bench_fuse.py --sizes 4000x3000 --skip-scan   # the 12-megapixel case
    python benchmarks/bench_fuse.py --targets       # the "fast CPU engine" targets, one run

Each fusion case runs in its own subprocess so that its peak RSS is its own. The network is
the C = 64 config with random weights (speed does not depend on the weights). OpenCV's
MergeMertens runs on the same pair in the same process for comparison. Prints a Markdown
table; ``--json PATH`` also saves the raw numbers.

``--targets`` measures, in one run and next to the GEMM peak of the same run: the packaged
model and the C = 64 network through ``textmef.fuse`` on a 600x400 pair (best of 3 after a
warm-up, 1 and 2 threads); the whole ``textmef fuse`` process against ``python -c "import
torch"``; a 12-megapixel pair with the packaged model and default tiles (time, peak RSS);
and OpenCV's Mertens on the same pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from textmef.tiling import DEFAULT_OVERLAP, DEFAULT_TILE


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


def random_pair(height: int, width: int, seed: int = 0):
    """An (H, W, 3) float32 under/over pair in [0, 1] (speed does not depend on content)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    base = rng.random((height, width, 3), dtype=np.float32)
    return base * np.float32(0.3), np.minimum(base * np.float32(1.7), np.float32(1.0))


def case_gemm(threads: int) -> dict:
    from textmef.runtime import set_threads

    set_threads(threads)
    return {"threads": threads, "gflops": gemm_peak_gflops()}


def case_api(model_name: str, height: int, width: int, threads: int, repeats: int) -> dict:
    """``textmef.fuse(u, o, model=m)`` in this process: one warm-up, best of ``repeats``."""
    import textmef
    from textmef.runtime import set_threads

    set_threads(threads)
    if model_name == "packaged":
        model = textmef.load_model()
    else:
        import torch

        from textmef.models import create_model

        torch.manual_seed(0)
        model = create_model(model_name).eval()
    under, over = random_pair(height, width)
    # Warm-up (numba compile or cache load); on a crop for large pairs, run only once.
    warm = (under, over) if height * width <= 4_000_000 else (under[:512], over[:512])
    t = time.perf_counter()
    textmef.fuse(*warm, model=model)
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        textmef.fuse(under, over, model=model)
        times.append(time.perf_counter() - t)
    return {
        "model": model_name,
        "size": f"{width}x{height}",
        "threads": threads,
        "first_s": first,
        "best_s": min(times),
        "times": times,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def case_mertens(height: int, width: int, threads: int, repeats: int) -> dict:
    """OpenCV MergeMertens on the same pair: the package's baseline (serial, the paper's
    weights) and a plain ``cv2.createMergeMertens()`` on ``threads`` OpenCV threads."""
    import cv2
    import numpy as np

    from textmef.baselines.mertens import mertens

    under, over = random_pair(height, width)
    mertens([under, over])
    package = []
    for _ in range(repeats):
        t = time.perf_counter()
        mertens([under, over])
        package.append(time.perf_counter() - t)
    cv2.setNumThreads(threads)
    u8, o8 = ((x * 255).astype(np.uint8) for x in (under, over))
    merge = cv2.createMergeMertens()
    merge.process([u8, o8])
    plain = []
    for _ in range(repeats):
        t = time.perf_counter()
        merge.process([u8, o8])
        plain.append(time.perf_counter() - t)
    return {
        "size": f"{width}x{height}",
        "threads": threads,
        "package_s": min(package),
        "plain_s": min(plain),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def _textmef_command() -> list[str]:
    script = Path(sys.executable).with_name("textmef")
    return [str(script)] if script.exists() else [sys.executable, "-m", "textmef"]


def _best_process_time(command: list[str], repeats: int) -> tuple[float, float]:
    """Best wall time of ``command`` over ``repeats`` runs, and the largest peak RSS (GB)."""
    best, rss = float("inf"), 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"{command} failed ({proc.returncode}): {err}")
        best, rss = min(best, seconds), max(rss, usage.ru_maxrss / 2**20)
    return best, rss


def case_process(height: int, width: int, threads: int, repeats: int) -> dict:
    """The whole ``textmef fuse U.png O.png -o F.png`` process vs ``python -c "import torch"``."""
    from textmef.io import write_image

    under, over = random_pair(height, width)
    with tempfile.TemporaryDirectory() as tmp:
        u, o, f = (Path(tmp) / name for name in ("U.png", "O.png", "F.png"))
        write_image(u, under, 8)
        write_image(o, over, 8)
        fuse_cmd = [*_textmef_command(), "fuse", str(u), str(o), "-o", str(f)]
        fuse_cmd += ["--threads", str(threads)]
        fuse_s, fuse_rss = _best_process_time(fuse_cmd, repeats)
        torch_s, _ = _best_process_time([sys.executable, "-c", "import torch"], repeats)
    return {
        "size": f"{width}x{height}",
        "threads": threads,
        "fuse_process_s": fuse_s,
        "fuse_process_rss_gb": fuse_rss,
        "import_torch_s": torch_s,
    }


def machine_header() -> str:
    import numba
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"CPU: {cpu} ({os.cpu_count()} logical cores); torch {torch.__version__}, "
        f"numba {numba.__version__}, Python {platform.python_version()}; "
        f"load average at start: {load}"
    )


def run_targets(args: argparse.Namespace) -> dict:
    """All the engine targets in one run; prints a Markdown table as results arrive."""
    repeats = args.repeats
    print(f"# textmef engine targets\n\n{machine_header()}\n", flush=True)
    results: dict = {"header": machine_header()}

    def run_sub(case: list[str]) -> dict:
        return run_measured(case, args.wait_idle)

    gemm = run_sub(["--case", "gemm:2"])
    results["gemm"] = gemm
    print(
        f"GEMM peak (2048^3 fp32, 2 threads, this run): {gemm['gflops']:.0f} GFLOP/s "
        f"(others {gemm['others']:.2f} cores)\n"
    )
    print(
        "Each row runs in its own subprocess, started once other jobs used under 0.3 cores "
        f"(waiting up to {args.wait_idle:.0f} s). *Others* is the CPU (in cores) that other "
        "jobs used while the row ran: anything well above 0 means the row is slowed by "
        "them.\n"
    )
    print(f"| case | threads | best of {repeats} (s) | first call (s) | peak RSS (GB) | others |")
    print("|---|---|---|---|---|---|", flush=True)
    results["api"] = []
    for model, label in (("packaged", "packaged model"), ("textmef", "C = 64 (textmef)")):
        for threads in (1, 2):
            r = run_sub(["--case", f"api:{model}:600x400:{threads}", "--repeats", str(repeats)])
            results["api"].append(r)
            print(
                f"| {label}, 600x400, `textmef.fuse` | {threads} | {r['best_s']:.3f} "
                f"| {r['first_s']:.2f} | {r['peak_rss_gb']:.2f} | {r['others']:.2f} |",
                flush=True,
            )
    r = run_sub(["--case", "process:600x400:2", "--repeats", str(repeats)])
    results["process"] = r
    print(
        f"| `textmef fuse U.png O.png -o F.png --threads 2` process, 600x400 | 2 "
        f"| {r['fuse_process_s']:.2f} | | {r['fuse_process_rss_gb']:.2f} | {r['others']:.2f} |\n"
        f'| `python -c "import torch"` process (same run) | | {r["import_torch_s"]:.2f} | | | |\n'
        f"| difference (textmef's own start-up + fusion) | | "
        f"{r['fuse_process_s'] - r['import_torch_s']:.2f} | | | |",
        flush=True,
    )
    if not args.skip_12mp:
        r = run_sub(["--case", "api:packaged:4000x3000:2", "--repeats", "1"])
        results["api_12mp"] = r
        print(
            f"| packaged model, 4000x3000 (12 MP), default tiles, `textmef.fuse`, one run | 2 "
            f"| {r['best_s']:.2f} | {r['first_s']:.2f} | {r['peak_rss_gb']:.2f} "
            f"| {r['others']:.2f} |",
            flush=True,
        )
    results["mertens"] = []
    sizes = ["600x400"] if args.skip_12mp else ["600x400", "4000x3000"]
    for size in sizes:
        r = run_sub(["--case", f"mertens:{size}:2", "--repeats", str(repeats)])
        results["mertens"].append(r)
        print(
            f"| OpenCV Mertens, {size}, textmef baseline (serial, paper weights) | 1 "
            f"| {r['package_s']:.3f} | | {r['peak_rss_gb']:.2f} | {r['others']:.2f} |\n"
            f"| OpenCV Mertens, {size}, plain `createMergeMertens()` on uint8 | 2 "
            f"| {r['plain_s']:.3f} | | | |",
            flush=True,
        )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nLoad average at end: {load}")
    return results


def _cpu_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def other_load(seconds: float = 1.0) -> float:
    """Busy CPU cores over ``seconds`` (this process sleeps meanwhile); -1 if unknown."""
    try:
        busy0, total0 = _cpu_ticks()
        time.sleep(seconds)
        busy1, total1 = _cpu_ticks()
    except (OSError, ValueError, IndexError):
        return -1.0
    return (os.cpu_count() or 1) * (busy1 - busy0) / max(total1 - total0, 1)


def wait_idle(max_wait: float, threshold: float = 0.3) -> float:
    """Wait (up to ``max_wait`` s) until other jobs use under ``threshold`` cores for 2 s.

    The machine may be shared; returns the busy cores measured last (reported per case).
    """
    deadline = time.monotonic() + max_wait
    load = other_load()
    while time.monotonic() < deadline and not (0 <= load < threshold):
        load = other_load()
        if load < threshold:
            load = max(load, other_load())
    return load


def run_measured(
    args: list[str], max_wait: float, retries: int = 2, script: str = __file__
) -> dict:
    """:func:`run_sub` once the machine is idle; adds ``others``: the cores other jobs used
    meanwhile (all busy CPU time minus the child's, per second of wall time). A run that
    other jobs slowed (``others`` > 0.3) is repeated up to ``retries`` times; the least
    disturbed run is returned. ``script`` is the benchmark that runs the case."""
    best = _run_measured_once(args, max_wait, script)
    for _ in range(retries):
        if best["others"] <= 0.3:
            break
        again = _run_measured_once(args, max_wait, script)
        if again["others"] < best["others"]:
            best = again
    return best


def _run_measured_once(args: list[str], max_wait: float, script: str) -> dict:
    wait_idle(max_wait)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, total0 = _cpu_ticks()
    t = time.perf_counter()
    result = run_sub(args, script)
    wall = time.perf_counter() - t
    busy1, total1 = _cpu_ticks()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    busy = (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1) * wall
    result["others"] = max(busy - ours, 0.0) / wall
    return result


def run_sub(args: list[str], script: str = __file__) -> dict:
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"case {args} failed ({out.returncode}):\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="600x400,2048x1536")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE)
    parser.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP)
    parser.add_argument("--skip-scan", action="store_true")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument(
        "--targets", action="store_true", help="measure the engine targets (see above)"
    )
    parser.add_argument("--skip-12mp", action="store_true", help="with --targets: no 12 MP")
    parser.add_argument("--repeats", type=int, default=3, help="with --targets: best of N")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=300,
        help="with --targets: wait up to this many seconds for an idle machine before a case",
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.case:  # child process: one measurement, JSON on stdout
        kind, _, value = args.case.partition(":")
        if kind == "fuse":
            w, h = map(int, value.split("x"))
            result = case_fuse(h, w, args.tile, args.overlap)
        elif kind == "scan":
            result = case_scan(int(value))
        elif kind == "gemm":
            result = case_gemm(int(value))
        elif kind == "api":
            model, size, threads = value.split(":")
            w, h = map(int, size.split("x"))
            result = case_api(model, h, w, int(threads), args.repeats)
        elif kind == "mertens":
            size, threads = value.split(":")
            w, h = map(int, size.split("x"))
            result = case_mertens(h, w, int(threads), args.repeats)
        elif kind == "process":
            size, threads = value.split(":")
            w, h = map(int, size.split("x"))
            result = case_process(h, w, int(threads), args.repeats)
        else:
            raise SystemExit(f"unknown case {args.case!r}")
        print(json.dumps(result))
        return

    if args.targets:
        results = run_targets(args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
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
