"""Command line: fuse, serve, make-pairs, train-prompt, train, eval, bench, info.

Thin, over the library: each command parses its arguments, calls the API and prints.
Building the parser imports only light modules (defaults and names, no torch, OpenCV,
numba, Flask or matplotlib), so ``--help`` and ``--version`` answer at once; a command
imports what it uses when it runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textmef import __version__
from textmef.argtypes import csv_list, non_negative_int, positive_int
from textmef.errors import InputError, TextmefError
from textmef.limits import DEFAULT_MAX_PIXELS
from textmef.tiling import (
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    DEFAULT_WORK_SIZE,
    check_tiling,
    check_work_size,
)

log = logging.getLogger("textmef")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textmef", description=__doc__)
    parser.add_argument("--version", action="version", version=f"textmef {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    from textmef.stack import DEFAULT_STRATEGY, STRATEGIES

    fuse = sub.add_parser(
        "fuse",
        help="fuse exposures of one scene (or folders of pairs)",
        description="Fuse two or more exposures of one scene into OUT (they are "
        "sorted by exposure first), or every pair of files with "
        "the same stem in --under DIR and --over DIR into -o DIR.",
    )
    fuse.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE",
        help="two or more exposures of one scene, in any order",
    )
    fuse.add_argument("--under", type=Path, metavar="DIR", help="folder of under-exposed images")
    fuse.add_argument("--over", type=Path, metavar="DIR", help="folder of over-exposed images")
    fuse.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="output file (single pair) or folder (folder mode)",
    )
    fuse.add_argument(
        "--weights",
        type=Path,
        help="a .safetensors checkpoint or the authors' .pth (default: the packaged one)",
    )
    fuse.add_argument(
        "--tile",
        type=non_negative_int,
        default=DEFAULT_TILE,
        help=(
            f"tiles of about N x N pixels (full-width strips, same result as one piece), "
            f"0 = whole image at once (default {DEFAULT_TILE})"
        ),
    )
    fuse.add_argument(
        "--overlap",
        type=non_negative_int,
        default=DEFAULT_OVERLAP,
        help=f"rows shared by neighbouring tiles (default {DEFAULT_OVERLAP})",
    )
    fuse.add_argument(
        "--work-size",
        type=positive_int,
        default=DEFAULT_WORK_SIZE,
        metavar="N",
        help=(
            "images above N x N pixels are fused at about N x N and carried to full "
            "resolution by a local colour transform fitted against the exposures (the "
            f"guided path; default {DEFAULT_WORK_SIZE})"
        ),
    )
    fuse.add_argument(
        "--full-res",
        action="store_true",
        help="run the network at full resolution (in tiles) whatever the size: slower",
    )
    fuse.add_argument(
        "--threads",
        type=positive_int,
        help="CPU threads (default: all cores; in folder mode shared between the --jobs)",
    )
    _add_max_pixels(fuse)
    fuse.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    fuse.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        metavar="N",
        help="folder mode: fuse N pairs at a time in worker processes (default 1)",
    )
    fuse.add_argument(
        "--skip-existing",
        action="store_true",
        help="folder mode: skip pairs whose output already exists (resume a run)",
    )
    fuse.add_argument(
        "--ext",
        default=None,
        help="folder mode: output suffix, e.g. png (default: the under image's)",
    )
    fuse.add_argument(
        "--align",
        action="store_true",
        help="register the frames first (hand-held shots): translation by median "
        "threshold bitmaps, then ECC homography; crops to the common area",
    )
    fuse.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=DEFAULT_STRATEGY,
        help="3+ frames: progressive = fuse darkest two, then the result with the "
        "next brighter, ...; extremes = darkest and brightest only "
        f"(default {DEFAULT_STRATEGY})",
    )
    fuse.set_defaults(run=_cmd_fuse)

    from textmef.web.cli import add_serve_parser

    add_serve_parser(sub)
    _add_make_pairs(sub)
    _add_train_prompt(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_bench(sub)
    _add_convert(sub)
    _add_info(sub)
    return parser


def _add_max_pixels(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help="largest image accepted, width x height, checked from the file header before "
        f"decoding (default {DEFAULT_MAX_PIXELS:_})",
    )


def _add_convert(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="convert the authors' released weights to textmef's format, and back",
        description="Convert between the authors' checkpoint layouts and textmef's. "
        "AUTHORS.pth (their FusionNet state dict, e.g. epoch_400_G.pth) -> a textmef "
        ".safetensors model; a textmef C = 64 model -> their layout with --to authors; "
        "their prompt file (best_prompt_round0.pth) -> a textmef prompt file, with --clip. "
        "Pickles are read with torch.load(weights_only=True): tensors only, no code runs.",
    )
    p.add_argument("input", type=Path, metavar="INPUT", help="the file to convert")
    p.add_argument("-o", "--output", type=Path, required=True, help="the file to write")
    p.add_argument(
        "--to",
        choices=("textmef", "authors"),
        default="textmef",
        help="textmef: from the authors' layout (default); authors: a textmef .safetensors "
        "model to the authors' .pth layout",
    )
    _add_clip_options(p)
    p.add_argument(
        "--length",
        type=positive_int,
        default=16,
        help="prompt files: learnable tokens per prompt (the authors' length_prompt, default 16)",
    )
    p.set_defaults(run=_cmd_convert)


def _cmd_convert(args: argparse.Namespace) -> int:
    from textmef.authors import PICKLE_SUFFIXES

    source, out = args.input, args.output
    wanted = {".safetensors"} if args.to == "textmef" else {".pth", ".pt"}
    if out.suffix.lower() not in wanted:
        raise InputError(out, f"converting to {args.to} writes {' or '.join(sorted(wanted))}")
    if not out.parent.is_dir():
        raise InputError(out.parent, "no such folder for the output")
    if not source.is_file():
        raise InputError(source, "no such file")
    if out.resolve() == source.resolve():
        raise InputError(out, "is the input; choose another output file")
    is_pickle = source.suffix.lower() in PICKLE_SUFFIXES
    if args.to == "authors":
        if is_pickle:
            raise InputError(source, "is already in the authors' layout")
        return _convert_to_authors(source, out)
    if not is_pickle:
        raise InputError(
            source, "is not an authors' .pth file (for the other direction add --to authors)"
        )
    from textmef.authors import is_authors_prompts, read_authors_file

    state = read_authors_file(source)
    if is_authors_prompts(state):
        return _convert_prompts(state, args)
    return _convert_network(state, source, out)


def _convert_network(state: Any, source: Path, out: Path) -> int:
    import json

    from textmef.checkpoint import model_from_authors_state, save_checkpoint

    model, metadata = model_from_authors_state(state, source)
    save_checkpoint(model, out, {k: metadata[k] for k in ("source", "dropped", "dropped_values")})
    dropped = json.loads(metadata["dropped"])
    print(
        f"dropped {int(metadata['dropped_values']):,} values in {len(dropped)} tensors that "
        "never reach the output: " + ", ".join(dropped)
    )
    live = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: the {metadata['model']} model, {live:,} parameters "
          f"({model.config.describe()})")  # fmt: skip
    return 0


def _convert_to_authors(source: Path, out: Path) -> int:
    import torch

    from textmef.authors import to_authors_state
    from textmef.checkpoint import read_checkpoint
    from textmef.errors import CheckpointError
    from textmef.io import atomic_path

    config, state, _ = read_checkpoint(source)
    try:
        theirs = to_authors_state(state, config)
    except CheckpointError as exc:
        raise CheckpointError(source, exc.problem) from None
    with atomic_path(out) as tmp:
        torch.save(theirs, tmp)
    total = sum(t.numel() for t in theirs.values())
    print(f"wrote {out}: {len(theirs)} tensors, {total:,} values in the authors' layout "
          "(FusionNet(base_filter=64).load_state_dict accepts it strictly)")  # fmt: skip
    return 0


def _convert_prompts(state: Any, args: argparse.Namespace) -> int:
    from textmef.authors import from_authors_prompts
    from textmef.clip.loading import clip_fingerprint, find_clip_file, load_clip
    from textmef.clip.prompts import save_prompts

    clip_file = find_clip_file(args.clip, download=args.clip_download)
    clip = load_clip(clip_file)
    conversion = from_authors_prompts(state, clip, length=args.length, path=args.input)
    info = {
        "converted_from": args.input.name,
        "authors_rows": ["over", "under", "well"],
        "clip_file": clip_file.name,
        "ignored": conversion.ignored,
    }
    save_prompts(args.output, conversion.learner, clip, clip_fingerprint(clip), info)
    if conversion.ignored:
        print(
            f"ignored {len(conversion.ignored)} tensor(s) of the file (their copy of CLIP's "
            f"text tower); the features come from {clip_file.name}"
        )
    print(f"wrote {args.output}: 3 learned prompts (over, under, well), {args.length} tokens each")
    return 0


def _add_info(sub: Any) -> None:
    from textmef.models.registry import list_models

    p = sub.add_parser(
        "info",
        help="describe the model fuse uses (name, width, parameters, weights) and the backends",
        description="Describe the model `textmef fuse` uses by default (the packaged "
        "checkpoint), another checkpoint (--weights), or a registered architecture "
        "(--model; e.g. --model textmef is the paper's C = 64 network).",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--model", choices=list_models(), help="describe a registered architecture instead"
    )
    which.add_argument(
        "--weights", type=Path, help="describe this checkpoint (.safetensors or the authors' .pth)"
    )
    p.set_defaults(run=_cmd_info)


def _add_clip_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--clip",
        type=Path,
        metavar="FILE",
        help="CLIP weights: OpenAI's ViT-B-32.pt, an open_clip checkpoint or a "
        "Hugging Face CLIPModel model.safetensors (default: $TEXTMEF_CLIP, "
        "else the downloaded copy in the cache)",
    )
    parser.add_argument(
        "--clip-download",
        action="store_true",
        help="when no CLIP file is given, download OpenAI's ViT-B-32.pt into "
        "the cache (sha256-verified; needs internet)",
    )


def _add_train_prompt(sub) -> None:
    from textmef.clip.config import PROMPT_MODES
    from textmef.engine.prompt_config import PromptTrainingConfig

    d = PromptTrainingConfig()
    p = sub.add_parser(
        "train-prompt",
        help="stage 1: learn the over/under/well-exposed prompts",
        description="Learn the exposure prompts through a frozen CLIP from folders of "
        "under-exposed, over-exposed and well-exposed (reference or pseudo-"
        "reference) images. Defaults are the paper's recipe.",
    )
    p.add_argument("--under", type=Path, required=True, metavar="DIR", help="under-exposed images")
    p.add_argument("--over", type=Path, required=True, metavar="DIR", help="over-exposed images")
    p.add_argument(
        "--well",
        type=Path,
        required=True,
        metavar="DIR",
        help="well-exposed images (references or pseudo references)",
    )
    p.add_argument(
        "-o", "--output", type=Path, required=True, help="prompts file to write (.safetensors)"
    )
    _add_clip_options(p)
    p.add_argument(
        "--mode",
        choices=PROMPT_MODES,
        default=d.mode,
        help="learned: three learnable prompts (paper); pos-neg: one learnable "
        "negative + one positive; fixed: handcrafted texts (default learned)",
    )
    p.add_argument(
        "--texts",
        nargs=3,
        metavar=("OVER", "UNDER", "WELL"),
        help="handcrafted texts for --mode fixed",
    )
    p.add_argument(
        "--length",
        type=positive_int,
        default=d.length,
        help=f"tokens per learnable prompt (default {d.length})",
    )
    p.add_argument("--epochs", type=non_negative_int, default=d.epochs, help=f"default {d.epochs}")
    p.add_argument(
        "--batch-size", type=positive_int, default=d.batch_size, help=f"default {d.batch_size}"
    )
    p.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr})")
    p.add_argument(
        "--weight-decay", type=float, default=d.weight_decay, help=f"default {d.weight_decay}"
    )
    p.add_argument(
        "--no-augment",
        action="store_true",
        help="no random flips/rotations (caches 1 feature per image instead of 8)",
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=d.holdout,
        help=f"fraction of each folder held out for the accuracy report (default {d.holdout})",
    )
    p.add_argument("--seed", type=int, default=d.seed, help=f"default {d.seed}")
    p.add_argument(
        "--run-dir",
        type=Path,
        help="folder for the resumable state and the feature cache "
        "(default: OUTPUT with .run instead of its suffix)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: all cores)")
    p.set_defaults(run=_cmd_train_prompt)


def _cmd_train_prompt(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from textmef.clip.loading import (
        clip_fingerprint,
        find_clip_file,
        identify_clip_file,
        load_clip,
    )
    from textmef.data.folders import list_images
    from textmef.engine.prompt_training import PromptTrainingConfig, train_prompts

    if args.texts and args.mode != "fixed":
        raise InputError(None, "--texts is only used with --mode fixed")
    if not 0.0 <= args.holdout < 1.0:
        raise InputError(None, f"--holdout must be in [0, 1), got {args.holdout}")
    if args.output.suffix.lower() != ".safetensors":
        raise InputError(args.output, "prompts are written as .safetensors; use that suffix")
    if args.output.parent and not args.output.parent.is_dir():
        raise InputError(args.output.parent, "no such folder for the output")
    _use_threads(args.threads)
    folders = {
        "under": list_images(args.under),
        "over": list_images(args.over),
        "well": list_images(args.well),
    }
    config = PromptTrainingConfig(
        mode=args.mode,
        length=args.length,
        texts=tuple(args.texts or ()),
        lr=args.lr,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        epochs=args.epochs,
        augment=not args.no_augment,
        holdout=args.holdout,
        seed=args.seed,
    )
    clip_file = find_clip_file(args.clip, download=args.clip_download)
    from textmef.runtime import resolve_device

    clip = load_clip(clip_file, device=resolve_device(args.device))
    info = {
        "clip_file": clip_file.name,
        "clip_file_known_as": identify_clip_file(clip_file),
        "data": {k: str(getattr(args, k)) for k in ("under", "over", "well")},
    }
    run_dir = args.run_dir or args.output.with_suffix(".run")
    result = train_prompts(
        clip,
        clip_fingerprint(clip),
        folders,
        config,
        args.output,
        run_dir,
        resume=args.resume,
        report=tqdm.write,
        info=info,
    )
    print(f"wrote {result.output} ({result.seconds:.1f} s)")
    return 0


def _add_train(sub) -> None:
    from textmef.engine.config import add_override_flags

    p = sub.add_parser(
        "train",
        help="stage 2: train the fusion network (MSE + λ·L_clip)",
        description="Train the fusion network from a YAML config; every field can be "
        "overridden as --section.field VALUE. Under torchrun, each process "
        "trains its share of every batch (DDP).",
    )
    p.add_argument(
        "--config",
        type=Path,
        help="YAML file with data/model/optim/loss/run sections (default: the built-in defaults)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in run.out")
    p.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit"
    )
    add_override_flags(p)
    p.set_defaults(run=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from textmef.engine.config import TrainConfig, apply_overrides, load_config

    config = load_config(args.config) if args.config else TrainConfig()
    config = apply_overrides(config, args)
    if args.print_config:
        import json

        import yaml

        print(yaml.safe_dump(json.loads(json.dumps(config.to_dict())), sort_keys=False), end="")
        return 0
    from textmef.engine.train import train

    train(config, resume=args.resume, report=tqdm.write)
    return 0


def _add_make_pairs(sub) -> None:
    from textmef.data.pair_options import PICK_MODES, REFERENCE_METHODS, PairOptions

    d = PairOptions()
    p = sub.add_parser(
        "make-pairs",
        help="turn folders of exposure brackets into training triplets",
        description="Find every folder under STACKS_DIR that directly holds two or more "
        "images of one size (an exposure stack) and write its under- and "
        "over-exposed frame and a pseudo reference fused from the whole stack "
        "to DATA_DIR/under, DATA_DIR/over and DATA_DIR/gt (NAME.png each, NAME = "
        "the stack's path with / turned into _; with --pick all-pairs one triplet "
        "per pair, NAME@UNDER-OVER with the frames' file stems), plus "
        "DATA_DIR/manifest.json.",
    )
    p.add_argument(
        "stacks",
        type=Path,
        metavar="STACKS_DIR",
        help="folder searched recursively for exposure stacks",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="DATA_DIR",
        help="output folder (created)",
    )
    p.add_argument(
        "--pick",
        choices=PICK_MODES,
        default=d.pick,
        help="extremes: the darkest and the brightest frame; ev-gap: the pair "
        "closest to --ev-gap stops apart, centred on the stack; all-pairs: every "
        "pair at least --min-gap stops apart, all with the stack's one reference "
        f"(default {d.pick})",
    )
    p.add_argument(
        "--ev-gap",
        type=float,
        metavar="G",
        help=f"stops between the pair for --pick ev-gap (default {d.ev_gap})",
    )
    p.add_argument(
        "--min-gap",
        type=float,
        metavar="G",
        help="smallest gap in stops between a pair for --pick all-pairs; a gap up "
        "to 1/6 stop short counts (EXIF times are rounded, estimates noisy). A "
        f"stack without such a pair is skipped (default {d.min_gap})",
    )
    p.add_argument(
        "--reference",
        choices=REFERENCE_METHODS,
        default=d.reference,
        help="mertens: Mertens fusion of all frames (OpenCV's weights 1/1/0); "
        "mertens-paper: the same with the paper's weights 1/1/1; hdr: Debevec "
        "HDR merge, Drago tone mapping; best: all three, keep the highest "
        f"MEF-SSIM against the stack (default {d.reference})",
    )
    p.add_argument(
        "--max-side",
        type=positive_int,
        metavar="N",
        help="downsize (area filter) so no side exceeds N pixels, before "
        "anything else (default: keep the size)",
    )
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="keep stacks whose outputs and manifest entries an earlier run with "
        "the same options wrote",
    )
    p.add_argument(
        "--align",
        action="store_true",
        help="register every frame to the middle exposure first (hand-held "
        "brackets) and crop to the common area; motions go to the manifest",
    )
    _add_max_pixels(p)
    p.set_defaults(run=_cmd_make_pairs)


def _cmd_make_pairs(args: argparse.Namespace) -> int:
    import time
    from collections import Counter

    from tqdm.contrib.logging import logging_redirect_tqdm

    from textmef.data.pair_options import MANIFEST_NAME, PairOptions
    from textmef.data.stacks import make_pairs

    if args.ev_gap is not None and args.pick != "ev-gap":
        raise InputError(None, "--ev-gap is only used with --pick ev-gap")
    if args.min_gap is not None and args.pick != "all-pairs":
        raise InputError(None, "--min-gap is only used with --pick all-pairs")
    options = PairOptions(
        pick=args.pick,
        ev_gap=PairOptions.ev_gap if args.ev_gap is None else args.ev_gap,
        min_gap=PairOptions.min_gap if args.min_gap is None else args.min_gap,
        reference=args.reference,
        max_side=args.max_side,
        skip_existing=args.skip_existing,
        align=args.align,
        max_pixels=args.max_pixels,
    )
    start = time.perf_counter()
    with logging_redirect_tqdm():  # warnings about skipped folders print above the bar
        manifest = make_pairs(args.stacks, args.output, options, progress=True)
    made, skipped = manifest["stacks"], manifest["skipped"]
    if not made:
        raise InputError(
            args.stacks,
            "holds no usable exposure stack (a folder with two or "
            "more images of one size); see "
            f"{args.output / MANIFEST_NAME}",
        )
    # References are counted per stack: all-pairs gives a stack's one reference many times.
    chosen = {entry.get("sequence", entry["name"]): entry["reference"]["chosen"] for entry in made}
    wins = Counter(chosen.values())
    stacks = f" from {len(chosen)} stack(s)" if len(chosen) != len(made) else ""
    print(
        f"wrote {len(made)} triplet(s){stacks} to {args.output} in "
        f"{time.perf_counter() - start:.1f} s; references: "
        + ", ".join(f"{name} {count}" for name, count in sorted(wins.items()))
        + (f"; {len(skipped)} folder(s) skipped (see {MANIFEST_NAME})" if skipped else "")
    )
    return 0


def _add_eval(sub) -> None:

    p = sub.add_parser(
        "eval",
        help="score fused images against their sources (and references)",
        description="Score every image in FUSED_DIR (named like its source pair: NAME.png or "
        "NAME_<method>.png) against --under/--over (and --gt). Writes a per-image "
        "CSV (eval.csv) and a Markdown summary (summary.md, mean ± std per metric) "
        "to -o DIR.",
    )
    p.add_argument("fused", type=Path, metavar="FUSED_DIR", help="folder of fused images")
    p.add_argument("--under", type=Path, required=True, metavar="DIR", help="under-exposed sources")
    p.add_argument("--over", type=Path, required=True, metavar="DIR", help="over-exposed sources")
    p.add_argument(
        "--gt", type=Path, metavar="DIR", help="reference images (enables PSNR, SSIM, TMQI)"
    )
    p.add_argument(
        "-o", "--output", type=Path, required=True, metavar="DIR", help="report folder (created)"
    )
    p.add_argument(
        "--metrics",
        type=csv_list,
        help="comma-separated subset of the metrics, e.g. PSNR,SSIM,QABF (default: all "
        "that apply; an unknown name lists them all)",
    )
    p.add_argument("--label", help="method name in the reports (default: FUSED_DIR's name)")
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: all cores)")
    _add_max_pixels(p)
    p.set_defaults(run=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from textmef.bench.report import summary_markdown
    from textmef.bench.runner import run_eval

    _use_threads(args.threads)
    result = run_eval(
        args.fused,
        args.under,
        args.over,
        args.output,
        gt_dir=args.gt,
        metrics=args.metrics,
        label=args.label,
        progress=_progress,
        max_pixels=args.max_pixels,
    )
    print(summary_markdown(result.summary, result.columns), end="")
    print(
        f"scored {len(result.rows)} image(s); wrote {args.output / 'eval.csv'} and "
        f"{args.output / 'summary.md'}"
    )
    return 0


def _add_bench(sub) -> None:
    from textmef.bench.config import SPLITS
    from textmef.methods import DEFAULT_METHODS, list_methods

    p = sub.add_parser(
        "bench",
        help="run several fusion methods on a dataset, time and score them",
        description="Fuse every scene of DATA_DIR (under/ over/ [gt/], e.g. made by textmef "
        "make-pairs; or, with --stacks, a folder of exposure stacks) with each "
        "method, time and score them, and write a report "
        "folder: scores.csv, summary.md/.csv (best per column in bold), "
        "plots/, grids/ and index.html. Re-running reuses fused images and "
        "scores already in the folder.",
    )
    p.add_argument("data", type=Path, metavar="DATA_DIR", help="triplet folder")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="DIR",
        help="report folder (created; reused when it exists)",
    )
    p.add_argument(
        "--methods",
        type=csv_list,
        default=DEFAULT_METHODS,
        help=f"comma-separated, in report order, from {','.join(list_methods())} "
        f"(default {','.join(DEFAULT_METHODS)}); methods that cannot run here "
        "are skipped with the reason",
    )
    p.add_argument(
        "--stacks",
        action="store_true",
        help="DATA_DIR holds exposure stacks (folders of 2+ frames, as make-pairs "
        "reads them); every method fuses all frames of a stack",
    )
    p.add_argument(
        "--references",
        type=Path,
        metavar="DIR",
        help="with --stacks: references named like make-pairs names the stacks "
        "(e.g. its gt/ folder); enables PSNR, SSIM, TMQI",
    )
    p.add_argument(
        "--split",
        choices=SPLITS,
        default="all",
        help="all scenes, or the train/val part of training's fixed split by name "
        "hash (default all)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="held-out fraction of that split, as data.val_fraction in training (default 0.1)",
    )
    p.add_argument(
        "--metrics", type=csv_list, help="comma-separated subset (default: all that apply)"
    )
    p.add_argument("--limit", type=positive_int, help="only the first N scenes")
    p.add_argument(
        "--weights",
        type=Path,
        help="checkpoint (.safetensors or the authors' .pth) for the textmef methods "
        "(default: the packaged one)",
    )
    p.add_argument(
        "--tile",
        type=non_negative_int,
        default=DEFAULT_TILE,
        help=f"network tiles of about N x N pixels, 0 = whole image (default {DEFAULT_TILE})",
    )
    p.add_argument(
        "--overlap",
        type=non_negative_int,
        default=DEFAULT_OVERLAP,
        help=f"tile overlap (default {DEFAULT_OVERLAP})",
    )
    p.add_argument(
        "--work-size",
        type=positive_int,
        metavar="N",
        help="bench the network methods as `textmef fuse` runs them: the guided path above "
        "N x N pixels (default: the network at full resolution, the published method)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda for the network (default cpu)")
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: all cores)")
    _add_max_pixels(p)
    p.set_defaults(run=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from textmef.bench.report import summary_markdown
    from textmef.bench.runner import BenchConfig, run_bench
    from textmef.methods import MethodOptions
    from textmef.runtime import resolve_device

    check_tiling(args.tile, args.overlap)
    _use_threads(args.threads)
    options = MethodOptions(
        weights=args.weights,
        device=str(resolve_device(args.device)),
        tile=args.tile,
        overlap=args.overlap,
        work_size=args.work_size,
    )
    if args.work_size is not None:
        check_work_size(args.work_size)
    config = BenchConfig(
        data=args.data,
        out=args.output,
        methods=tuple(args.methods),
        stacks=args.stacks,
        references=args.references,
        split=args.split,
        val_fraction=args.val_fraction,
        metrics=args.metrics,
        limit=args.limit,
        method_options=options,
        max_pixels=args.max_pixels,
    )
    result = run_bench(config, progress=_progress, log=lambda line: print(line, flush=True))
    print(summary_markdown(result.summary, result.columns), end="")
    print(f"report: {args.output / 'index.html'} (also summary.md, scores.csv, plots/, grids/)")
    return 0


def _progress(items, desc=None):
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="img", disable=None, leave=False)


def _use_threads(threads: int | None) -> None:
    if threads:
        from textmef.runtime import set_threads

        set_threads(threads)


def _cmd_info(args: argparse.Namespace) -> int:
    from textmef.checkpoint import packaged_weights_path, read_checkpoint_info
    from textmef.models import get_model, list_models
    from textmef.models.fusionnet import FusionNet
    from textmef.ssm.scan import mamba_ssm_available, numba_available

    if args.model:
        entry = get_model(args.model)
        name, config, weights = entry.name, entry.config, None
        where = "none (this architecture is not trained here; pass --weights to fuse)"
    else:
        weights = args.weights or packaged_weights_path()
        if weights is None:
            raise InputError(None, "no packaged weights in this installation; pass --weights")
        info = read_checkpoint_info(weights)
        name, config = info.model, info.config
        packaged = args.weights is None
        where = f"{weights}" + (
            " (packaged: what `textmef fuse` uses by default)" if packaged else ""
        )
    model = FusionNet(config)
    total = sum(p.numel() for p in model.parameters())
    description = get_model(name).description if name in list_models() else "not a registered model"
    print(f"textmef {__version__}")
    print(f"model: {name} ({description})")
    print(f"  architecture: {config.describe()}")
    print(f"  parameters: {total:,}")
    for part, child in model.named_children():
        print(f"    {part:<18} {sum(p.numel() for p in child.parameters()):>10,}")
    print(f"  weights: {where}")
    print(
        f"scan backends: numba={'yes' if numba_available() else 'no'}, torch=yes, "
        f"mamba_ssm={'yes' if mamba_ssm_available() else 'no'}"
    )
    print(f"registered models: {', '.join(list_models())} (textmef info --model NAME)")
    return 0


def _pairs_from_folders(under_dir: Path, over_dir: Path) -> list[tuple[Path, Path]]:
    from textmef.data.pairs import match_by_stem

    match = match_by_stem([under_dir, over_dir])
    if match.unmatched:
        shown = ", ".join(match.unmatched[:10]) + (" ..." if len(match.unmatched) > 10 else "")
        log.warning("no partner for %d image(s), skipped: %s", len(match.unmatched), shown)
    return [(under, over) for under, over in match.groups()]


def _fuse_files(model, paths: Sequence[Path], out: Path, args: argparse.Namespace) -> str:
    """Fuse 2+ exposures of one scene into ``out``; returns a note on order and motion."""
    from textmef import io
    from textmef.stack import MISALIGNED_PX, fuse_stack

    result = fuse_stack(
        paths,
        model,
        strategy=args.strategy,
        align=args.align,
        tile=args.tile,
        overlap=args.overlap,
        work_size=args.work_size,
        full_res=args.full_res,
        threads=args.threads,
        max_pixels=args.max_pixels,
    )
    if result.misalignment_px is not None and result.misalignment_px > MISALIGNED_PX:
        dark, bright = paths[result.order[0]].name, paths[result.order[-1]].name
        if dark == bright:  # folder mode: one stem in two folders
            dark, bright = (
                f"{p.parent.name}/{p.name}"
                for p in (paths[result.order[0]], paths[result.order[-1]])
            )
        log.warning(
            "%s and %s look misaligned by about %.1f px (hand-held?); pass --align to "
            "register them first",
            dark,
            bright,
            result.misalignment_px,
        )
    io.write_image(out, result.image, result.bit_depth)
    notes = []
    if len(paths) > 2 or result.order != list(range(len(paths))):
        names = [paths[i].name for i in result.order]
        notes.append("exposure order (" + result.ordering + "): " + " < ".join(names))
    if len(paths) > 2:
        notes.append(
            f"strategy {args.strategy}: fused " + ", ".join(paths[i].name for i in result.used)
        )
    if result.motions:
        notes += [f"{paths[i].name}: {result.motions[i]}" for i in result.order[1:]]
    return "; ".join(notes)


def _cmd_fuse(args: argparse.Namespace) -> int:
    folder_mode = args.under is not None or args.over is not None
    if folder_mode and args.images:
        raise InputError(None, "give either UNDER OVER files or --under/--over folders, not both")
    if folder_mode and (args.under is None or args.over is None):
        raise InputError(None, "folder mode needs both --under DIR and --over DIR")
    if not folder_mode and len(args.images) < 2:
        raise InputError(
            None, "expected two or more images: textmef fuse UNDER OVER [MORE...] -o OUT"
        )
    check_tiling(args.tile, args.overlap)
    check_work_size(args.work_size)
    # The API's own line about the guided path would repeat for every pair; the command
    # says it once (below, or per folder in _fuse_folders).
    logging.getLogger("textmef.api").setLevel(logging.WARNING)
    if folder_mode:
        return _fuse_folders(args)
    from textmef.files import check_output_file
    from textmef.stack import check_stack_files

    # Everything that can be checked is checked before the model loads or a pixel is
    # decoded, so a mistake costs the start-up time, not a fusion.
    paths = [Path(p) for p in args.images]
    check_output_file(args.output, inputs=paths)
    headers = check_stack_files(paths, args.max_pixels)
    _say_resolution([(h.height, h.width) for h in headers[:1]], args)
    model = _load_model(args)
    note = _fuse_files(model, paths, args.output, args)
    print(f"wrote {args.output}" + (f" ({note})" if note else ""))
    return 0


def _say_resolution(sizes: Sequence[tuple[int, int]], args: argparse.Namespace) -> None:
    """One line when the guided path will run (for one image, or how many of a folder)."""
    from textmef.inference import plan_fusion

    plans = [plan_fusion(h, w, args.work_size, args.full_res) for h, w in sizes]
    guided = [p for p in plans if p.guided]
    if not guided:
        return
    hint = "; --full-res runs the network at full resolution (slower)"
    if len(plans) == 1:
        log.info("%s%s", guided[0].describe(), hint)
        return
    log.info(
        "%d of %d pairs are larger than %d x %d pixels: the network fuses them at about that "
        "size and a local colour transform carries each result to full resolution%s",
        len(guided),
        len(plans),
        args.work_size,
        args.work_size,
        hint,
    )


def _load_model(args: argparse.Namespace) -> Any:
    from textmef.api import load_model
    from textmef.runtime import resolve_device

    return load_model(args.weights, resolve_device(args.device))


def _output_folder(args: argparse.Namespace) -> Path:
    """The folder-mode output folder, checked (never an input folder); not created yet."""
    import os

    from textmef.files import same_file

    out = args.output
    for source in (args.under, args.over):
        if out.exists() and same_file(out, source):
            raise InputError(out, f"is the input folder {source}; writing there would replace "
                                  "the originals, so choose another output folder")  # fmt: skip
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    parent = out if out.exists() else out.parent
    if not parent.is_dir():
        raise InputError(out, f"cannot be created: {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(out, f"cannot be written: {parent} is read-only")
    return out


def _fuse_folders(args: argparse.Namespace) -> int:
    from textmef.files import check_output_file, remove_stale_temp_files
    from textmef.stack import check_stack_files

    out = _output_folder(args)
    pairs = _pairs_from_folders(args.under, args.over)
    suffix = f".{args.ext.lstrip('.')}" if args.ext else None
    tasks = [(u, o, out / (u.stem + (suffix or u.suffix))) for u, o in pairs]
    if suffix:  # one bad --ext fails the whole run at once
        check_output_file(out / f"x{suffix}", folder_made_later=True)
    if args.skip_existing:
        done = [t for t in tasks if t[2].exists()]
        tasks = [t for t in tasks if not t[2].exists()]
        if done:
            print(f"skipping {len(done)} pair(s) whose output exists")
    failures, ready, sizes = 0, [], []
    for under, over, target in tasks:  # headers only: bad pairs are reported before fusing
        try:
            check_output_file(target, inputs=(under, over), folder_made_later=True)
            headers = check_stack_files([under, over], args.max_pixels)
            ready.append((under, over, target))
            sizes.append((headers[0].height, headers[0].width))
        except InputError as exc:
            failures += 1
            print(f"textmef: error: {exc}", file=sys.stderr)
    if ready:
        out.mkdir(exist_ok=True)
        for path in remove_stale_temp_files(out):
            log.info("removed %s, left by an interrupted run", path.name)
        _say_resolution(sizes, args)
    workers = min(args.jobs, len(ready))
    if workers > 1:
        fused, failed = _fuse_in_pool(ready, args, workers)
    else:
        fused, failed = _fuse_in_process(ready, args)
    failures += failed
    print(f"fused {fused} pair(s) into {out}" + (f"; {failures} failed" if failures else ""))
    return 1 if failures else 0


def _fuse_in_process(
    ready: Sequence[tuple[Path, Path, Path]], args: argparse.Namespace
) -> tuple[int, int]:
    """Fuse the pairs one after another here; returns (fused, failed)."""
    from tqdm import tqdm

    model = _load_model(args) if ready else None
    fused = failed = 0
    for under, over, target in tqdm(ready, desc="fusing", unit="pair", disable=None):
        try:
            note = _fuse_files(model, [under, over], target, args)
            fused += 1
            if note and args.align:
                tqdm.write(f"{target.name}: {note}")
        except InputError as exc:
            failed += 1
            tqdm.write(f"textmef: error: {exc}", file=sys.stderr)
    return fused, failed


def _fuse_in_pool(
    ready: Sequence[tuple[Path, Path, Path]], args: argparse.Namespace, workers: int
) -> tuple[int, int]:
    """Fuse the pairs in ``workers`` processes, the threads split between them.

    Each worker loads the model once and fuses one pair at a time; outputs are written
    atomically, so an interrupted run leaves whole files that ``--skip-existing`` keeps.
    Processes are spawned, not forked: a forked PyTorch thread pool can deadlock.
    """
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm import tqdm

    threads = max(1, (args.threads or os.cpu_count() or 1) // workers)
    options = {k: v for k, v in vars(args).items() if k != "run"} | {"threads": threads}
    fused = failed = 0
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_start,
        initargs=(options,),
    )
    try:
        futures = [pool.submit(_worker_fuse, u, o, t) for u, o, t in ready]
        for future in tqdm(
            as_completed(futures), total=len(futures), desc="fusing", unit="pair", disable=None
        ):
            name, note, error = future.result()
            if error is None:
                fused += 1
                if note and args.align:
                    tqdm.write(f"{name}: {note}")
            else:
                failed += 1
                tqdm.write(f"textmef: error: {error}", file=sys.stderr)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return fused, failed


# One per worker process of _fuse_in_pool: its options and its model.
_WORKER: dict[str, Any] = {}


def _worker_start(options: dict[str, Any]) -> None:
    import signal

    # Ctrl-C reaches the whole process group; the parent alone handles it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="textmef: %(levelname)s: %(message)s")
    logging.getLogger("textmef.api").setLevel(logging.WARNING)
    args = argparse.Namespace(**options)
    _use_threads(args.threads)
    _WORKER["args"], _WORKER["model"] = args, _load_model(args)


def _worker_fuse(under: Path, over: Path, target: Path) -> tuple[str, str | None, str | None]:
    """(output name, note, None) or (output name, None, the error's one line)."""
    try:
        note = _fuse_files(_WORKER["model"], [under, over], target, _WORKER["args"])
    except TextmefError as exc:
        return target.name, None, str(exc)
    return target.name, note, None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``textmef`` console script."""
    logging.basicConfig(level=logging.INFO, format="textmef: %(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except TextmefError as exc:
        print(f"textmef: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("textmef: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `textmef info | head`): stop quietly, as Unix tools do.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
