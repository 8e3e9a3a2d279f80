"""Checkpoints: safetensors round trip, clear reports, no unpickling."""

import pickle

import pytest
import torch
from safetensors.torch import save_file

from textmef.checkpoint import load_checkpoint, load_state, read_checkpoint, save_checkpoint
from textmef.errors import CheckpointError
from textmef.models import FusionNet, model_config

TINY = model_config("textmef-tiny")


def test_round_trip_restores_config_and_weights(tmp_path):
    model = FusionNet(TINY)
    path = save_checkpoint(model, tmp_path / "m.safetensors", extra={"note": "test"})
    loaded, meta = load_checkpoint(path)
    assert loaded.config == TINY
    assert meta["note"] == "test"
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert not loaded.training


def test_mismatched_keys_are_reported_by_name(tmp_path):
    state = FusionNet(TINY).state_dict()
    state.pop("refine.conv_out.bias")
    state["extra.weight"] = torch.zeros(1)
    state["fusion.project.weight"] = torch.zeros(3, 3, 1, 1)
    report = load_state(FusionNet(TINY), state)
    assert report.missing == ["refine.conv_out.bias"]
    assert report.unexpected == ["extra.weight"]
    assert report.mismatched[0].startswith("fusion.project.weight")
    summary = report.summary()
    assert "1 missing" in summary and "extra.weight" in summary and "shape-mismatched" in summary


def test_strict_load_refuses_a_checkpoint_of_another_shape(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(FusionNet(TINY), path)
    config, state, meta = read_checkpoint(path)
    state = {k: v for k, v in state.items() if not k.startswith("refine")}
    save_file(state, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="missing key"):
        load_checkpoint(path)
    model, _ = load_checkpoint(path, strict=False)
    assert isinstance(model, FusionNet)


def test_a_pickle_that_is_not_a_state_dict_of_tensors_is_refused(tmp_path):
    path = tmp_path / "odd.pth"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="odd.pth: is not a plain state dict of tensors"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all"])
def test_garbage_and_missing_files_give_clear_errors(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no such weights file"):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_safetensors_without_textmef_metadata_is_rejected(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="no textmef config"):
        load_checkpoint(path)
