"""Stacks of N >= 2 exposures: ordering, fusion strategies, the fuse CLI and bench --stacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from textmef import io
from textmef.api import load_model
from textmef.bench.runner import BenchConfig, run_bench, select_scenes
from textmef.cli import main
from textmef.errors import InputError
from textmef.metrics import mef_ssim
from textmef.stack import fuse_frames, fuse_stack, load_frames, order_frames

GAINS = (0.25, 0.6, 1.4, 3.0)  # darkest to brightest


def scene(size=(168, 176), seed=0) -> np.ndarray:
    h, w = size
    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    base = np.stack([0.5 + 0.4 * np.sin(7 * i + c) * np.cos(5 * j - c) for c in range(3)], -1)
    base[h // 4 : h // 2, w // 3 : w // 2] = rng.random(3)
    return np.clip(base, 0, 1).astype(np.float32)


def write_stack(folder, gains=GAINS, names=None, seed=0, size=(168, 176), bit_depths=None):
    folder.mkdir(parents=True, exist_ok=True)
    base = scene(size, seed)
    names = names or [f"{k:02d}.png" for k in range(len(gains))]
    bit_depths = bit_depths or [8] * len(gains)
    return [
        io.write_image(folder / n, np.clip(base * g, 0, 1), d)
        for n, g, d in zip(names, gains, bit_depths)
    ]


@pytest.fixture(scope="module")
def model():
    return load_model()


# ---- ordering and strategies ---------------------------------------------------------------


def test_frames_are_ordered_darkest_first_whatever_the_file_order(tmp_path):
    paths = write_stack(tmp_path, gains=(1.4, 0.25, 3.0, 0.6))
    order, how = order_frames(load_frames(paths))
    assert order == [1, 3, 0, 2] and how == "luminance"


def _recording_fusion(calls):
    def fuse(darker, brighter):
        calls.append((round(float(darker.mean()), 6), round(float(brighter.mean()), 6)))
        return (darker + brighter) / 2

    return fuse


def test_progressive_fuses_each_frame_into_the_running_result_in_exposure_order():
    frames = [torch.full((1, 3, 4, 4), v) for v in (0.1, 0.2, 0.4, 0.8)]
    calls = []
    fused = fuse_frames(frames, _recording_fusion(calls), "progressive")
    assert calls == [(0.1, 0.2), (0.15, 0.4), (0.275, 0.8)]
    assert float(fused.mean()) == pytest.approx(0.5375)


def test_extremes_fuses_only_the_darkest_and_the_brightest():
    frames = [torch.full((1, 3, 4, 4), v) for v in (0.1, 0.2, 0.4, 0.8)]
    calls = []
    fuse_frames(frames, _recording_fusion(calls), "extremes")
    assert calls == [(0.1, 0.8)]


def test_two_frames_are_one_pass_with_either_strategy():
    frames = [torch.full((1, 3, 4, 4), v) for v in (0.1, 0.9)]
    for strategy in ("progressive", "extremes"):
        calls = []
        fuse_frames(frames, _recording_fusion(calls), strategy)
        assert calls == [(0.1, 0.9)]


def test_bad_strategy_and_single_frame_are_clear_errors():
    frames = [torch.zeros(1, 3, 4, 4)] * 2
    with pytest.raises(InputError, match="unknown stack strategy"):
        fuse_frames(frames, _recording_fusion([]), "magic")
    with pytest.raises(InputError, match="at least 2"):
        fuse_frames(frames[:1], _recording_fusion([]), "extremes")


# ---- fuse_stack with the packaged network ------------------------------------------------


def test_fuse_stack_reports_order_used_frames_and_the_deepest_bit_depth(tmp_path, model):
    paths = write_stack(tmp_path, gains=(3.0, 0.25, 0.6), bit_depths=[8, 16, 8])
    result = fuse_stack(paths, model, strategy="progressive")
    assert result.order == [1, 2, 0] and result.used == [1, 2, 0]
    assert result.bit_depth == 16 and result.image.shape == (168, 176, 3)
    assert result.misalignment_px is not None and result.misalignment_px < 1.0
    extremes = fuse_stack(paths, model, strategy="extremes")
    assert extremes.used == [1, 0]
    assert not np.array_equal(extremes.image, result.image)


def test_fuse_stack_of_two_equals_the_pair_api_in_either_order(tmp_path, model):
    from textmef.api import fuse

    under, over = write_stack(tmp_path, gains=(0.25, 3.0))
    expected = fuse(under, over, model=model)
    for paths in ([under, over], [over, under]):
        assert np.allclose(fuse_stack(paths, model).image, expected, atol=1e-6)


def test_fuse_stack_names_the_frame_of_another_size(tmp_path, model):
    paths = write_stack(tmp_path, gains=(0.25, 3.0))
    odd = write_stack(tmp_path / "odd", gains=(1.0,), size=(160, 176))[0]
    with pytest.raises(InputError, match=r"00.png.*176x160|176x160"):
        fuse_stack([*paths, odd], model)


# ---- CLI -------------------------------------------------------------------------------------


def test_cli_fuses_three_frames_given_in_any_order(tmp_path, capsys):
    paths = write_stack(tmp_path / "s", gains=(1.4, 0.25, 3.0), names=["b.png", "a.png", "c.png"])
    out = tmp_path / "out.png"
    assert main(["fuse", *map(str, paths), "-o", str(out), "--strategy", "progressive"]) == 0
    printed = capsys.readouterr().out
    assert "a.png < b.png < c.png" in printed and "strategy progressive" in printed
    assert io.read_image(out).pixels.shape == (168, 176, 3)


def test_cli_swaps_an_over_given_first(tmp_path, capsys):
    under, over = write_stack(tmp_path / "s", gains=(0.25, 3.0))
    first, second = tmp_path / "1.png", tmp_path / "2.png"
    assert main(["fuse", str(under), str(over), "-o", str(first)]) == 0
    assert main(["fuse", str(over), str(under), "-o", str(second)]) == 0
    assert "01.png < 00.png" not in capsys.readouterr().out
    assert np.array_equal(io.read_image(first).pixels, io.read_image(second).pixels)


def test_cli_needs_two_images(tmp_path, capsys):
    path = write_stack(tmp_path, gains=(0.5,))[0]
    assert main(["fuse", str(path), "-o", str(tmp_path / "o.png")]) == 2
    assert "two or more images" in capsys.readouterr().err


# ---- bench --stacks --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    root = tmp_path_factory.mktemp("stacks")
    refs = root.parent / (root.name + "-refs")
    refs.mkdir()
    for k, name in enumerate(("alpha", "beta")):
        write_stack(root / "group" / name, gains=(1.4, 0.25, 3.0), seed=k)
        io.write_image(refs / f"group_{name}.png", scene(seed=k), 8)
    return root, refs


def test_bench_stacks_fuses_every_frame_and_scores_mef_ssim_against_the_stack(stacks, tmp_path):
    root, refs = stacks
    config = BenchConfig(
        data=root,
        out=tmp_path / "r",
        stacks=True,
        references=refs,
        methods=("mean", "textmef-progressive", "textmef-extremes"),
        metrics=("PSNR", "MEF-SSIM", "QABF"),
    )
    scenes = select_scenes(config)
    assert [s.name for s in scenes] == ["group_alpha", "group_beta"]
    assert [p.name for p in scenes[0].frames] == ["01.png", "00.png", "02.png"]
    result = run_bench(config, log=lambda line: None)
    row = next(r for r in result.rows if r["method"] == "mean" and r["scene"] == "group_alpha")
    frames = [io.to_tensor(io.read_image(p).pixels) for p in scenes[0].frames]
    fused = io.to_tensor(io.read_image(tmp_path / "r/fused/mean/group_alpha.png").pixels)
    assert row["MEF-SSIM"] == pytest.approx(float(mef_ssim(torch.cat(frames), fused[0])), rel=1e-12)
    assert np.allclose(fused, torch.stack(frames).mean(0), atol=1 / 255)
    grid = io.read_image(tmp_path / "r/grids/group_alpha.jpg").pixels
    assert grid.shape[1] > 7 * 200  # 3 frames, 3 methods, the reference
    assert "exposure stacks" in (tmp_path / "r/summary.md").read_text()


def test_bench_stacks_keeps_only_stacks_with_a_reference(stacks, tmp_path):
    root, refs = stacks
    (refs / "group_beta.png").rename(tmp_path / "moved.png")
    try:
        scenes = select_scenes(BenchConfig(data=root, out=tmp_path, stacks=True, references=refs))
    finally:
        (tmp_path / "moved.png").rename(refs / "group_beta.png")
    assert [s.name for s in scenes] == ["group_alpha"]
    no_refs = select_scenes(BenchConfig(data=root, out=tmp_path, stacks=True))
    assert [s.gt for s in no_refs] == [None, None]


# ---- hand-held pairs ----------------------------------------------------------------------


def textured_scene(size=(240, 320), seed=3) -> np.ndarray:
    """Edges at many scales, so that registration has something to lock on to."""
    import cv2

    h, w = size
    rng = np.random.default_rng(seed)
    noise = cv2.resize(
        rng.random((h // 8, w // 8, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC
    )
    base = 0.3 + 0.4 * noise
    for _ in range(25):
        y, x = int(rng.integers(0, h - 30)), int(rng.integers(0, w - 30))
        base[y : y + int(rng.integers(8, 30)), x : x + int(rng.integers(8, 30))] = rng.random(3)
    return np.clip(base, 0, 1).astype(np.float32)


def write_handheld_pair(folder, shift=(6.0, -4.0)):
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    base = textured_scene()
    h, w = base.shape[:2]
    moved = cv2.warpAffine(
        base,
        np.float32([[1, 0, shift[0]], [0, 1, shift[1]]]),
        (w, h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )
    under = io.write_image(folder / "under.png", base * 0.35, 8)
    over = io.write_image(folder / "over.png", np.clip(moved * 2.2, 0, 1), 8)
    return under, over


def test_cli_warns_about_a_misaligned_pair_and_aligns_it_on_request(tmp_path, capsys, caplog):
    under, over = write_handheld_pair(tmp_path / "p")
    plain, aligned = tmp_path / "plain.png", tmp_path / "aligned.png"
    assert main(["fuse", str(under), str(over), "-o", str(plain)]) == 0
    assert "look misaligned by about" in caplog.text and "--align" in caplog.text
    caplog.clear()
    assert main(["fuse", str(under), str(over), "-o", str(aligned), "--align"]) == 0
    assert "misaligned" not in caplog.text
    printed = capsys.readouterr().out
    assert "over.png: shift" in printed
    h, w = io.read_image(aligned).pixels.shape[:2]
    # cropped to the common area: about the shift smaller, not more
    assert 240 - 6 <= h <= 240 - 4 and 320 - 8 <= w <= 320 - 6


def test_make_pairs_align_crops_every_output_and_records_the_motion(tmp_path):
    import json

    from textmef.data.stacks import PairOptions, make_pairs

    under, over = write_handheld_pair(tmp_path / "stacks" / "walk")
    manifest = make_pairs(
        tmp_path / "stacks", tmp_path / "pairs", PairOptions(reference="mertens", align=True)
    )
    entry = manifest["stacks"][0]
    assert entry["alignment"]["reference"] in ("under.png", "over.png")
    assert "shift" in next(iter(entry["alignment"]["motions"].values()))
    shapes = {
        io.read_image(tmp_path / "pairs" / rel).pixels.shape for rel in entry["outputs"].values()
    }
    assert len(shapes) == 1 and next(iter(shapes))[0] < 240
    assert json.loads((tmp_path / "pairs/manifest.json").read_text())["options"]["align"]
