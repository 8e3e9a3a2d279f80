"""Exposure prompts: initialisation, variants, files, and refusal of a foreign CLIP."""

import pytest
import torch

from textmef.clip import build_clip
from textmef.clip.loading import clip_fingerprint
from textmef.clip.prompts import (
    HANDCRAFTED,
    class_index,
    init_prompts,
    load_prompts,
    prompt_classes,
    save_prompts,
)
from textmef.errors import CheckpointError


def test_learned_prompts_are_three_placeholders_cut_after_their_end_token(tiny_clip):
    learner = init_prompts(tiny_clip, "learned", length=16)
    # SOT + 16 "X" + EOT: the end token sits at 17, as in the tokenised placeholder.
    assert learner.embeddings.shape == (3, 18, tiny_clip.config.text.width)
    assert learner.eot_index.tolist() == [17, 17, 17]
    assert learner.embeddings.requires_grad
    assert learner.classes == ("over", "under", "well")


def test_learned_init_has_the_xavier_scale_of_the_full_context_tensor(tiny_clip):
    learner = init_prompts(
        tiny_clip, "learned", length=16, generator=torch.Generator().manual_seed(0)
    )
    width, context = tiny_clip.config.text.width, tiny_clip.config.text.context_length
    expected = (2.0 / ((context + 3) * width)) ** 0.5
    assert learner.embeddings.std().item() == pytest.approx(expected, rel=0.05)


def test_seeded_init_is_reproducible(tiny_clip):
    a = init_prompts(tiny_clip, generator=torch.Generator().manual_seed(3))
    b = init_prompts(tiny_clip, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.embeddings, b.embeddings)


def test_cut_prompt_gives_the_features_of_the_zero_padded_context(tiny_clip):
    learner = init_prompts(tiny_clip, "learned", length=16)
    context = tiny_clip.config.text.context_length
    padded = torch.zeros(3, context, tiny_clip.config.text.width)
    padded[:, :18] = learner.embeddings.detach()
    padded[:, 18:] = torch.randn(3, context - 18, tiny_clip.config.text.width)
    with torch.no_grad():
        full = tiny_clip.encode_token_embeddings(padded, learner.eot_index)
        cut = tiny_clip.encode_token_embeddings(learner.embeddings, learner.eot_index)
    torch.testing.assert_close(cut, full, atol=1e-5, rtol=1e-5)


def test_pos_neg_prompts_pair_badly_and_well_exposed(tiny_clip):
    learner = init_prompts(tiny_clip, "pos-neg", length=8)
    assert learner.embeddings.shape[0] == 2
    assert prompt_classes("pos-neg") == ("badly-exposed", "well")
    assert [class_index("pos-neg", e) for e in ("over", "under", "well")] == [0, 0, 1]
    assert learner.well_index == 1


def test_fixed_prompts_are_the_handcrafted_texts_and_not_learnable(tiny_clip):
    from textmef.clip.tokenizer import get_tokenizer

    learner = init_prompts(tiny_clip, "fixed")
    assert learner.texts == HANDCRAFTED
    assert not any(p.requires_grad for p in learner.parameters())
    tokens = get_tokenizer()(list(HANDCRAFTED))
    with torch.no_grad():
        expected = torch.nn.functional.normalize(tiny_clip.encode_text(tokens), dim=-1)
        torch.testing.assert_close(learner.text_features(tiny_clip), expected)


def test_unknown_mode_is_refused(tiny_clip):
    with pytest.raises(ValueError, match="unknown prompt mode"):
        init_prompts(tiny_clip, "two-learnable")


def test_prompt_gradients_reach_every_learnable_token(tiny_clip):
    learner = init_prompts(tiny_clip, "learned", length=4)
    features = torch.nn.functional.normalize(torch.randn(5, tiny_clip.config.embed_dim), dim=-1)
    learner(tiny_clip, features).logsumexp(-1).sum().backward()
    grad = learner.embeddings.grad
    assert torch.isfinite(grad).all()
    assert (grad.abs().sum(dim=-1) > 0).all()


def test_prompt_file_round_trip_keeps_prompts_features_and_clip_identity(tiny_clip, tmp_path):
    learner = init_prompts(tiny_clip, "learned", length=16)
    fingerprint = clip_fingerprint(tiny_clip)
    path = save_prompts(
        tmp_path / "p.safetensors", learner, tiny_clip, fingerprint, {"note": "test"}
    )
    loaded = load_prompts(path)
    assert loaded.mode == "learned" and loaded.info == {"note": "test"}
    assert loaded.clip_config == tiny_clip.config
    assert loaded.clip_fingerprint == fingerprint
    torch.testing.assert_close(loaded.learner.embeddings, learner.embeddings)
    with torch.no_grad():
        torch.testing.assert_close(loaded.text_features, learner.text_features(tiny_clip))
    loaded.check_clip(tiny_clip)  # the right CLIP passes


def test_prompts_are_refused_with_other_clip_weights(tiny_clip, tmp_path):
    learner = init_prompts(tiny_clip)
    path = save_prompts(tmp_path / "p.safetensors", learner, tiny_clip, clip_fingerprint(tiny_clip))
    torch.manual_seed(99)
    other = build_clip("tiny")
    with pytest.raises(CheckpointError, match="other CLIP weights") as err:
        load_prompts(path).check_clip(other)
    assert "p.safetensors" in str(err.value)


def test_prompts_are_refused_with_another_clip_architecture(tiny_clip, tmp_path):
    from dataclasses import replace

    learner = init_prompts(tiny_clip)
    path = save_prompts(tmp_path / "p.safetensors", learner, tiny_clip, clip_fingerprint(tiny_clip))
    wider = build_clip(replace(tiny_clip.config, embed_dim=48))
    with pytest.raises(CheckpointError, match="different CLIP architecture"):
        load_prompts(path).check_clip(wider)


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all"])
def test_unreadable_prompt_files_name_the_file(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_prompts(path)


def test_a_fusion_checkpoint_is_not_taken_for_prompts(tmp_path):
    from textmef.checkpoint import save_checkpoint
    from textmef.models import FusionNet, model_config

    path = save_checkpoint(FusionNet(model_config("textmef-tiny")), tmp_path / "net.safetensors")
    with pytest.raises(CheckpointError, match="not a textmef prompts file"):
        load_prompts(path)


def test_missing_prompt_file_is_reported(tmp_path):
    with pytest.raises(CheckpointError, match="no such prompts file"):
        load_prompts(tmp_path / "absent.safetensors")
