"""Stage 2 engine: data, config, resume, NaN guard, DDP, CLI."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from textmef import io
from textmef.data.triplets import (
    StreamBatches,
    TripletCrops,
    find_triplets,
    split_by_sequence,
)
from textmef.engine.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    config_from_dict,
    load_config,
)
from textmef.engine.train import TrainingDivergedError, train
from textmef.errors import InputError


def make_triplets(root: Path, count: int = 6, size=(40, 52), layout=("under", "over", "gt")):
    rng = np.random.default_rng(0)
    for name in layout:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        scene = rng.random((*size, 3)).astype(np.float32)
        io.write_image(root / layout[0] / f"s{i:02d}.png", scene * 0.3, 8)
        io.write_image(root / layout[1] / f"s{i:02d}.png", np.clip(scene * 1.8, 0, 1), 8)
        io.write_image(root / layout[2] / f"s{i:02d}.png", scene * 0.8, 8)
    return root


def tiny_config(root: Path, out: Path, steps: int = 4, **run) -> TrainConfig:
    return TrainConfig(
        data=DataConfig(root=str(root), crop=16, val_fraction=0.0),
        model=ModelConfig(name="textmef-tiny"),
        optim=OptimConfig(batch_size=2, steps=steps, milestones=(0.5,)),
        run=RunConfig(out=str(out), seed=3, val_every=1000, save_every=2, log_every=1, **run),
    )


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_triplets(tmp_path_factory.mktemp("triplets"))


# ---- data ---------------------------------------------------------------------------------
def test_triplets_are_matched_by_stem_and_sice_layout_is_accepted(tmp_path):
    make_triplets(tmp_path / "ours", 3)
    make_triplets(tmp_path / "sice", 3, layout=("trainA", "trainB", "trainC"))
    (tmp_path / "ours" / "gt" / "s02.png").unlink()  # no reference: not a triplet
    assert [t.name for t in find_triplets(tmp_path / "ours")] == ["s00", "s01"]
    sice = find_triplets(tmp_path / "sice")
    assert sice[0].under.parent.name == "trainA" and sice[0].gt.parent.name == "trainC"


def test_a_folder_without_the_layout_is_refused(tmp_path):
    with pytest.raises(InputError, match="under/ over/ gt/"):
        find_triplets(tmp_path)


def test_validation_split_is_by_sequence_and_stable(data_root):
    triplets = find_triplets(data_root)
    train_a, val_a = split_by_sequence(triplets, 0.5)
    train_b, val_b = split_by_sequence(list(reversed(triplets))[:5], 0.5)
    assert {t.name for t in train_a}.isdisjoint({t.name for t in val_a})
    # Membership depends on the name only: dropping or reordering sequences moves nobody.
    assert {t.name for t in val_b} <= {t.name for t in val_a}


def test_crops_are_reproducible_and_cover_every_sequence_each_epoch(data_root):
    triplets = find_triplets(data_root)
    a = TripletCrops(triplets, crop=16, seed=1).load()
    b = TripletCrops(triplets, crop=16, seed=1)
    for position in (0, 5, 17):
        for x, y in zip(a[position], b[position]):
            assert torch.equal(x, y)
    assert sorted(a.sequence_at(p) for p in range(6, 12)) == list(range(6))
    under, over, gt = a[3]
    assert under.shape == over.shape == gt.shape == (3, 16, 16)


def test_crops_larger_than_the_image_are_padded(data_root):
    crops = TripletCrops(find_triplets(data_root), crop=64, seed=0).load()
    assert crops[0][0].shape == (3, 64, 64)


def test_stream_batches_split_each_global_batch_between_processes():
    single = list(StreamBatches(4, 0, 2))
    ranks = [list(StreamBatches(2, 0, 2, rank=r, world=2)) for r in range(2)]
    for step in range(2):
        assert ranks[0][step] + ranks[1][step] == single[step]
    assert list(StreamBatches(4, 1, 2)) == single[1:]


# ---- config -------------------------------------------------------------------------------
def test_yaml_config_maps_onto_the_dataclasses(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1.0e-3\n  betas: [0.9, 0.99]\ndata:\n  augment: false\n")
    config = load_config(path)
    assert config.optim.lr == 1e-3 and config.optim.betas == (0.9, 0.99)
    assert config.data.augment is False and config.data.crop == 224


def test_defaults_follow_the_paper():
    config = TrainConfig()
    assert (config.optim.lr, config.optim.betas, config.optim.batch_size) == (2e-4, (0.5, 0.999), 8)
    assert config.loss.clip_weight == 1e-2 and config.data.crop == 224


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("optim:\n  lrr: 1\n", "unknown key"),
        ("optimizer:\n  lr: 1\n", "unknown section"),
        ("optim:\n  steps: many\n", "optim.steps"),
        ("data: [1, 2]\n", "must be a mapping"),
        ("optim: {lr: 1\n", "not valid YAML"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=match):
        load_config(path)


def test_every_field_is_overridable_from_the_command_line():
    from textmef.cli import build_parser
    from textmef.engine.config import apply_overrides

    args = build_parser().parse_args(
        [
            "train",
            "--optim.lr",
            "0.5",
            "--data.augment",
            "no",
            "--optim.milestones",
            "0.3,0.6",
            "--run.out",
            "x",
        ]
    )
    config = apply_overrides(TrainConfig(), args)
    assert config.optim.lr == 0.5 and config.data.augment is False
    assert config.optim.milestones == (0.3, 0.6) and config.run.out == "x"
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for section, cls in (("data", DataConfig), ("optim", OptimConfig), ("run", RunConfig)):
        for name in cls.__dataclass_fields__:
            assert f"--{section}.{name}" in help_text


# ---- training -----------------------------------------------------------------------------
def test_training_writes_checkpoints_logs_and_summary(data_root, tmp_path):
    result = train(tiny_config(data_root, tmp_path / "run"), progress=False, report=lambda _: None)
    out = tmp_path / "run"
    assert result.step == 4
    for name in (
        "state.pt",
        "last.safetensors",
        "log.csv",
        "summary.json",
        "config.yaml",
        "split.json",
    ):
        assert (out / name).exists(), name
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,kind,loss") and len(rows) == 5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["clip_weight_used"] == 0.0
    from textmef.checkpoint import load_checkpoint

    model, meta = load_checkpoint(out / "last.safetensors")
    assert meta["step"] == "4" and model.config.width == 16


def test_resumed_training_equals_an_uninterrupted_run(data_root, tmp_path):
    train(tiny_config(data_root, tmp_path / "straight"), progress=False, report=lambda _: None)
    interrupted = tiny_config(data_root, tmp_path / "split", steps=4, session_steps=2)
    assert train(interrupted, progress=False, report=lambda _: None).step == 2
    train(interrupted, resume=True, progress=False, report=lambda _: None)
    straight = load_file(tmp_path / "straight" / "last.safetensors")
    split = load_file(tmp_path / "split" / "last.safetensors")
    assert straight.keys() == split.keys()
    for key in straight:
        assert torch.equal(straight[key], split[key]), key


def test_an_existing_run_is_not_overwritten_without_resume(data_root, tmp_path):
    config = tiny_config(data_root, tmp_path / "run", steps=2)
    train(config, progress=False, report=lambda _: None)
    with pytest.raises(InputError, match="--resume"):
        train(config, progress=False, report=lambda _: None)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    data_root, tmp_path, monkeypatch
):
    import textmef.engine.train as engine

    config = tiny_config(data_root, tmp_path / "run", steps=6)
    real_mse = engine.F.mse_loss
    calls = {"n": 0}

    def mse_that_fails_at_step_4(a, b):
        calls["n"] += 1
        value = real_mse(a, b)
        return value * float("nan") if calls["n"] == 4 else value

    monkeypatch.setattr(engine.F, "mse_loss", mse_that_fails_at_step_4)
    with pytest.raises(TrainingDivergedError, match="step 4") as err:
        train(config, progress=False, report=lambda _: None)
    assert "last.safetensors" in str(err.value)
    from textmef.checkpoint import read_checkpoint

    _, tensors, meta = read_checkpoint(tmp_path / "run" / "last.safetensors")
    assert meta["step"] == "2"
    assert all(torch.isfinite(t).all() for t in tensors.values())


def test_validation_scores_the_network_and_mertens(data_root, tmp_path):
    config = tiny_config(data_root, tmp_path / "run", steps=2)
    config = replace(
        config, data=replace(config.data, val_fraction=0.4), run=replace(config.run, val_every=1)
    )
    lines = []
    result = train(config, progress=False, report=lines.append)
    vals = [h for h in result.history if h["kind"] == "val"]
    assert len(vals) == 2 and np.isfinite(vals[-1]["val_psnr"])
    assert (tmp_path / "run" / "best.safetensors").exists()
    assert any("two-frame Mertens" in line for line in lines)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["mertens_psnr"] is not None and summary["validation_sequences"] >= 1


def test_lambda_zero_is_said_clearly(data_root, tmp_path):
    lines = []
    train(tiny_config(data_root, tmp_path / "run", steps=1), progress=False, report=lines.append)
    assert any(line.startswith("λ = 0") and "loss.clip" in line for line in lines)


def test_clip_loss_is_used_when_clip_and_prompts_are_given(data_root, tmp_path, tiny_clip):
    from safetensors.torch import save_file

    from textmef.clip.loading import clip_fingerprint
    from textmef.clip.prompts import init_prompts, save_prompts
    from textmef.engine.config import LossConfig

    clip_path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_clip.state_dict().items()}, str(clip_path))
    prompts = save_prompts(
        tmp_path / "p.safetensors", init_prompts(tiny_clip), tiny_clip, clip_fingerprint(tiny_clip)
    )
    config = replace(
        tiny_config(data_root, tmp_path / "run", steps=2),
        loss=LossConfig(clip_weight=0.5, clip=str(clip_path), prompts=str(prompts)),
    )
    lines = []
    result = train(config, progress=False, report=lines.append)
    assert any(line.startswith("λ = 0.5") for line in lines)
    assert all(h["clip"] > 0 for h in result.history if h["kind"] == "train")


# ---- distributed --------------------------------------------------------------------------
def test_two_process_ddp_ends_with_identical_weights_equal_to_one_process(data_root, tmp_path):
    single = tiny_config(data_root, tmp_path / "single", steps=3)
    single = replace(single, optim=replace(single.optim, batch_size=4))
    train(single, progress=False, report=lambda _: None)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "textmef",
        "train",
        "--data.root",
        str(data_root),
        "--data.crop",
        "16",
        "--data.val_fraction",
        "0",
        "--model.name",
        "textmef-tiny",
        "--optim.batch_size",
        "2",
        "--optim.steps",
        "3",
        "--optim.milestones",
        "0.5",
        "--run.out",
        str(tmp_path / "ddp"),
        "--run.seed",
        "3",
        "--run.save_every",
        "2",
        "--run.log_every",
        "1",
        "--run.threads",
        "1",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["ranks_identical"]
    ddp = load_file(tmp_path / "ddp" / "last.safetensors")
    one = load_file(tmp_path / "single" / "last.safetensors")
    for key in one:
        torch.testing.assert_close(ddp[key], one[key], atol=1e-5, rtol=1e-4)


def test_cli_train_runs_from_a_yaml_file_with_overrides(data_root, tmp_path):
    from textmef.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(
        f"data:\n  root: {data_root}\n  crop: 16\n  val_fraction: 0\nmodel:\n"
        f"  name: textmef-tiny\noptim:\n  batch_size: 2\n  steps: 5\n"
        f"run:\n  out: {tmp_path / 'run'}\n"
    )
    assert main(["train", "--config", str(path), "--optim.steps", "2"]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2


def test_cli_train_without_data_says_so(tmp_path, capsys):
    from textmef.cli import main

    assert main(["train", "--run.out", str(tmp_path / "r")]) == 2
    assert "data.root" in capsys.readouterr().err


def test_config_from_dict_round_trips():
    config = TrainConfig()
    assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_crops_are_exact_slices_of_the_read_images(data_root):
    triplets = find_triplets(data_root)
    crops = TripletCrops(triplets, crop=16, augment=False, seed=2).load()
    under, _, gt = crops[4]
    sequence = triplets[crops.sequence_at(4)]
    full = torch.from_numpy(io.read_image(sequence.under).pixels).permute(2, 0, 1)
    matches = [
        (t, left)
        for t in range(full.shape[1] - 15)
        for left in range(full.shape[2] - 15)
        if torch.equal(full[:, t : t + 16, left : left + 16], under)
    ]
    assert len(matches) == 1


# ---- faults -------------------------------------------------------------------------------
# Runs `textmef train` with torch.save replaced: the Nth write of the training state writes
# the first half of the real bytes to its temporary file, then SIGKILLs its own process.
KILLED_DURING_A_STATE_WRITE = """
import io, os, signal, sys
import torch
from textmef.cli import main

real_save, kill_at, writes = torch.save, int(sys.argv[1]), 0

def save(obj, f, *args, **kwargs):
    global writes
    if os.path.basename(f).startswith(".state.pt."):
        writes += 1
        if writes == kill_at:
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            with open(f, "wb") as stream:
                stream.write(buffer.getvalue()[: buffer.tell() // 2])
                stream.flush()
                os.fsync(stream.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)

torch.save = save
sys.exit(main(sys.argv[2:]))
"""


def train_args(data_root: Path, out: Path, steps: int = 4) -> list[str]:
    return [
        "train",
        "--data.root",
        str(data_root),
        "--data.crop",
        "16",
        "--data.val_fraction",
        "0",
        "--model.name",
        "textmef-tiny",
        "--optim.batch_size",
        "2",
        "--optim.steps",
        str(steps),
        "--optim.milestones",
        "0.5",
        "--run.out",
        str(out),
        "--run.seed",
        "3",
        "--run.save_every",
        "1",
        "--run.log_every",
        "1",
        "--run.threads",
        "1",
    ]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX-only")
def test_a_run_killed_while_writing_its_state_resumes_and_leaves_no_temporary_file(
    data_root, tmp_path
):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # The uninterrupted run goes alongside the one that will be killed (same settings).
    straight = subprocess.Popen(
        [sys.executable, "-m", "textmef", *train_args(data_root, tmp_path / "straight")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    run = tmp_path / "run"
    killed = subprocess.Popen(
        [sys.executable, "-c", KILLED_DURING_A_STATE_WRITE, "2", *train_args(data_root, run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    killed_output, _ = killed.communicate(timeout=120)
    straight_output, _ = straight.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed_output[-3000:]
    assert straight.returncode == 0, straight_output[-3000:]

    # The kill left a half-written state under a temporary name; state.pt is still step 1.
    (leftover,) = run.glob(".state.pt.*.tmp")
    assert re.fullmatch(rf"\.state\.pt\.{killed.pid}-[0-9a-f]{{32}}\.tmp", leftover.name)
    assert 0 < leftover.stat().st_size < (run / "state.pt").stat().st_size
    assert torch.load(run / "state.pt", map_location="cpu", weights_only=True)["step"] == 1
    # A temporary file of a live writer (this process) must survive the clean-up.
    live = run / f".log.csv.{os.getpid()}-{'0' * 32}.tmp"
    live.write_bytes(b"")

    resumed = subprocess.run(
        [sys.executable, "-m", "textmef", *train_args(data_root, run), "--resume"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    output = resumed.stdout + resumed.stderr
    assert f"removed 1 temporary file left by an interrupted run: {leftover.name}" in output, output
    assert "resuming at step 1 of 4" in output
    assert not leftover.exists() and live.exists()
    assert sorted(p.name for p in run.glob(".*")) == [live.name]
    assert json.loads((run / "summary.json").read_text())["steps"] == 4
    expected = load_file(tmp_path / "straight" / "last.safetensors")
    got = load_file(run / "last.safetensors")
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_a_new_run_removes_temporary_files_of_dead_writers_only(data_root, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead = run / f".state.pt.{dead_pid()}-{'a' * 32}.tmp"
    live = run / f".state.pt.{os.getpid()}-{'b' * 32}.tmp"
    dead.write_bytes(b"half")
    live.write_bytes(b"half")
    lines = []
    train(tiny_config(data_root, run, steps=1), progress=False, report=lines.append)
    assert not dead.exists() and live.exists()
    assert f"removed 1 temporary file left by an interrupted run: {dead.name}" in lines


def test_a_run_can_start_from_a_checkpoints_weights(data_root, tmp_path):
    first = tiny_config(data_root, tmp_path / "first", steps=2)
    train(first, progress=False, report=lambda _: None)
    start = tmp_path / "first" / "last.safetensors"
    lines: list[str] = []
    # One step at learning rate 0: the weights written are the ones the run started from.
    config = dataclasses.replace(
        tiny_config(data_root, tmp_path / "second", steps=1),
        model=ModelConfig(name="textmef-tiny", init=str(start)),
        optim=OptimConfig(batch_size=2, steps=1, lr=0.0, milestones=(0.5,)),
    )
    train(config, progress=False, report=lines.append)
    assert any("starting from the weights of" in line for line in lines)
    before, after = load_file(start), load_file(tmp_path / "second" / "last.safetensors")
    for key in before:
        assert torch.equal(before[key], after[key]), key


def test_starting_weights_of_another_architecture_are_refused(data_root, tmp_path):
    train(tiny_config(data_root, tmp_path / "first", steps=1), progress=False, report=print)
    config = dataclasses.replace(
        tiny_config(data_root, tmp_path / "second", steps=1),
        model=ModelConfig(
            name="textmef-tiny", width=8, init=str(tmp_path / "first" / "last.safetensors")
        ),
    )
    with pytest.raises(InputError, match="16-wide"):
        train(config, progress=False, report=lambda _: None)
