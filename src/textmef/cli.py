"""Command line: ``textmef fuse`` and ``textmef info`` (a thin layer over the Python API)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from textmef import __version__
from textmef.errors import InputError, TextmefError
from textmef.inference import DEFAULT_OVERLAP, DEFAULT_TILE

log = logging.getLogger("textmef")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textmef", description=__doc__)
    parser.add_argument("--version", action="version", version=f"textmef {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    fuse = sub.add_parser("fuse", help="fuse an under- and an over-exposed image (or folders)",
                          description="Fuse UNDER and OVER into OUT, or every pair of files with "
                                      "the same stem in --under DIR and --over DIR into -o DIR.")
    fuse.add_argument("images", nargs="*", metavar="UNDER OVER", help="the two input images")
    fuse.add_argument("--under", type=Path, metavar="DIR", help="folder of under-exposed images")
    fuse.add_argument("--over", type=Path, metavar="DIR", help="folder of over-exposed images")
    fuse.add_argument("-o", "--output", type=Path, required=True,
                      help="output file (single pair) or folder (folder mode)")
    fuse.add_argument("--weights", type=Path, help="a .safetensors checkpoint "
                                                   "(default: the packaged one)")
    fuse.add_argument("--tile", type=_non_negative, default=DEFAULT_TILE,
                      help=f"tile side in pixels, 0 = whole image at once (default {DEFAULT_TILE})")
    fuse.add_argument("--overlap", type=_non_negative, default=DEFAULT_OVERLAP,
                      help=f"overlap between tiles in pixels (default {DEFAULT_OVERLAP})")
    fuse.add_argument("--threads", type=_positive, help="CPU threads (default: all cores)")
    fuse.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    fuse.add_argument("--skip-existing", action="store_true",
                      help="folder mode: skip pairs whose output already exists")
    fuse.add_argument("--ext", default=None,
                      help="folder mode: output suffix, e.g. png (default: the under image's)")
    fuse.set_defaults(run=_cmd_fuse)

    info = sub.add_parser("info", help="print the network's size and the available backends")
    info.add_argument("--config", default="textmef", help="named config (default textmef)")
    info.set_defaults(run=_cmd_info)
    return parser


def _cmd_info(args: argparse.Namespace) -> int:
    from textmef.checkpoint import packaged_weights_path
    from textmef.models import CONFIGS, FusionNet
    from textmef.ssm.scan import mamba_ssm_available, numba_available

    if args.config not in CONFIGS:
        raise InputError(None, f"unknown config {args.config!r}; known: {sorted(CONFIGS)}")
    config = CONFIGS[args.config]
    model = FusionNet(config)
    total = sum(p.numel() for p in model.parameters())
    print(f"textmef {__version__}")
    print(f"config {args.config}: {config}")
    print(f"parameters: {total:,}")
    for name, child in model.named_children():
        print(f"  {name:<18} {sum(p.numel() for p in child.parameters()):>10,}")
    print(f"scan backends: numba={'yes' if numba_available() else 'no'}, torch=yes, "
          f"mamba_ssm={'yes' if mamba_ssm_available() else 'no'}")
    weights = packaged_weights_path()
    print(f"packaged weights: {weights if weights else 'none yet'}")
    return 0


def _pairs_from_folders(under_dir: Path, over_dir: Path) -> list[tuple[Path, Path]]:
    from textmef.io import SUPPORTED_SUFFIXES

    for d in (under_dir, over_dir):
        if not d.is_dir():
            raise InputError(d, "no such folder")

    def by_stem(folder: Path) -> dict[str, Path]:
        files = {}
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES:
                if p.stem in files:
                    raise InputError(p, f"two images share the stem {p.stem!r} "
                                        f"({files[p.stem].name})")
                files[p.stem] = p
        return files

    unders, overs = by_stem(under_dir), by_stem(over_dir)
    lonely = sorted(set(unders) ^ set(overs))
    if lonely:
        log.warning("no partner for %d image(s), skipped: %s", len(lonely), ", ".join(lonely[:10]))
    pairs = [(unders[s], overs[s]) for s in sorted(set(unders) & set(overs))]
    if not pairs:
        raise InputError(under_dir, f"no pairs of images with matching stems in {over_dir}")
    return pairs


def _fuse_pair(model, under: Path, over: Path, out: Path, args: argparse.Namespace) -> None:
    from textmef import io
    from textmef.inference import fuse_tensors

    u, o = io.read_image(under), io.read_image(over)
    io.check_pair(u, o)
    device = next(model.parameters()).device
    fused = fuse_tensors(model, io.to_tensor(u.pixels).to(device),
                         io.to_tensor(o.pixels).to(device), tile=args.tile, overlap=args.overlap)
    io.write_image(out, io.from_tensor(fused.cpu()), u.bit_depth)


def _cmd_fuse(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from textmef.api import load_model, resolve_device, set_threads

    folder_mode = args.under is not None or args.over is not None
    if folder_mode and args.images:
        raise InputError(None, "give either UNDER OVER files or --under/--over folders, not both")
    if folder_mode and (args.under is None or args.over is None):
        raise InputError(None, "folder mode needs both --under DIR and --over DIR")
    if not folder_mode and len(args.images) != 2:
        raise InputError(None, "expected two images: textmef fuse UNDER OVER -o OUT")
    if args.tile and args.tile <= args.overlap:
        raise InputError(None, f"--tile ({args.tile}) must exceed --overlap ({args.overlap})")
    if args.threads:
        set_threads(args.threads)
    device = resolve_device(args.device)

    if not folder_mode:
        under, over = map(Path, args.images)
        model = load_model(args.weights, device)
        _fuse_pair(model, under, over, args.output, args)
        print(f"wrote {args.output}")
        return 0

    pairs = _pairs_from_folders(args.under, args.over)
    if args.output.exists() and not args.output.is_dir():
        raise InputError(args.output, "exists and is not a folder")
    args.output.mkdir(parents=True, exist_ok=True)
    suffix = f".{args.ext.lstrip('.')}" if args.ext else None
    jobs = [(u, o, args.output / (u.stem + (suffix or u.suffix))) for u, o in pairs]
    if args.skip_existing:
        done = [j for j in jobs if j[2].exists()]
        jobs = [j for j in jobs if not j[2].exists()]
        if done:
            print(f"skipping {len(done)} pair(s) whose output exists")
    model = load_model(args.weights, device) if jobs else None
    failures = 0
    for under, over, out in tqdm(jobs, desc="fusing", unit="pair", disable=None):
        try:
            _fuse_pair(model, under, over, out, args)
        except InputError as exc:
            failures += 1
            tqdm.write(f"textmef: error: {exc}", file=sys.stderr)
    print(f"fused {len(jobs) - failures} pair(s) into {args.output}"
          + (f"; {failures} failed" if failures else ""))
    return 1 if failures else 0


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


if __name__ == "__main__":
    sys.exit(main())
