"""The model registry: names, configs, and names stored in checkpoints."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from textmef.checkpoint import (
    load_checkpoint,
    packaged_weights_path,
    read_checkpoint_info,
    save_checkpoint,
)
from textmef.errors import InputError
from textmef.models import DEFAULT_MODEL, PAPER_MODEL, FusionNet, list_models, model_config
from textmef.models.registry import create_model, name_of_config, register_model


def test_every_registered_model_has_its_own_config():
    configs = [model_config(name) for name in list_models()]
    assert len(set(configs)) == len(configs)
    assert {PAPER_MODEL, DEFAULT_MODEL, "textmef-tiny"} <= set(list_models())


def test_a_second_name_for_a_registered_config_is_refused():
    with pytest.raises(ValueError, match="same config as 'textmef'"):
        register_model("textmef-copy", model_config(PAPER_MODEL), "duplicate")
    with pytest.raises(ValueError, match="already registered"):
        register_model(PAPER_MODEL, model_config("textmef-tiny"), "taken")


def test_unknown_model_names_the_known_ones():
    with pytest.raises(InputError, match="unknown model 'nope'; known: textmef, textmef-c16"):
        model_config("nope")


def test_paper_model_has_the_papers_width_and_parameter_count():
    model = create_model(PAPER_MODEL)
    assert model.config.width == 64
    assert sum(p.numel() for p in model.parameters()) == 1_275_443


def test_checkpoints_store_the_model_name(tmp_path):
    torch.manual_seed(0)
    path = save_checkpoint(create_model("textmef-tiny"), tmp_path / "tiny.safetensors")
    info = read_checkpoint_info(path)
    assert info.model == "textmef-tiny" and info.metadata["model"] == "textmef-tiny"
    custom = FusionNet(dataclasses.replace(model_config("textmef-tiny"), width=12))
    info = read_checkpoint_info(save_checkpoint(custom, tmp_path / "custom.safetensors"))
    assert info.model == "custom" and info.config.width == 12
    model, meta = load_checkpoint(tmp_path / "custom.safetensors")
    assert model.config.width == 12 and meta["model"] == "custom"


def test_the_packaged_checkpoint_is_the_default_model():
    info = read_checkpoint_info(packaged_weights_path())
    assert info.metadata.get("model") == DEFAULT_MODEL == name_of_config(info.config)
