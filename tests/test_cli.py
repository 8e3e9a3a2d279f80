"""The ``textmef`` command line: single pairs, folders, and bad input."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from textmef import io
from textmef.checkpoint import save_checkpoint
from textmef.cli import main
from textmef.models import FusionNet, model_config


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(FusionNet(model_config("textmef-tiny")), tmp_path / "tiny.safetensors")


def write_pair(folder, stem, size=(24, 32), bit_depth=8, suffix=".png"):
    rng = np.random.default_rng(abs(hash(stem)) % 2**32)
    base = rng.random((*size, 3), dtype=np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u").mkdir(exist_ok=True)
    (folder / "o").mkdir(exist_ok=True)
    under = io.write_image(folder / "u" / f"{stem}{suffix}", base * 0.3, bit_depth)
    over = io.write_image(folder / "o" / f"{stem}{suffix}", np.clip(base * 2, 0, 1), bit_depth)
    return under, over


@pytest.mark.parametrize(
    ("bit_depth", "suffix"), [(8, ".png"), (16, ".png"), (16, ".tif"), (8, ".jpg")]
)
def test_fuse_pair_keeps_the_bit_depth(tmp_path, weights, bit_depth, suffix):
    under, over = write_pair(tmp_path, "a", bit_depth=bit_depth, suffix=suffix)
    out = tmp_path / f"fused{suffix}"
    assert main(["fuse", str(under), str(over), "-o", str(out), "--weights", str(weights)]) == 0
    fused = io.read_image(out)
    assert fused.bit_depth == bit_depth
    assert fused.pixels.shape == (24, 32, 3)


def test_tiled_cli_run_on_an_image_larger_than_a_tile(tmp_path, weights):
    under, over = write_pair(tmp_path, "big", size=(50, 90))
    out = tmp_path / "big.png"
    assert (
        main(
            [
                "fuse",
                str(under),
                str(over),
                "-o",
                str(out),
                "--weights",
                str(weights),
                "--tile",
                "32",
                "--overlap",
                "8",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    assert io.read_image(out).pixels.shape == (50, 90, 3)


def test_folder_mode_matches_stems_and_resumes(tmp_path, weights, capsys):
    for stem in ("s1", "s2", "s3"):
        write_pair(tmp_path / "data", stem)
    (tmp_path / "data" / "u" / "lonely.png").write_bytes(
        (tmp_path / "data" / "u" / "s1.png").read_bytes()
    )
    args = [
        "fuse",
        "--under",
        str(tmp_path / "data" / "u"),
        "--over",
        str(tmp_path / "data" / "o"),
        "-o",
        str(tmp_path / "out"),
        "--weights",
        str(weights),
    ]
    assert main(args) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s1.png", "s2.png", "s3.png"]
    (tmp_path / "out" / "s2.png").unlink()
    before = (tmp_path / "out" / "s1.png").stat().st_mtime_ns
    assert main(args + ["--skip-existing"]) == 0
    assert "skipping 2 pair(s)" in capsys.readouterr().out
    assert (tmp_path / "out" / "s2.png").exists()
    assert (tmp_path / "out" / "s1.png").stat().st_mtime_ns == before


def test_folder_mode_reports_a_bad_pair_and_fuses_the_rest(tmp_path, weights, capsys):
    write_pair(tmp_path / "d", "good")
    write_pair(tmp_path / "d", "bad")
    (tmp_path / "d" / "o" / "bad.png").write_bytes(b"garbage")
    code = main(
        [
            "fuse",
            "--under",
            str(tmp_path / "d" / "u"),
            "--over",
            str(tmp_path / "d" / "o"),
            "-o",
            str(tmp_path / "out"),
            "--weights",
            str(weights),
        ]
    )
    assert code == 1
    assert "bad.png" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good.png"]


def test_a_pair_above_the_working_size_takes_the_guided_path_and_says_so(tmp_path, weights, caplog):
    under, over = write_pair(tmp_path, "wide", size=(120, 200))
    base = ["fuse", str(under), str(over), "--weights", str(weights), "--work-size", "64"]
    with caplog.at_level("INFO", logger="textmef"):
        assert main([*base, "-o", str(tmp_path / "guided.png")]) == 0
    lines = [r.getMessage() for r in caplog.records if "colour transform" in r.getMessage()]
    assert len(lines) == 1 and "at 82x49" in lines[0] and "--full-res" in lines[0]
    caplog.clear()
    with caplog.at_level("INFO", logger="textmef"):
        assert main([*base, "-o", str(tmp_path / "full.png"), "--full-res"]) == 0
    assert not [r for r in caplog.records if "colour transform" in r.getMessage()]
    guided = io.read_image(tmp_path / "guided.png").pixels
    full = io.read_image(tmp_path / "full.png").pixels
    assert guided.shape == full.shape == (120, 200, 3)
    assert not np.array_equal(guided, full)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_the_guided_path_keeps_16_bits(tmp_path, weights, suffix):
    under, over = write_pair(tmp_path, "deep", size=(100, 150), bit_depth=16, suffix=suffix)
    out = tmp_path / f"fused{suffix}"
    argv = ["fuse", str(under), str(over), "-o", str(out), "--weights", str(weights)]
    assert main([*argv, "--work-size", "64"]) == 0
    fused = io.read_image(out)
    assert fused.bit_depth == 16 and fused.pixels.shape == (100, 150, 3)
    # More than 256 levels: the 16-bit output is not an 8-bit image in disguise.
    assert len(np.unique(fused.pixels[..., 1])) > 256


def test_a_working_size_below_the_minimum_is_a_one_line_error(tmp_path, weights, capsys):
    under, over = write_pair(tmp_path, "a")
    argv = ["fuse", str(under), str(over), "-o", str(tmp_path / "f.png"), "--work-size", "8"]
    assert "work size must be an integer >= 64" in run_cli_error(capsys, argv)
    assert not (tmp_path / "f.png").exists()


def folder_args(data, out, weights, *extra):
    return [
        "fuse", "--under", str(data / "u"), "--over", str(data / "o"), "-o", str(out),
        "--weights", str(weights), *extra,
    ]  # fmt: skip


def test_folder_mode_with_two_jobs_matches_one_job_and_resumes(tmp_path, weights, capsys):
    for stem in ("p1", "p2", "p3", "p4"):
        write_pair(tmp_path / "data", stem, size=(40, 56))
    assert main(folder_args(tmp_path / "data", tmp_path / "one", weights, "--threads", "2")) == 0
    two = folder_args(tmp_path / "data", tmp_path / "two", weights, "--jobs", "2", "--threads", "2")
    assert main(two) == 0
    assert "fused 4 pair(s)" in capsys.readouterr().out
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "p1.png", "p2.png", "p3.png", "p4.png"
    ]  # fmt: skip
    for name in names:  # threads differ (2 vs 1 per job): equal up to float rounding
        a = io.read_image(tmp_path / "one" / name).pixels
        b = io.read_image(tmp_path / "two" / name).pixels
        assert np.abs(a - b).max() <= 1 / 255
    (tmp_path / "two" / "p3.png").unlink()
    assert main([*two, "--skip-existing"]) == 0
    out = capsys.readouterr().out
    assert "skipping 3 pair(s)" in out and "fused 1 pair(s)" in out
    assert (tmp_path / "two" / "p3.png").exists()


def test_folder_mode_workers_report_a_pair_that_fails_while_fusing(tmp_path, weights, capsys):
    for stem in ("ok1", "ok2", "cut"):
        write_pair(tmp_path / "d", stem, size=(40, 40))
    cut = tmp_path / "d" / "o" / "cut.png"
    cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 2])  # fails at decoding
    assert main(folder_args(tmp_path / "d", tmp_path / "out", weights, "--jobs", "2")) == 1
    captured = capsys.readouterr()
    assert "cut.png" in captured.err and "1 failed" in captured.out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ok1.png", "ok2.png"]


def run_cli_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.count("\n") == 0, f"expected one line, got: {err}"
    return err


def test_mismatched_sizes_are_one_line_errors_with_no_output(tmp_path, weights, capsys):
    under, _ = write_pair(tmp_path, "a", size=(24, 32))
    _, over = write_pair(tmp_path / "other", "a", size=(24, 33))
    out = tmp_path / "out.png"
    err = run_cli_error(
        capsys, ["fuse", str(under), str(over), "-o", str(out), "--weights", str(weights)]
    )
    assert "a.png" in err and "32x24" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("make", "keyword"),
    [
        (lambda p: p.write_bytes(b"this is text"), "not"),
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b""), "empty"),
    ],
)
def test_unreadable_inputs_are_one_line_errors(tmp_path, weights, capsys, make, keyword):
    under, _ = write_pair(tmp_path, "a")
    bad = tmp_path / "bad.png"
    make(bad)
    out = tmp_path / "out.png"
    err = run_cli_error(
        capsys, ["fuse", str(under), str(bad), "-o", str(out), "--weights", str(weights)]
    )
    assert "bad.png" in err and keyword in err.lower()
    assert not out.exists()


@pytest.mark.parametrize(
    ("pixels", "keyword"),
    [
        (np.zeros((20, 20), np.uint8), "grayscale"),
        (np.zeros((20, 20, 4), np.uint8), "alpha"),
        (np.zeros((1, 1, 3), np.uint8), "1x1"),
    ],
)
def test_grayscale_alpha_and_tiny_images_are_rejected(tmp_path, weights, capsys, pixels, keyword):
    import cv2

    under, _ = write_pair(tmp_path, "a")
    bad = tmp_path / "odd.png"
    cv2.imwrite(str(bad), pixels)
    err = run_cli_error(
        capsys,
        ["fuse", str(under), str(bad), "-o", str(tmp_path / "o.png"), "--weights", str(weights)],
    )
    assert "odd.png" in err and keyword in err.lower()


def test_truncated_png_is_rejected(tmp_path, weights, capsys):
    under, over = write_pair(tmp_path, "a", size=(40, 40))
    data = over.read_bytes()
    over.write_bytes(data[: len(data) // 2])
    err = run_cli_error(
        capsys,
        ["fuse", str(under), str(over), "-o", str(tmp_path / "o.png"), "--weights", str(weights)],
    )
    assert "a.png" in err


def test_missing_weights_and_no_packaged_checkpoint_are_explained(tmp_path, capsys):
    under, over = write_pair(tmp_path, "a")
    err = run_cli_error(
        capsys,
        [
            "fuse",
            str(under),
            str(over),
            "-o",
            str(tmp_path / "o.png"),
            "--weights",
            str(tmp_path / "nope.safetensors"),
        ],
    )
    assert "nope.safetensors" in err and "no such weights file" in err


def test_info_describes_the_model_fuse_uses_by_default(capsys):
    from textmef.checkpoint import packaged_weights_path

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "model: textmef-c32 " in out and "C = 32, d_state 8" in out
    assert "parameters: 324,452" in out
    assert f"weights: {packaged_weights_path()} (packaged" in out


def test_info_with_model_textmef_prints_the_c64_parameter_count(capsys):
    assert main(["info", "--model", "textmef"]) == 0
    out = capsys.readouterr().out
    assert "model: textmef (" in out and "parameters: 1,275,443" in out
    assert "weights: none" in out


def test_info_with_weights_names_the_checkpoints_model(weights, capsys):
    assert main(["info", "--weights", str(weights)]) == 0
    out = capsys.readouterr().out
    assert "model: textmef-tiny (" in out and f"weights: {weights}\n" in out


def test_console_script_runs_as_a_subprocess(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "textmef.cli",
            "fuse",
            "x.png",
            "y.png",
            "-o",
            str(tmp_path / "o.png"),
            "--weights",
            str(tmp_path / "w.safetensors"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "textmef: error:" in result.stderr


# ---- train-prompt -------------------------------------------------------------------------
@pytest.fixture
def clip_file(tiny_clip, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "tiny-clip.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_clip.state_dict().items()}, str(path))
    return path


def train_prompt_args(folders, out, clip_file, *extra):
    return [
        "train-prompt",
        "--under",
        str(folders["under"][0].parent),
        "--over",
        str(folders["over"][0].parent),
        "--well",
        str(folders["well"][0].parent),
        "-o",
        str(out),
        "--clip",
        str(clip_file),
        *extra,
    ]


def test_train_prompt_writes_prompts_that_belong_to_the_given_clip(
    exposure_folders, clip_file, tiny_clip, tmp_path, capsys
):
    from textmef.clip.prompts import load_prompts

    out = tmp_path / "prompts.safetensors"
    args = train_prompt_args(
        exposure_folders,
        out,
        clip_file,
        "--epochs",
        "3",
        "--lr",
        "1e-3",
        "--batch-size",
        "8",
        "--holdout",
        "0.25",
    )
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "epoch 3/3" in printed.out + printed.err
    prompts = load_prompts(out)
    prompts.check_clip(tiny_clip)
    assert prompts.info["clip_file"] == "tiny-clip.safetensors"
    assert prompts.info["recipe"]["epochs"] == 3
    assert (tmp_path / "prompts.run").is_dir()
    # Same command again: the run folder is kept unless --resume is said.
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert (
        main(
            [
                *args[:-8],
                "--epochs",
                "4",
                "--lr",
                "1e-3",
                "--batch-size",
                "8",
                "--holdout",
                "0.25",
                "--resume",
            ]
        )
        == 0
    )
    assert load_prompts(out).info["epochs_run"] == 4


def test_train_prompt_defaults_are_the_papers_recipe():
    from textmef.cli import build_parser

    args = build_parser().parse_args(
        ["train-prompt", "--under", "u", "--over", "o", "--well", "w", "-o", "p.safetensors"]
    )
    assert (args.lr, args.weight_decay, args.batch_size, args.epochs, args.length) == (
        5e-5,
        1e-3,
        16,
        180,
        16,
    )
    assert args.mode == "learned" and not args.no_augment


def test_train_prompt_without_clip_weights_says_how_to_get_them(
    exposure_folders, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("TEXTMEF_CLIP", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    args = train_prompt_args(exposure_folders, tmp_path / "p.safetensors", "x")[:-2]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no CLIP weights" in err and "--clip-download" in err
    assert "Traceback" not in err


def test_train_prompt_with_a_broken_clip_file_names_it(exposure_folders, tmp_path, capsys):
    bad = tmp_path / "ViT-B-32.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    assert main(train_prompt_args(exposure_folders, tmp_path / "p.safetensors", bad)) == 2
    err = capsys.readouterr().err
    assert "ViT-B-32.pt" in err and "Traceback" not in err
    assert not (tmp_path / "p.safetensors").exists()


def test_train_prompt_with_a_missing_folder_names_it(exposure_folders, clip_file, tmp_path, capsys):
    args = train_prompt_args(exposure_folders, tmp_path / "p.safetensors", clip_file)
    args[args.index("--well") + 1] = str(tmp_path / "nowhere")
    assert main(args) == 2
    assert "nowhere: no such folder" in capsys.readouterr().err
