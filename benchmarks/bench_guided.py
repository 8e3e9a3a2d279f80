"""The guided full-resolution path, measured (issue 17): speed, memory, quality, folders.

    python benchmarks/bench_guided.py --speed      # 12 and 24 MP: textmef fuse, --full-res, Mertens
    python benchmarks/bench_guided.py --quality    # held-out pairs: guided vs full-res network
    python benchmarks/bench_guided.py --folders    # folder mode, 20 held-out pairs, 1 and 2 jobs

``--speed`` makes a 12 MP (4000x3000) and a 24 MP (6000x4000) pair by upscaling a held-out
DeepFuse pair (Lanczos, JPEG quality 95, like camera files) and times whole processes, each
on its own so its peak RSS is its own (``os.wait4``): ``textmef fuse U.jpg O.jpg -o F.jpg
--threads 2`` (the default, guided path), the same with ``--full-res`` (the network at full
resolution in tiles, 12 MP only) and OpenCV's Mertens as a whole process (read, fuse, write
the same files, 2 threads).

``--quality`` fuses every held-out pair (``../data/heldout``: under/, over/, gt/) with the
network at full resolution, with the guided path at the default working size (what ``textmef
fuse`` does to these pairs) and at working sizes that shrink each image by the given linear
factors (``--factors``: 3.46 is what a 1 MP working size does to a 12 MP photo), and scores
them like ``textmef bench`` (8-bit outputs; PSNR and SSIM against the pseudo references,
MEF-SSIM against the pair).

``--folders`` fuses the first 20 pairs of a held-out folder (``--pairs``) with ``textmef
fuse --under --over -o --jobs N`` for N = 1 and 2 and reports pairs per minute.

Results go to ``benchmarks/results/guided/`` (Markdown and JSON) with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fuse import _best_process_time, _textmef_command, machine_header  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HELDOUT = REPO.parent / "data" / "heldout"
SOURCE = "deepfuse_seq-20.png"  # a 1200x800 held-out pair: the largest scenes we have

MERTENS_PROCESS = """
import sys, cv2
cv2.setNumThreads(int(sys.argv[4]))
u, o = cv2.imread(sys.argv[1]), cv2.imread(sys.argv[2])
fused = cv2.createMergeMertens(1.0, 1.0, 1.0).process([u, o])
cv2.imwrite(sys.argv[3], (fused.clip(0, 1) * 255 + 0.5).astype("uint8"),
            [cv2.IMWRITE_JPEG_QUALITY, 95])
"""


def make_pair(folder: Path, width: int, height: int, heldout: Path) -> tuple[Path, Path]:
    """A ``width`` x ``height`` JPEG pair upscaled from a held-out pair."""
    import cv2

    paths = []
    for side in ("under", "over"):
        image = cv2.imread(str(heldout / side / SOURCE))
        big = cv2.resize(image, (width, height), interpolation=cv2.INTER_LANCZOS4)
        path = folder / f"{side}-{width}x{height}.jpg"
        cv2.imwrite(str(path), big, [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(path)
    return paths[0], paths[1]


def run_speed(args: argparse.Namespace) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for width, height in ((4000, 3000), (6000, 4000)):
            under, over = make_pair(folder, width, height, args.heldout)
            out = folder / "fused.jpg"
            cases = [("textmef fuse (guided, default)", [])]
            if width * height <= 12_000_000:
                cases.append(("textmef fuse --full-res", ["--full-res"]))
            for label, extra in cases:
                command = [*_textmef_command(), "fuse", str(under), str(over), "-o", str(out)]
                command += ["--threads", str(args.threads), *extra]
                seconds, rss = _best_process_time(command, args.repeats)
                rows.append(_speed_row(label, width, height, seconds, rss))
                print(rows[-1], flush=True)
            command = [sys.executable, "-c", MERTENS_PROCESS, str(under), str(over), str(out)]
            seconds, rss = _best_process_time([*command, str(args.threads)], args.repeats)
            rows.append(_speed_row("OpenCV Mertens (whole process)", width, height, seconds, rss))
            print(rows[-1], flush=True)
    return rows


def _speed_row(label: str, width: int, height: int, seconds: float, rss: float) -> dict:
    return {
        "case": label,
        "size": f"{width}x{height} ({width * height / 1e6:.0f} MP)",
        "seconds": round(seconds, 2),
        "peak_rss_gb": round(rss, 2),
    }


def _quantised(image):
    import torch

    return torch.round(image.clamp(0, 1) * 255) / 255


def run_quality(args: argparse.Namespace) -> list[dict]:
    import math

    import torch

    from textmef import io
    from textmef.api import fuse, load_model
    from textmef.metrics import mef_ssim, psnr, ssim

    torch.set_num_threads(args.threads)
    model = load_model(args.weights)
    names = sorted(p.name for p in (args.heldout / "under").iterdir())
    from textmef.tiling import DEFAULT_WORK_SIZE

    default = f"default: guided above {DEFAULT_WORK_SIZE}x{DEFAULT_WORK_SIZE} px"
    cases = ["full-resolution network (--full-res)", default]
    cases += [f"guided, 1/{f:g} linear size" for f in args.factors]
    scores: dict[str, list[list[float]]] = {case: [] for case in cases}
    seconds: dict[str, float] = dict.fromkeys(cases, 0.0)
    for name in names:
        under, over, gt = (
            io.to_tensor(io.read_image(args.heldout / side / name).pixels)
            for side in ("under", "over", "gt")
        )
        height, width = under.shape[-2:]
        for case in cases:
            if case.startswith("full"):
                options = {"full_res": True}
            elif case == default:
                options = {}
            else:
                factor = args.factors[cases.index(case) - 2]
                options = {"work_size": max(64, int(math.sqrt(height * width) / factor))}
            started = time.perf_counter()
            fused = _quantised(fuse(under, over, model=model, tile=0, **options))
            seconds[case] += time.perf_counter() - started
            scores[case].append(
                [
                    float(psnr(fused, gt)),
                    float(ssim(fused, gt)),
                    float(mef_ssim(torch.cat([under, over]), fused)),
                ]
            )
        print(name, {c: [round(v, 4) for v in scores[c][-1]] for c in cases}, flush=True)
    rows = []
    for case in cases:
        values = torch.tensor(scores[case]).mean(0).tolist()
        rows.append(
            {
                "case": case,
                "PSNR": round(values[0], 3),
                "SSIM": round(values[1], 4),
                "MEF-SSIM": round(values[2], 4),
                "seconds_per_pair": round(seconds[case] / len(names), 2),
            }
        )
    return rows


def run_folders(args: argparse.Namespace) -> list[dict]:
    names = sorted(p.name for p in (args.pairs / "under").iterdir())[: args.count]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for side in ("under", "over"):
            (Path(tmp) / side).mkdir()
            for name in names:
                (Path(tmp) / side / name).symlink_to((args.pairs / side / name).resolve())
        for jobs in args.jobs:
            out = Path(tmp) / f"out-{jobs}"
            command = [*_textmef_command(), "fuse", "--under", f"{tmp}/under"]
            command += ["--over", f"{tmp}/over", "-o", str(out), "--jobs", str(jobs)]
            command += ["--threads", str(args.threads)]
            started = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - started
            written = len(list(out.iterdir()))
            rows.append(
                {
                    "jobs": jobs,
                    "threads": args.threads,
                    "pairs": written,
                    "seconds": round(seconds, 1),
                    "pairs_per_minute": round(60 * written / seconds, 1),
                }
            )
            print(rows[-1], flush=True)
            shutil.rmtree(out)
    return rows


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--folders", action="store_true")
    parser.add_argument("--heldout", type=Path, default=HELDOUT)
    parser.add_argument("--pairs", type=Path, default=HELDOUT, help="--folders: pair folder")
    parser.add_argument("--count", type=int, default=20, help="--folders: pairs to fuse")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--factors", type=float, nargs="+", default=[2.0, 3.46])
    parser.add_argument("--weights", type=Path, help="checkpoint (default: the packaged one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, help="folder for results (Markdown and JSON)")
    args = parser.parse_args()
    if not args.heldout.is_dir():
        sys.exit(f"no held-out pairs at {args.heldout}: run scripts/ship_model.py (it makes them)")
    sections = []
    header = machine_header()
    for flag, name, run in (
        (args.speed, "speed", run_speed),
        (args.quality, "quality", run_quality),
        (args.folders, "folders", run_folders),
    ):
        if not flag:
            continue
        rows = run(args)
        sections.append((name, rows))
        print(f"\n## {name}\n\n{header}\n\n{markdown(rows)}\n", flush=True)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
            (args.out / f"{name}.md").write_text(f"{header}\n\n{markdown(rows)}\n")
    if not sections:
        parser.error("choose --speed, --quality and/or --folders")


if __name__ == "__main__":
    main()
