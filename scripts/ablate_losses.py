"""The loss and data ablation behind the README's table: each term's effect, measured.

Every variant fine-tunes the same start (the 0.2 packaged checkpoint, ``textmef-c16``
trained 2,000 steps with MSE only) for 300 steps of 8 crops with ``configs/ablation.yaml``
plus one change, then ``textmef bench`` scores it on the 17 held-out pairs at full
resolution (PSNR, SSIM, MEF-SSIM, QABF, TMQI) next to two-frame Mertens. Re-running skips
finished variants and resumes an interrupted one.

    python scripts/ablate_losses.py [--variants mse,mef-ssim,...] [--threads 1]

Needs ``../data/pairs-all`` (``make-pairs --pick all-pairs --min-gap 2 --max-side 768``) and
``../data/heldout`` (``make-pairs`` of the held-out stacks): see docs/training.md.
Writes ``runs/ablation/`` and the table to ``benchmarks/results/ablation/``.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNS = REPO / "runs" / "ablation"
RESULTS = REPO / "benchmarks" / "results" / "ablation"
START_COMMIT = "3655cdc"  # the last commit that shipped the 0.2 checkpoint
METRICS = "PSNR,SSIM,MEF-SSIM,QABF,TMQI"

# name -> (description, overrides of configs/ablation.yaml)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "mse": ("MSE only (the 0.2 recipe)", []),
    "mef-ssim": ("+ 0.1 · (1 − MEF-SSIM vs the pair)", ["--loss.mef_ssim", "0.1"]),
    "mef-ssim-0.5": ("+ 0.5 · (1 − MEF-SSIM vs the pair)", ["--loss.mef_ssim", "0.5"]),
    "ssim": ("+ 0.02 · (1 − SSIM vs the reference)", ["--loss.ssim", "0.02"]),
    "colour": ("+ 0.02 · colour angle vs the reference", ["--loss.colour", "0.02"]),
    "recipe": (
        "the chosen recipe: + 0.5 · MEF-SSIM + 0.02 · SSIM",
        ["--loss.mef_ssim", "0.5", "--loss.ssim", "0.02"],
    ),
    "recipe-wholes": (
        "the recipe + 25 % whole scenes",
        ["--loss.mef_ssim", "0.5", "--loss.ssim", "0.02", "--data.whole_fraction", "0.25"],
    ),
    "recipe-224": (
        "the recipe on 224 px crops",
        ["--loss.mef_ssim", "0.5", "--loss.ssim", "0.02", "--data.crop", "224"],
    ),
}


def textmef(*args: str) -> None:
    command = [sys.executable, "-m", "textmef", *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def start_weights() -> Path:
    """The 0.2 packaged checkpoint, taken from git history."""
    path = RUNS / "start.safetensors"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = subprocess.run(
            ["git", "show", f"{START_COMMIT}:src/textmef/weights/textmef.safetensors"],
            cwd=REPO,
            check=True,
            capture_output=True,
        ).stdout
        path.write_bytes(blob)
    return path


def bench(weights: Path | None, out: Path, methods: str, threads: int) -> dict[str, float]:
    if not (out / "summary.csv").exists():
        args = ["bench", "../data/heldout", "-o", str(out), "--methods", methods]
        args += ["--metrics", METRICS, "--tile", "0", "--threads", str(threads)]
        if weights is not None:
            args += ["--weights", str(weights)]
        textmef(*args)
    with (out / "summary.csv").open() as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    row = rows[methods]
    return {m: float(row[f"{m}_mean"]) for m in METRICS.split(",")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    start = start_weights()
    table = {
        "start (0.2 checkpoint, no fine-tuning)": bench(
            start, RUNS / "start-bench", "textmef", args.threads
        )
    }
    mertens = bench(None, RUNS / "mertens-bench", "mertens", args.threads)
    for name in args.variants.split(","):
        description, overrides = VARIANTS[name]
        out = RUNS / name
        if not (out / "summary.json").exists():
            textmef(
                "train", "--config", "configs/ablation.yaml", "--resume",
                "--run.out", str(out), "--run.threads", str(args.threads), *overrides,
            )  # fmt: skip
        table[f"`{name}`: {description}"] = bench(
            out / "last.safetensors", out / "bench", "textmef", args.threads
        )
    table["two-frame Mertens (paper weights)"] = mertens
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ablation.json").write_text(json.dumps(table, indent=2) + "\n")
    lines = ["| variant | " + " | ".join(METRICS.split(",")) + " |"]
    lines.append("|---" * (1 + len(METRICS.split(","))) + "|")
    for name, scores in table.items():
        lines.append(
            f"| {name} | "
            + " | ".join(
                f"{scores[m]:.2f}" if m == "PSNR" else f"{scores[m]:.4f}"
                for m in METRICS.split(",")
            )
            + " |"
        )
    (RESULTS / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
