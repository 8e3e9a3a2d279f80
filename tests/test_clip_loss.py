"""CLIP exposure loss: L_clip = 1 - p(well), batched, differentiable w.r.t. the image."""

import pytest
import torch
from conftest import LEVELS, textured

from textmef.clip.loading import clip_fingerprint
from textmef.clip.prompts import init_prompts, load_prompts, save_prompts
from textmef.engine.prompt_training import PromptTrainingConfig, train_prompts
from textmef.errors import CheckpointError
from textmef.losses import CLIPExposureLoss, clip_exposure_loss


@pytest.fixture(scope="module")
def learned(tiny_clip, exposure_folders, tmp_path_factory):
    root = tmp_path_factory.mktemp("loss")
    config = PromptTrainingConfig(lr=1e-3, epochs=15, batch_size=8, holdout=0.0)
    result = train_prompts(
        tiny_clip,
        clip_fingerprint(tiny_clip),
        exposure_folders,
        config,
        root / "p.safetensors",
        root / "run",
        progress=False,
        report=lambda _: None,
    )
    return load_prompts(result.output)


def batch_of(level, count=3, seed=5, size=(64, 80)):
    import numpy as np

    rng = np.random.default_rng(seed)
    images = [torch.from_numpy(textured(level, rng, size)).permute(2, 0, 1) for _ in range(count)]
    return torch.stack(images)


def test_loss_is_lower_for_images_the_prompts_call_well_exposed(tiny_clip, learned):
    loss = CLIPExposureLoss.from_prompts(tiny_clip, learned)
    with torch.no_grad():
        values = {k: loss(batch_of(level, seed=40)).item() for k, level in LEVELS.items()}
    assert values["well"] < 0.1 < min(values["under"], values["over"]), values


def test_gradient_wrt_the_image_is_finite_and_non_zero(tiny_clip, learned):
    loss = CLIPExposureLoss.from_prompts(tiny_clip, learned)
    images = batch_of(0.3).requires_grad_(True)
    loss(images).backward()
    assert torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_clip.parameters())


def test_batched_loss_equals_the_authors_per_image_loop(tiny_clip, learned):
    loss = CLIPExposureLoss.from_prompts(tiny_clip, learned)
    images = torch.cat([batch_of(0.2, 2), batch_of(0.5, 2), batch_of(0.8, 2)])
    with torch.no_grad():
        batched = loss(images)
        looped = sum(1 - loss.well_probability(img[None])[0] for img in images) / len(images)
    torch.testing.assert_close(batched, looped, atol=1e-6, rtol=1e-5)


def test_functional_and_module_forms_agree(tiny_clip, learned):
    loss = CLIPExposureLoss.from_prompts(tiny_clip, learned)
    images = batch_of(0.4)
    with torch.no_grad():
        features = tiny_clip.image_features(images)
        expected = clip_exposure_loss(features, learned.text_features, learned.well_index)
        torch.testing.assert_close(loss(images), expected)


def test_loss_lies_in_zero_one(tiny_clip, learned):
    loss = CLIPExposureLoss.from_prompts(tiny_clip, learned)
    with torch.no_grad():
        value = loss(torch.rand(4, 3, 50, 70)).item()
    assert 0.0 <= value <= 1.0


def test_clip_stays_in_eval_mode_when_the_loss_is_put_in_training_mode(tiny_clip, learned):
    loss = CLIPExposureLoss.from_prompts(tiny_clip, learned).train()
    assert loss.training and not loss.clip.training


def test_loss_refuses_prompts_of_another_clip(tiny_clip, tmp_path):
    from textmef.clip import build_clip

    torch.manual_seed(7)
    other = build_clip("tiny")
    path = save_prompts(
        tmp_path / "o.safetensors", init_prompts(other), other, clip_fingerprint(other)
    )
    with pytest.raises(CheckpointError, match="other CLIP weights"):
        CLIPExposureLoss.from_prompts(tiny_clip, load_prompts(path))
