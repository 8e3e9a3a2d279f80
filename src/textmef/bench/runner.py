"""``textmef eval`` and ``textmef bench``: score fused images, and run methods side by side.

A bench report folder holds everything needed to resume and to read the results::

    fused/<method>/<scene>.png    each method's output (same bit depth as the inputs)
    fused/<method>/method.json    what ran (checkpoint, binary version) and per-scene seconds
    scores.csv                    one row per (method, scene): seconds and every metric
    summary.csv, summary.md       mean ± std per method and metric, best value in bold
    plots/<metric>.png            bar chart per metric
    grids/<scene>.jpg             inputs, every method and the reference side by side
    index.html                    all of the above on one static page
    bench.json                    the run's settings and the scores cache

Outputs already in ``fused/<method>/`` are reused; scores are reused while the fused file
is unchanged, so an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from textmef import io
from textmef.bench import report
from textmef.bench.config import SPLITS, BenchConfig
from textmef.bench.scoring import MetricSpec, resolve_metrics, score_image
from textmef.data.folders import list_images
from textmef.data.triplets import find_triplets, split_by_sequence
from textmef.errors import InputError
from textmef.limits import DEFAULT_MAX_PIXELS
from textmef.methods import build_method, list_methods, method_description, unavailable_reason

__all__ = ["SPLITS", "BenchConfig", "EvalResult", "match_fused", "run_bench", "run_eval"]

# progress(items, desc=...) -> iterable over items, e.g. a tqdm bar.
Progress = Callable[..., Sequence]


@dataclass(frozen=True)
class Scene:
    """One scene of a benchmark: its exposures, darkest first, and its reference (or None)."""

    name: str
    frames: tuple[Path, ...]
    gt: Path | None


@dataclass
class EvalResult:
    """Per-image rows and the per-method summary of an evaluation or benchmark."""

    rows: list[dict]
    summary: dict[str, dict[str, tuple[float, float, int]]]
    columns: list[str]
    skipped: dict[str, str] = field(default_factory=dict)


def _load(path: Path) -> tuple[torch.Tensor, int]:
    # Inputs passed _check_headers (with the run's pixel limit) before anything was fused.
    image = io.read_image(path, max_pixels=None)
    return io.to_tensor(image.pixels), image.bit_depth


def _check_same_size(name: str, tensors: dict[str, torch.Tensor], paths: dict[str, Path]) -> None:
    """All images of a scene must share one size; the error names the odd file."""
    sizes = {role: tuple(t.shape[-2:]) for role, t in tensors.items()}
    first = next(iter(sizes))
    odd = next((r for r in sizes if sizes[r] != sizes[first]), None)
    if odd is not None:
        (h, w), (h0, w0) = sizes[odd], sizes[first]
        raise InputError(paths[odd], f"scene {name!r}: {odd} is {w}x{h} but {first} is {w0}x{h0}")


def _summarise(
    rows: Sequence[dict], columns: Sequence[str]
) -> dict[str, dict[str, tuple[float, float, int]]]:
    summary: dict[str, dict[str, tuple[float, float, int]]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        summary[method] = {c: report.mean_std([r.get(c, math.nan) for r in mine]) for c in columns}
    return summary


def _summary_rows(summary, columns) -> list[dict]:
    rows = []
    for method, stats in summary.items():
        row: dict[str, object] = {"method": method}
        for c in columns:
            mean, std, n = stats[c]
            row[f"{c}_mean"], row[f"{c}_std"], row[f"{c}_n"] = mean, std, n
        rows.append(row)
    return rows


def _write_summaries(out: Path, result: EvalResult, title: str, notes: Sequence[str]) -> str:
    columns = result.columns
    report.write_csv(
        out / "summary.csv",
        _summary_rows(result.summary, columns),
        ["method"] + [f"{c}_{s}" for c in columns for s in ("mean", "std", "n")],
    )
    table = report.summary_markdown(result.summary, columns)
    legend = [
        f"- **{c}** {'↑' if report.spec_for(c).higher_is_better else '↓'}: "
        f"{report.spec_for(c).description}"
        for c in columns
    ]
    text = "\n".join(
        [
            f"# {title}",
            "",
            *notes,
            "",
            table,
            "Mean ± standard deviation over scenes; the best value per column is bold.",
            "",
            *legend,
            "",
        ]
    )
    report.write_text(out / "summary.md", text)
    return table


# ----------------------------------------------------------------------------- eval


def match_fused(fused_dir: Path, names: Sequence[str]) -> dict[str, Path]:
    """Map each scene name to its fused image in ``fused_dir``.

    A fused file matches a scene when its stem is the scene name, or the scene name followed
    by ``_`` and a method tag (MEFB's ``<scene>_<method>.png``). The longest scene name wins
    when several prefixes fit.

    Raises:
        InputError: two fused files match one scene.
    """
    by_name: dict[str, Path] = {}
    known = sorted(names, key=len, reverse=True)
    for path in list_images(fused_dir):
        stem = path.stem
        scene = (
            stem if stem in names else next((n for n in known if stem.startswith(n + "_")), None)
        )
        if scene is None:
            continue
        if scene in by_name:
            raise InputError(path, f"scene {scene!r} already matched {by_name[scene].name}")
        by_name[scene] = path
    return by_name


def run_eval(
    fused_dir: Path,
    under_dir: Path,
    over_dir: Path,
    out: Path,
    gt_dir: Path | None = None,
    metrics: Sequence[str] | None = None,
    label: str | None = None,
    progress: Progress | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> EvalResult:
    """Score every fused image in ``fused_dir`` against its sources (and reference).

    Writes ``out/eval.csv`` (one row per image) and ``out/summary.md`` /
    ``out/summary.csv`` (mean ± std per metric). Temporary files that a killed run left
    in ``out`` are removed first (and logged).

    Args:
        fused_dir: fused images, named like their sources (see :func:`match_fused`).
        under_dir: under-exposed sources.
        over_dir: over-exposed sources, same stems.
        out: report folder (created).
        gt_dir: reference images, same stems; enables PSNR, SSIM and TMQI.
        metrics: metric names (None: all that apply).
        label: the method's name in the reports (default: the fused folder's name).
        progress: ``progress(items, desc=...)`` wraps the loop (e.g. ``tqdm``).
        max_pixels: the most pixels per image, checked from every file's header before
            anything is scored (None: no limit).

    Raises:
        InputError: missing folders, no fused image matching a source pair, size mismatches.
    """
    removed = io.remove_stale_temp_files(out)  # left by a run killed mid-write
    if removed:
        import logging

        logging.getLogger(__name__).info(
            "removed %d temporary file%s left by an interrupted run: %s",
            len(removed),
            "s" if len(removed) > 1 else "",
            ", ".join(p.name for p in removed),
        )
    progress = progress or (lambda items, desc=None: items)
    specs = _resolve(metrics, gt_dir is not None)
    unders = {p.stem: p for p in list_images(under_dir)}
    overs = {p.stem: p for p in list_images(over_dir)}
    gts = {p.stem: p for p in list_images(gt_dir)} if gt_dir is not None else {}
    names = sorted(set(unders) & set(overs))
    if not names:
        raise InputError(under_dir, f"no image stem is present in both it and {over_dir}")
    fused = match_fused(fused_dir, names)
    if not fused:
        raise InputError(
            fused_dir,
            f"no fused image is named like a source pair (e.g. "
            f"{names[0]}.png or {names[0]}_<method>.png)",
        )
    if gt_dir is not None:
        missing = sorted(set(fused) - set(gts))
        if missing:
            raise InputError(
                gt_dir, f"no reference for {len(missing)} scene(s): {', '.join(missing[:5])}"
            )
    label = label or fused_dir.name
    _check_headers(
        [p for name in fused for p in (unders[name], overs[name], fused[name], gts.get(name))],
        max_pixels,
    )
    rows = []
    for name in progress(sorted(fused), desc="scoring"):
        paths = {"under": unders[name], "over": overs[name], "fused": fused[name]}
        if gt_dir is not None:
            paths["gt"] = gts[name]
        tensors = {role: _load(p)[0] for role, p in paths.items()}
        _check_same_size(name, tensors, paths)
        scores = score_image(
            tensors["under"], tensors["over"], tensors["fused"], tensors.get("gt"), specs
        )
        rows.append({"scene": name, "method": label, "file": fused[name].name, **scores})
    columns = [s.name for s in specs]
    result = EvalResult(rows, _summarise(rows, columns), columns)
    out.mkdir(parents=True, exist_ok=True)
    report.write_csv(out / "eval.csv", rows, ["scene", "method", "file", *columns])
    unmatched = len(names) - len(fused)
    notes = [
        f"- fused images: `{fused_dir}` ({len(rows)} scored"
        + (f"; {unmatched} source pair(s) without a fused image" if unmatched else "")
        + ")",
        f"- sources: `{under_dir}`, `{over_dir}`"
        + (f"; references: `{gt_dir}`" if gt_dir is not None else ""),
    ]
    _write_summaries(out, result, f"textmef eval: {label}", notes)
    return result


def _resolve(metrics: Sequence[str] | None, with_reference: bool) -> list[MetricSpec]:
    try:
        return resolve_metrics(metrics, with_reference)
    except ValueError as exc:
        raise InputError(None, str(exc)) from None


# ---------------------------------------------------------------------------- bench


def select_scenes(config: BenchConfig) -> list[Scene]:
    """The scenes a bench run covers: found, split and limited as configured."""
    if config.split not in SPLITS:
        raise InputError(None, f"split must be one of {', '.join(SPLITS)}, got {config.split!r}")
    if config.stacks:
        scenes = _stack_scenes(config.data, config.references)
    else:
        if config.references is not None:
            raise InputError(
                config.references,
                "references are read from DATA_DIR/gt for "
                "triplet folders; --references is for --stacks",
            )
        scenes = [
            Scene(t.name, (t.under, t.over), t.gt)
            for t in find_triplets(config.data, require_gt=False)
        ]
    if config.split != "all":
        if not 0.0 < config.val_fraction < 1.0:
            raise InputError(None, f"val_fraction must be in (0, 1), got {config.val_fraction}")
        train, val = split_by_sequence(scenes, config.val_fraction)
        scenes = val if config.split == "val" else train
        if not scenes:
            raise InputError(config.data, f"the {config.split} split is empty")
    scenes = scenes[: config.limit] if config.limit else scenes
    _check_headers([p for s in scenes for p in (*s.frames, s.gt)], config.max_pixels)
    return [_darkest_first(s, config.max_pixels) for s in scenes] if config.stacks else scenes


def _stack_scenes(root: Path, references: Path | None) -> list[Scene]:
    """Every exposure stack under ``root``, named as make-pairs names them."""
    from textmef.data.stacks import find_stacks, list_stack_images, stack_name

    refs = {p.stem: p for p in list_images(references)} if references is not None else {}
    scenes = []
    for folder in find_stacks(root):
        frames = tuple(list_stack_images(folder))
        if len(frames) < 2:
            continue
        name = stack_name(folder.relative_to(root), root)
        if references is not None and name not in refs:
            continue  # make-pairs skipped it, or it is not in this reference set
        scenes.append(Scene(name, frames, refs.get(name)))
    if not scenes:
        raise InputError(
            root,
            "holds no exposure stack (a folder with 2+ images)"
            + (f" with a reference in {references}" if references else ""),
        )
    return scenes


def _check_headers(paths: Sequence[Path | None], max_pixels: int | None) -> None:
    """Every input's header (type, size, pixel limit) before anything is decoded."""
    from textmef.files import check_image_file

    for path in paths:
        if path is not None:
            check_image_file(path, max_pixels)


def _darkest_first(scene: Scene, max_pixels: int | None) -> Scene:
    from textmef.stack import load_frames, order_frames

    frames = load_frames(scene.frames, max_pixels)
    order, _ = order_frames(frames)
    return Scene(scene.name, tuple(scene.frames[i] for i in order), scene.gt)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_mtime_ns, st.st_size]


class _MethodFolder:
    """``fused/<method>/``: outputs plus method.json (what ran and how long each took)."""

    def __init__(self, root: Path, name: str, description: str) -> None:
        self.dir = root / "fused" / name
        self.meta_path = self.dir / "method.json"
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = _read_json(self.meta_path)
        if meta.get("description", description) != description and any(
            p.name != "method.json" for p in self.dir.iterdir()
        ):
            raise InputError(
                self.dir,
                f"holds outputs of another setup ({meta['description']});"
                f" now: {description}. Delete the folder or choose "
                "another report folder",
            )
        self.meta = {"description": description, "seconds": meta.get("seconds", {})}

    def output(self, scene: Scene, suffix: str = ".png") -> Path:
        return self.dir / f"{scene.name}{suffix}"

    def record(self, scene: str, seconds: float) -> None:
        self.meta["seconds"][scene] = seconds
        report.write_text(self.meta_path, json.dumps(self.meta, indent=1, sort_keys=True))


def _warm_up(method: Callable, frames: Sequence[torch.Tensor]) -> None:
    # Lazy initialisation (numba JIT, allocator, OpenCV tables) must not be billed to the
    # first scene: fuse a small crop once before timing.
    crop = (..., slice(0, min(64, frames[0].shape[-2])), slice(0, min(64, frames[0].shape[-1])))
    method([f[crop] for f in frames])


def _load_frames(scene: Scene) -> tuple[list[torch.Tensor], int]:
    """The scene's frames as (1, 3, H, W) tensors, darkest first, and their deepest bit depth."""
    loaded = [_load(p) for p in scene.frames]
    tensors = [t for t, _ in loaded]
    roles = _frame_roles(scene)
    _check_same_size(scene.name, dict(zip(roles, tensors)), dict(zip(roles, scene.frames)))
    return tensors, max(depth for _, depth in loaded)


def _frame_roles(scene: Scene) -> list[str]:
    """Names of the frames in reports: under/over for pairs, frame k/N for stacks."""
    if len(scene.frames) == 2:
        return ["under", "over"]
    return [f"frame {k + 1}/{len(scene.frames)}" for k in range(len(scene.frames))]


def _fuse_missing(
    config: BenchConfig,
    scenes: Sequence[Scene],
    names: Sequence[str],
    progress: Progress,
    log: Callable[[str], None],
) -> dict[str, _MethodFolder]:
    """Fuse every (method, scene) whose output is not on disk yet; time each fusion."""
    folders = {
        m: _MethodFolder(config.out, m, method_description(m, config.method_options)) for m in names
    }
    for name in names:
        folder = folders[name]
        todo = [s for s in scenes if not folder.output(s).is_file()]
        if len(todo) < len(scenes):
            log(f"{name}: reusing {len(scenes) - len(todo)} fused image(s) in {folder.dir}")
        if not todo:
            continue
        method = build_method(name, config.method_options)
        warmed = False
        for scene in progress(todo, desc=f"fusing with {name}"):
            frames, depth = _load_frames(scene)
            if not warmed:
                _warm_up(method, frames)
                warmed = True
            start = time.perf_counter()
            with torch.no_grad():
                fused = method(frames)
            seconds = time.perf_counter() - start
            io.write_image(folder.output(scene), io.from_tensor(fused), depth)
            folder.record(scene.name, seconds)
    return folders


def _score_all(
    config: BenchConfig,
    scenes: Sequence[Scene],
    names: Sequence[str],
    folders: dict[str, _MethodFolder],
    specs: Sequence[MetricSpec],
    progress: Progress,
) -> list[dict]:
    cache_path = config.out / "scores.json"
    cache = _read_json(cache_path)
    wanted = [s.name for s in specs]
    rows, scored = [], 0
    jobs = [(scene, name) for scene in scenes for name in names]
    sources: tuple[Scene, list[torch.Tensor], torch.Tensor | None] | None = None
    for scene, name in progress(jobs, desc="scoring"):
        fused_path = folders[name].output(scene)
        key = f"{name}/{scene.name}"
        entry = cache.get(key, {})
        stamp = _stamp(fused_path)
        scores = entry.get("scores", {})
        if entry.get("stamp") != stamp or any(m not in scores for m in wanted):
            if sources is None or sources[0] is not scene:  # jobs are scene-major
                frames, _ = _load_frames(scene)
                sources = (scene, frames, _load(scene.gt)[0] if scene.gt else None)
            _, frames, gt = sources
            fused = _load(fused_path)[0]
            checked = {"darkest frame": frames[0], "fused": fused}
            paths = {"darkest frame": scene.frames[0], "fused": fused_path}
            if gt is not None:
                checked["gt"], paths["gt"] = gt, scene.gt
            _check_same_size(scene.name, checked, paths)
            # Two-source metrics see the darkest and brightest frame; MEF-SSIM the whole stack.
            stack = torch.cat(frames) if len(frames) > 2 else None
            scores = {**scores, **score_image(frames[0], frames[-1], fused, gt, specs, stack=stack)}
            cache[key] = {"stamp": stamp, "scores": scores}
            scored += 1
            if scored % 8 == 0:  # checkpoint the cache now and then, not per image
                report.write_text(cache_path, json.dumps(cache, indent=0, sort_keys=True))
        seconds = folders[name].meta["seconds"].get(scene.name, math.nan)
        rows.append(
            {
                "scene": scene.name,
                "method": name,
                report.TIME_SPEC.name: seconds,
                **{m: scores.get(m, math.nan) for m in wanted},
            }
        )
    if scored:
        report.write_text(cache_path, json.dumps(cache, indent=0, sort_keys=True))
    return rows


def _cpu_name() -> str:
    # platform.processor() is empty on most Linux systems; /proc/cpuinfo names the model.
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _environment() -> str:
    threads = torch.get_num_threads()
    return (
        f"{_cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} with "
        f"{threads} thread(s)"
    )


def run_bench(
    config: BenchConfig, progress: Progress | None = None, log: Callable[[str], None] = print
) -> EvalResult:
    """Fuse every scene with every method, score, and write the report folder.

    Args:
        config: what to run.
        progress: ``progress(items, desc=...)`` wraps loops (e.g. ``tqdm``); default none.
        log: receives one-line notes (reused outputs, skipped methods, temporary files
            of a killed run that were removed).

    Returns:
        Per-(method, scene) rows and the per-method summary; ``skipped`` maps methods that
        cannot run here to the reason.

    Raises:
        InputError: bad data folder, unknown method or metric, no runnable method.
    """
    # A run killed mid-write (SIGKILL) leaves temporary files behind: remove them from the
    # report folder and the folders of fused images, plots and grids.
    out = config.out
    written = [out, out / "plots", out / "grids"]
    written += sorted(p for p in (out / "fused").glob("*") if p.is_dir())
    removed = [p for folder in written for p in io.remove_stale_temp_files(folder)]
    if removed:
        log(
            f"removed {len(removed)} temporary file{'s' if len(removed) > 1 else ''} left by "
            f"an interrupted run: {', '.join(p.relative_to(out).as_posix() for p in removed)}"
        )
    progress = progress or (lambda items, desc=None: items)
    known = list_methods()
    unknown = [m for m in config.methods if m not in known]
    if unknown or not config.methods:
        raise InputError(
            None,
            f"unknown method(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(known)}",
        )
    scenes = select_scenes(config)
    with_gt = all(s.gt is not None for s in scenes)
    specs = _resolve(config.metrics, with_gt)
    skipped = {m: r for m in config.methods if (r := unavailable_reason(m))}
    for method, reason in skipped.items():
        log(f"skipping {method}: {reason}")
    names = [m for m in config.methods if m not in skipped]
    if not names:
        raise InputError(None, "none of the requested methods can run here")
    config.out.mkdir(parents=True, exist_ok=True)

    folders = _fuse_missing(config, scenes, names, progress, log)
    rows = _score_all(config, scenes, names, folders, specs, progress)
    columns = [report.TIME_SPEC.name, *(s.name for s in specs)]
    result = EvalResult(rows, _summarise(rows, columns), columns, skipped)

    report.write_csv(config.out / "scores.csv", rows, ["scene", "method", *columns])
    notes = _bench_notes(config, scenes, names, skipped, with_gt)
    table = _write_summaries(config.out, result, "textmef bench", notes)
    charts = report.write_bar_charts(config.out / "plots", result.summary, columns)
    grids = _write_grids(config, scenes, names, folders, progress)
    _write_page(config, result, notes, table, charts, grids)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    report.write_text(
        config.out / "bench.json",
        json.dumps(
            {
                "config": settings,
                "scenes": [s.name for s in scenes],
                "skipped": skipped,
                "methods": {m: folders[m].meta["description"] for m in names},
                "environment": _environment(),
            },
            indent=1,
            default=str,
        ),
    )
    return result


def _bench_notes(config: BenchConfig, scenes, names, skipped, with_gt) -> list[str]:
    split = (
        "all scenes"
        if config.split == "all"
        else (
            f"the {config.split} split (val_fraction {config.val_fraction}, by name hash, as in "
            "training)"
        )
    )
    kind = "exposure stacks, all frames fused" if config.stacks else "pairs"
    notes = [
        f"- data: `{config.data}` ({kind}), {split}: {len(scenes)} scene(s)"
        + ("" if with_gt else " (no references: PSNR, SSIM and TMQI not computed)"),
        f"- machine: {_environment()}",
        "- s/image: wall-clock seconds of the fusion call alone (images already in "
        "memory; each method warmed up once on a 64 px crop first)",
    ]
    notes += [f"- {m}: {method_description(m, config.method_options)}" for m in names]
    notes += [f"- {m}: not run, {reason}" for m, reason in skipped.items()]
    return notes


def _write_grids(config: BenchConfig, scenes, names, folders, progress) -> list[tuple]:
    from textmef.bench.report import render_grid

    grid_dir = config.out / "grids"
    grid_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for scene in progress(scenes, desc="grids"):
        path = grid_dir / f"{scene.name}.jpg"
        parts = list(zip(_frame_roles(scene), scene.frames))
        parts += [(m, folders[m].output(scene)) for m in names]
        if scene.gt is not None:
            parts.append(("reference", scene.gt))
        newest = max(p.stat().st_mtime_ns for _, p in parts)
        if not path.is_file() or path.stat().st_mtime_ns < newest:
            grid = render_grid([(c, io.read_image(p).pixels) for c, p in parts], config.grid_height)
            io.write_image(path, grid.astype(np.float32) / 255.0, 8)
        written.append((scene.name, path))
    return written


def _write_page(config: BenchConfig, result: EvalResult, notes, table, charts, grids) -> None:
    import html

    columns = result.columns
    bold = {c: report.best_methods(result.summary, c) for c in columns}
    summary_rows = [
        {
            "method": m,
            **{c: report.format_cell(*s[c][:2], report.spec_for(c).digits, False) for c in columns},
        }
        for m, s in result.summary.items()
    ]
    intro = "<ul>" + "".join(f"<li>{html.escape(n.lstrip('- '))}</li>" for n in notes) + "</ul>"
    scene_tables = []
    for name, grid in grids:
        rows = [r for r in result.rows if r["scene"] == name]
        shown = [{"method": r["method"], **{c: _short(r.get(c), c) for c in columns}} for r in rows]
        scene_tables.append((name, grid, report.table_html(shown, columns)))
    report.write_html(
        config.out / "index.html",
        "textmef bench",
        intro,
        report.table_html(summary_rows, columns, bold),
        charts,
        scene_tables,
    )


def _short(value, column: str) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{report.spec_for(column).digits}f}"
