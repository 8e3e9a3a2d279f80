"""Speed of one training step of the fusion network on this machine.

    python benchmarks/bench_train.py                      # textmef-c16 and textmef, 1 and 2 threads
    python benchmarks/bench_train.py --models textmef-c16 --threads 2

One step is what ``textmef train`` does per batch: forward on 8 random 96x96 crops (under,
over), MSE against a target, backward, Adam (lr 2e-4) step. Each (model, threads) case runs
in its own subprocess (its own thread settings and peak RSS); the time is the best of
``--repeats`` steps after one warm-up step (which also compiles or loads the numba kernels).
Prints a Markdown table; ``--json PATH`` also saves the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time


def case_step(model_name: str, threads: int, batch: int, crop: int, repeats: int) -> dict:
    import torch

    from textmef.models import create_model
    from textmef.runtime import set_threads, tune_allocator

    set_threads(threads)
    tune_allocator()  # as textmef.engine.train does
    torch.manual_seed(0)
    model = create_model(model_name).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    g = torch.Generator().manual_seed(0)
    # 8 random crops of a larger random pair, as the data loader cuts them.
    base = torch.rand(1, 3, 4 * crop, 4 * crop, generator=g)
    ys = torch.randint(0, 3 * crop, (batch,), generator=g).tolist()
    xs = torch.randint(0, 3 * crop, (batch,), generator=g).tolist()
    crops = torch.cat([base[..., y : y + crop, x : x + crop] for y, x in zip(ys, xs)])
    under, over, target = crops * 0.3, (crops * 1.7).clamp(0, 1), crops

    def step() -> float:
        t = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(under, over), target)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t

    first = step()
    times = [step() for _ in range(repeats)]
    return {
        "model": model_name,
        "threads": threads,
        "first_s": first,
        "best_s": min(times),
        "times": times,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="textmef-c16,textmef")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--wait-idle", type=float, default=300, help="see bench_fuse.py")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.case:  # child process: one measurement, JSON on stdout
        model, threads = args.case.split(":")
        print(json.dumps(case_step(model, int(threads), args.batch, args.crop, args.repeats)))
        return

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_fuse import machine_header, run_measured

    print(f"# textmef training step\n\n{machine_header()}\n")
    print(
        f"One step: {args.batch} crops of {args.crop} px, forward + MSE + backward + Adam "
        f"(lr 2e-4); best of {args.repeats} after a warm-up step. Each row runs in its own "
        f"subprocess once other jobs use under 0.3 cores (waiting up to {args.wait_idle:.0f} "
        "s); *others* is the CPU (cores) other jobs used while it ran.\n"
    )
    print("| model | threads | step, best (s) | warm-up step (s) | peak RSS (GB) | others |")
    print("|---|---|---|---|---|---|", flush=True)
    results = []
    for model in args.models.split(","):
        for threads in args.threads.split(","):
            r = run_measured(
                [
                    "--case",
                    f"{model}:{threads}",
                    "--batch",
                    str(args.batch),
                    "--crop",
                    str(args.crop),
                    "--repeats",
                    str(args.repeats),
                ],
                args.wait_idle,
                script=__file__,
            )
            results.append(r)
            print(
                f"| {model} | {threads} | {r['best_s']:.3f} | {r['first_s']:.2f} "
                f"| {r['peak_rss_gb']:.2f} | {r['others']:.2f} |",
                flush=True,
            )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nLoad average at end: {load}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
