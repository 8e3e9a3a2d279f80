"""Where the time of one fusion goes, op by op (torch.profiler, self CPU time).

    python benchmarks/profile_fuse.py                    # packaged model, 600x400, 2 threads
    python benchmarks/profile_fuse.py --model textmef    # the C = 64 network
    python benchmarks/profile_fuse.py --tile 0           # the whole image as one piece

Profiles one ``textmef.fuse(u, o, model=m)`` call (default tiles, like the engine target)
after a warm-up call, and prints a Markdown table of the ops by self CPU time with their
share of the total. ``--repeats N`` profiles N calls and reports per-call averages.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="packaged", help="packaged or a registry name")
    parser.add_argument("--size", default="600x400", help="WIDTHxHEIGHT")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tile", type=int, default=None, help="tile side (default: fuse's)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--top", type=int, default=25, help="rows in the table")
    parser.add_argument("--wait-idle", type=float, default=300, help="see bench_fuse.py")
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    import textmef
    from textmef.runtime import set_threads

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_fuse import machine_header, other_load, random_pair, wait_idle

    set_threads(args.threads)
    if args.model == "packaged":
        model = textmef.load_model()
    else:
        from textmef.models import create_model

        torch.manual_seed(0)
        model = create_model(args.model).eval()
    w, h = map(int, args.size.split("x"))
    under, over = random_pair(h, w)
    kwargs = {} if args.tile is None else {"tile": args.tile}
    textmef.fuse(under, over, model=model, **kwargs)  # warm-up
    wait_idle(args.wait_idle)
    t = time.perf_counter()
    textmef.fuse(under, over, model=model, **kwargs)
    plain = time.perf_counter() - t
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for _ in range(args.repeats):
            textmef.fuse(under, over, model=model, **kwargs)
        profiled = (time.perf_counter() - t) / args.repeats
    others = other_load(0.5)

    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    print(f"# textmef profile: {args.model}, {args.size}, {args.threads} threads\n")
    print(f"{machine_header()}\n")
    print(
        f"One `textmef.fuse` call after a warm-up: {plain:.3f} s unprofiled, "
        f"{profiled:.3f} s under the profiler; self CPU time summed over ops "
        f"{total / 1e6 / args.repeats:.3f} s per call. Other jobs' CPU right after: "
        f"{others:.2f} cores (> 0.3: slowed by them).\n"
    )
    print("| op | calls | self CPU (ms) | % of total |")
    print("|---|---|---|---|")
    shown = 0.0
    for e in rows[: args.top]:
        shown += e.self_cpu_time_total
        print(
            f"| `{e.key}` | {e.count // args.repeats} "
            f"| {e.self_cpu_time_total / 1e3 / args.repeats:.1f} "
            f"| {100 * e.self_cpu_time_total / total:.1f}% |"
        )
    rest = total - shown
    print(
        f"| (other {max(len(rows) - args.top, 0)} ops) | | {rest / 1e3 / args.repeats:.1f} "
        f"| {100 * rest / total:.1f}% |"
    )


if __name__ == "__main__":
    main()
