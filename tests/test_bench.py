"""textmef eval / textmef bench: report contents, resuming, splits, errors, CLI."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from textmef import io
from textmef import methods as bench_methods
from textmef.bench import report
from textmef.bench.runner import BenchConfig, match_fused, run_bench, run_eval, select_scenes
from textmef.bench.scoring import score_image
from textmef.cli import main
from textmef.data.triplets import find_triplets, split_by_sequence
from textmef.errors import InputError
from textmef.methods import MethodOptions, build_method, method_description

# TMQI's five scales of 11x11 windows need sides of at least 161 pixels.
SIZE = (168, 176)


def scene(seed: int, size=SIZE) -> np.ndarray:
    """A smooth colourful scene with some edges, float32 HxWx3 in [0, 1]."""
    h, w = size
    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    phase = rng.random(3) * 6
    base = np.stack(
        [0.5 + 0.4 * np.sin(6 * i + phase[c]) * np.cos(5 * j + phase[c]) for c in range(3)], axis=-1
    )
    base[h // 3 : h // 2, w // 4 : w // 2] = rng.random(3)
    return np.clip(base, 0, 1).astype(np.float32)


def make_dataset(root: Path, count: int = 3, with_gt: bool = True) -> Path:
    for role in ("under", "over", "gt") if with_gt else ("under", "over"):
        (root / role).mkdir(parents=True, exist_ok=True)
    for k in range(count):
        s = scene(k)
        io.write_image(root / "under" / f"scene{k}.png", s * 0.25, 8)
        io.write_image(root / "over" / f"scene{k}.png", np.clip(s * 2.2, 0, 1), 8)
        if with_gt:
            io.write_image(root / "gt" / f"scene{k}.png", s, 8)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("bench-data"))


@pytest.fixture(scope="module")
def bench_run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "report"
    config = BenchConfig(data=dataset, out=out, methods=("textmef", "mertens", "mean"))
    return config, run_bench(config, log=lambda line: None)


def _csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


# ---- bench --------------------------------------------------------------------------------


def test_bench_writes_scores_summary_plots_grids_and_page(bench_run):
    config, result = bench_run
    out = config.out
    rows = _csv(out / "scores.csv")
    assert len(rows) == 9
    assert {r["method"] for r in rows} == {"textmef", "mertens", "mean"}
    for column in (
        "s/image",
        "PSNR",
        "SSIM",
        "TMQI",
        "MEF-SSIM",
        "QABF",
        "PSNR_MEFB",
        "EN",
        "SD",
        "SF",
        "AG",
        "EI",
    ):
        assert all(math.isfinite(float(r[column])) for r in rows), column
    summary = (out / "summary.md").read_text()
    assert "| method |" in summary and "**" in summary
    assert len(list((out / "plots").glob("*.png"))) == 12
    grids = sorted((out / "grids").glob("*.jpg"))
    assert [g.stem for g in grids] == ["scene0", "scene1", "scene2"]
    # inputs, three methods and the reference side by side: wider than five thumbnails
    assert io.read_image(grids[0]).pixels.shape[1] > 5 * 240 * SIZE[1] / SIZE[0]
    page = (out / "index.html").read_text()
    assert all(f"grids/{g.name}" in page for g in grids)
    assert "plots/PSNR.png" in page
    for method in ("textmef", "mertens", "mean"):
        assert len(list((out / "fused" / method).glob("*.png"))) == 3


def test_bench_scores_equal_metrics_computed_directly(bench_run, dataset):
    config, result = bench_run
    row = next(r for r in result.rows if r["method"] == "mertens" and r["scene"] == "scene1")
    load = [
        io.to_tensor(io.read_image(p).pixels)
        for p in (
            dataset / "under/scene1.png",
            dataset / "over/scene1.png",
            config.out / "fused/mertens/scene1.png",
            dataset / "gt/scene1.png",
        )
    ]
    direct = score_image(*load)
    for name, value in direct.items():
        assert row[name] == pytest.approx(value, rel=1e-12), name


def test_bench_summary_is_mean_and_std_over_scenes(bench_run):
    _, result = bench_run
    values = [r["PSNR"] for r in result.rows if r["method"] == "mean"]
    mean, std, n = result.summary["mean"]["PSNR"]
    assert (mean, std, n) == pytest.approx((np.mean(values), np.std(values), 3))


def test_bench_rerun_reuses_fused_images_and_scores(bench_run, monkeypatch):
    config, first = bench_run
    stamps = {p: p.stat().st_mtime_ns for p in (config.out / "fused").rglob("*.png")}

    def no_build(*args, **kwargs):
        raise AssertionError("a method was rebuilt although every output exists")

    def no_score(*args, **kwargs):
        raise AssertionError("an image was re-scored although its file did not change")

    monkeypatch.setattr("textmef.bench.runner.build_method", no_build)
    monkeypatch.setattr("textmef.bench.runner.score_image", no_score)
    lines = []
    again = run_bench(config, log=lines.append)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert [(r["scene"], r["method"], r["PSNR"]) for r in again.rows] == [
        (r["scene"], r["method"], r["PSNR"]) for r in first.rows
    ]
    assert any("reusing 3 fused image(s)" in line for line in lines)


def test_bench_fuses_only_what_is_missing_after_an_interruption(dataset, tmp_path):
    config = BenchConfig(
        data=dataset, out=tmp_path / "r", methods=("mean",), metrics=("PSNR", "EN")
    )
    run_bench(config, log=lambda line: None)
    victim = tmp_path / "r/fused/mean/scene1.png"
    kept = tmp_path / "r/fused/mean/scene0.png"
    before = kept.stat().st_mtime_ns
    victim.unlink()
    result = run_bench(config, log=lambda line: None)
    assert victim.is_file() and kept.stat().st_mtime_ns == before
    assert len(result.rows) == 3


def test_bench_refuses_outputs_from_another_setup(dataset, tmp_path):
    config = BenchConfig(data=dataset, out=tmp_path / "r", methods=("mean",), metrics=("EN",))
    run_bench(config, log=lambda line: None)
    meta = tmp_path / "r/fused/mean/method.json"
    data = json.loads(meta.read_text())
    data["description"] = "something else"
    meta.write_text(json.dumps(data))
    with pytest.raises(InputError, match="another setup"):
        run_bench(config, log=lambda line: None)


def test_bench_skips_a_method_that_cannot_run_and_says_why(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr("textmef.baselines.enfuse.enfuse_available", lambda *a, **k: False)
    lines = []
    config = BenchConfig(
        data=dataset, out=tmp_path / "r", methods=("enfuse", "mean"), metrics=("EN",)
    )
    result = run_bench(config, log=lines.append)
    assert "enfuse" in result.skipped and "not installed" in result.skipped["enfuse"]
    assert any(line.startswith("skipping enfuse") for line in lines)
    assert "enfuse: not run" in (tmp_path / "r/summary.md").read_text()
    assert {r["method"] for r in result.rows} == {"mean"}


def test_bench_refuses_unknown_methods_and_metrics(dataset, tmp_path):
    with pytest.raises(InputError, match="unknown method"):
        run_bench(BenchConfig(data=dataset, out=tmp_path / "a", methods=("magic",)))
    with pytest.raises(InputError, match="unknown metric"):
        run_bench(
            BenchConfig(data=dataset, out=tmp_path / "b", methods=("mean",), metrics=("NOPE",))
        )


def test_bench_without_references_reports_no_reference_metrics(tmp_path):
    data = make_dataset(tmp_path / "pairs", count=2, with_gt=False)
    result = run_bench(
        BenchConfig(data=data, out=tmp_path / "r", methods=("mean",)), log=lambda line: None
    )
    assert "PSNR" not in result.columns and "TMQI" not in result.columns
    assert "MEF-SSIM" in result.columns and "QABF" in result.columns
    with pytest.raises(InputError, match="need reference"):
        run_bench(BenchConfig(data=data, out=tmp_path / "r2", methods=("mean",), metrics=("PSNR",)))


def test_bench_val_split_is_the_training_split(tmp_path):
    data = make_dataset(tmp_path / "d", count=12)
    config = BenchConfig(data=data, out=tmp_path / "r", split="val", val_fraction=0.3)
    _, val = split_by_sequence(find_triplets(data), 0.3)
    assert [s.name for s in select_scenes(config)] == [t.name for t in val]
    train = select_scenes(
        BenchConfig(data=data, out=tmp_path / "r", split="train", val_fraction=0.3)
    )
    assert {s.name for s in train}.isdisjoint(t.name for t in val)
    assert len(select_scenes(BenchConfig(data=data, out=tmp_path, limit=2))) == 2


def test_bench_names_the_file_whose_size_differs(tmp_path):
    data = make_dataset(tmp_path / "d", count=1)
    io.write_image(data / "over/scene0.png", scene(0, (170, 176)), 8)
    with pytest.raises(InputError, match=r"over.*scene0.png|scene0.*over"):
        run_bench(
            BenchConfig(data=data, out=tmp_path / "r", methods=("mean",)), log=lambda line: None
        )


def test_methods_take_frames_darkest_first_and_return_one_image(dataset):
    under = io.to_tensor(io.read_image(dataset / "under/scene0.png").pixels)
    over = io.to_tensor(io.read_image(dataset / "over/scene0.png").pixels)
    for name in ("textmef", "textmef-progressive", "mertens", "mean"):
        method = build_method(name, MethodOptions(tile=64, overlap=16))
        fused = method([under, over])
        assert fused.shape == under.shape and fused.dtype == torch.float32, name
        assert 0.0 <= float(fused.min()) and float(fused.max()) <= 1.0, name


def test_network_method_equals_the_public_fuse_api(dataset):
    from textmef.api import fuse

    under = io.to_tensor(io.read_image(dataset / "under/scene0.png").pixels)
    over = io.to_tensor(io.read_image(dataset / "over/scene0.png").pixels)
    method = build_method("textmef", MethodOptions(tile=96, overlap=32))
    expected = fuse(under, over, tile=96, overlap=32)
    assert torch.allclose(method([under, over]), expected, atol=1e-6)


def test_network_method_with_a_work_size_is_the_guided_path_of_the_api(dataset):
    from textmef.api import fuse

    under = io.to_tensor(io.read_image(dataset / "under/scene0.png").pixels)
    over = io.to_tensor(io.read_image(dataset / "over/scene0.png").pixels)
    assert under.shape[-2] * under.shape[-1] > 64 * 64
    guided = build_method("textmef", MethodOptions(work_size=64))([under, over])
    assert torch.allclose(guided, fuse(under, over, work_size=64), atol=1e-6)
    full = build_method("textmef", MethodOptions())([under, over])
    assert torch.allclose(full, fuse(under, over, full_res=True), atol=1e-6)
    assert not torch.allclose(guided, full, atol=1e-3)
    assert "guided path above 64 x 64" in method_description("textmef", MethodOptions(work_size=64))


def test_unavailable_reason_for_unknown_method():
    assert "unknown method" in bench_methods.unavailable_reason("nope")
    assert bench_methods.unavailable_reason("mean") is None


# ---- report helpers -----------------------------------------------------------------------


def test_best_value_per_column_is_bold_and_time_counts_lower_as_better():
    summary = {
        "a": {"PSNR": (20.0, 1.0, 3), "s/image": (2.0, 0.1, 3)},
        "b": {"PSNR": (25.0, 2.0, 3), "s/image": (5.0, 0.2, 3)},
    }
    table = report.summary_markdown(summary, ["PSNR", "s/image"])
    lines = table.splitlines()
    assert lines[0] == "| method | PSNR ↑ | s/image ↓ |"
    assert lines[2] == "| a | 20.00 ± 1.00 | **2.00 ± 0.10** |"
    assert lines[3] == "| b | **25.00 ± 2.00** | 5.00 ± 0.20 |"


def test_ties_at_the_shown_precision_are_all_bold():
    summary = {"a": {"SSIM": (0.91231, 0.0, 1)}, "b": {"SSIM": (0.91229, 0.0, 1)}}
    assert report.best_methods(summary, "SSIM") == {"a", "b"}


def test_mean_std_ignores_missing_values():
    assert report.mean_std([1.0, math.nan, 3.0]) == (2.0, 1.0, 2)
    mean, std, n = report.mean_std([])
    assert math.isnan(mean) and n == 0


# ---- eval ---------------------------------------------------------------------------------


def test_eval_scores_every_fused_image_and_writes_csv_and_summary(bench_run, dataset, tmp_path):
    config, bench = bench_run
    result = run_eval(
        config.out / "fused/mertens",
        dataset / "under",
        dataset / "over",
        tmp_path / "eval",
        gt_dir=dataset / "gt",
    )
    rows = _csv(tmp_path / "eval/eval.csv")
    assert [r["scene"] for r in rows] == ["scene0", "scene1", "scene2"]
    bench_rows = {r["scene"]: r for r in bench.rows if r["method"] == "mertens"}
    for row in rows:
        for metric in ("PSNR", "TMQI", "QABF", "MEF-SSIM", "EN"):
            assert float(row[metric]) == pytest.approx(bench_rows[row["scene"]][metric], rel=1e-12)
    summary = (tmp_path / "eval/summary.md").read_text()
    assert "mertens" in summary and "±" in summary
    assert result.summary["mertens"]["PSNR"][2] == 3


def test_eval_accepts_mefb_style_names_and_skips_reference_metrics_without_gt(dataset, tmp_path):
    fused = tmp_path / "fused"
    fused.mkdir()
    for k in range(2):
        io.write_image(fused / f"scene{k}_mean.png", scene(k) * 0.7, 8)
    result = run_eval(fused, dataset / "under", dataset / "over", tmp_path / "e", label="mine")
    assert [r["scene"] for r in result.rows] == ["scene0", "scene1"]
    assert "PSNR" not in result.columns and "QABF" in result.columns
    assert "1 source pair(s) without a fused image" in (tmp_path / "e/summary.md").read_text()


def test_match_fused_prefers_the_longest_scene_name(tmp_path):
    for stem in ("a_b_x", "a_y"):
        io.write_image(tmp_path / f"{stem}.png", np.zeros((4, 4, 3), np.float32), 8)
    matched = match_fused(tmp_path, ["a", "a_b"])
    assert matched == {"a_b": tmp_path / "a_b_x.png", "a": tmp_path / "a_y.png"}


def test_eval_errors_name_the_folder(dataset, tmp_path):
    empty = tmp_path / "fused"
    empty.mkdir()
    io.write_image(empty / "unrelated.png", np.zeros((8, 8, 3), np.float32), 8)
    with pytest.raises(InputError, match="no fused image is named like a source pair"):
        run_eval(empty, dataset / "under", dataset / "over", tmp_path / "e")
    with pytest.raises(InputError, match="no such folder"):
        run_eval(empty, tmp_path / "missing", dataset / "over", tmp_path / "e")


# ---- CLI ----------------------------------------------------------------------------------


def test_cli_bench_and_eval_print_the_summary_table(dataset, tmp_path, capsys):
    rc = main(
        [
            "bench",
            str(dataset),
            "-o",
            str(tmp_path / "r"),
            "--methods",
            "mean,mertens",
            "--metrics",
            "PSNR,QABF",
            "--threads",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "| method | s/image ↓ | PSNR ↑ | QABF ↑ |" in out
    assert (tmp_path / "r/index.html").is_file()
    rc = main(
        [
            "eval",
            str(tmp_path / "r/fused/mean"),
            "--under",
            str(dataset / "under"),
            "--over",
            str(dataset / "over"),
            "--gt",
            str(dataset / "gt"),
            "-o",
            str(tmp_path / "e"),
            "--metrics",
            "SSIM,EN",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "| method | SSIM ↑ | EN ↑ |" in out and "| mean |" in out


def test_cli_bench_reports_bad_input_in_one_line(tmp_path, capsys):
    rc = main(["bench", str(tmp_path / "nothing"), "-o", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("textmef: error:") and "no such data folder" in err
    rc = main(["bench", str(tmp_path), "-o", str(tmp_path / "r"), "--methods", "x"])
    assert rc == 2 and "unknown method" in capsys.readouterr().err


# ---- faults -------------------------------------------------------------------------------


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_bench_removes_temporary_files_of_a_killed_run(dataset, tmp_path):
    config = BenchConfig(data=dataset, out=tmp_path / "r", methods=("mean",), metrics=("EN",))
    run_bench(config, log=lambda line: None)
    pid = dead_pid()
    stale = [
        config.out / f".scores.json.{pid}-{'a' * 32}.tmp",
        config.out / "plots" / f".EN.png.{pid}-{'b' * 32}.tmp",
        config.out / "grids" / f".scene0.jpg.{pid}-{'c' * 32}.tmp",
        config.out / "fused" / "mean" / f".scene1.png.{pid}-{'d' * 32}.tmp",
    ]
    live = config.out / "fused" / "mean" / f".scene2.png.{os.getpid()}-{'e' * 32}.tmp"
    for path in (*stale, live):
        path.write_bytes(b"half")
    lines = []
    run_bench(config, log=lines.append)
    assert not any(p.exists() for p in stale) and live.exists()
    names = ", ".join(p.relative_to(config.out).as_posix() for p in stale)
    assert f"removed 4 temporary files left by an interrupted run: {names}" in lines


def test_eval_removes_temporary_files_of_a_killed_run(dataset, tmp_path, caplog):
    fused = tmp_path / "fused"
    fused.mkdir()
    io.write_image(fused / "scene0.png", scene(0) * 0.7, 8)
    out = tmp_path / "e"
    out.mkdir()
    stale = out / f".eval.csv.{dead_pid()}-{'a' * 32}.tmp"
    live = out / f".summary.md.{os.getpid()}-{'b' * 32}.tmp"
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    caplog.set_level(logging.INFO, logger="textmef")
    run_eval(fused, dataset / "under", dataset / "over", out, metrics=("EN",))
    assert not stale.exists() and live.exists()
    assert f"removed 1 temporary file left by an interrupted run: {stale.name}" in caplog.messages
