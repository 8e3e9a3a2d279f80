"""The CLIP model itself: size of the released config, shapes, causality, gradients."""

from __future__ import annotations

import builtins

import pytest
import torch

from textmef.clip.config import CLIP_CONFIGS
from textmef.clip.model import CLIP, build_clip

TINY = CLIP_CONFIGS["tiny"]
SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def tiny() -> CLIP:
    torch.manual_seed(0)
    return build_clip("tiny").eval()


def _tokens(lengths: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(len(lengths), TINY.text.context_length, dtype=torch.long)
    for row, length in enumerate(lengths):
        tokens[row, 0] = SOT
        tokens[row, 1 : length - 1] = torch.randint(1, SOT, (length - 2,), generator=gen)
        tokens[row, length - 1] = EOT
    return tokens


def test_vit_b_32_has_the_released_parameter_count():
    model = build_clip("ViT-B-32")
    assert sum(p.numel() for p in model.parameters()) == 151_277_313


def test_tiny_forward_shapes(tiny):
    images = torch.rand(2, 3, 224, 224)
    tokens = _tokens((4, 9, 20))
    with torch.no_grad():
        assert tiny.encode_image(tiny.preprocess(images)).shape == (2, TINY.embed_dim)
        assert tiny.image_features(images).shape == (2, TINY.embed_dim)
        assert tiny.encode_text(tokens).shape == (3, TINY.embed_dim)
        logits = tiny(images, tokens)
    assert logits.shape == (2, 3)
    assert torch.isfinite(logits).all()


def test_text_tower_is_causal(tiny):
    tokens = _tokens((6, 15))
    edited = tokens.clone()
    edited[:, 40] = 1234  # after every row's end token
    with torch.no_grad():
        torch.testing.assert_close(
            tiny.encode_text(edited), tiny.encode_text(tokens), atol=0, rtol=0
        )
        before_eot = tokens.clone()
        before_eot[:, 2] = 4321
        assert not torch.allclose(tiny.encode_text(before_eot), tiny.encode_text(tokens))


def test_encode_text_is_encode_token_embeddings_at_the_end_token(tiny):
    tokens = _tokens((3, 11, 77))
    with torch.no_grad():
        direct = tiny.encode_text(tokens)
        via_embeddings = tiny.encode_token_embeddings(
            tiny.token_embedding(tokens), tokens.argmax(dim=-1)
        )
    assert torch.equal(direct, via_embeddings)


@pytest.mark.parametrize("size", [(224, 224), (100, 150), (300, 257)])
def test_image_features_are_unit_norm_for_any_size(tiny, size):
    with torch.no_grad():
        features = tiny.image_features(torch.rand(2, 3, *size))
    assert features.shape == (2, TINY.embed_dim)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(2))


def test_gradient_reaches_the_input_image(tiny):
    images = torch.rand(1, 3, 120, 160, requires_grad=True)
    target = torch.nn.functional.normalize(torch.randn(1, TINY.embed_dim), dim=-1)
    (tiny.image_features(images) * target).sum().backward()
    assert images.grad is not None
    assert torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0


def test_building_a_model_reads_no_files(monkeypatch):
    def no_io(*args, **kwargs):
        raise AssertionError("building a CLIP must not open files")

    monkeypatch.setattr(builtins, "open", no_io)
    monkeypatch.setattr(torch, "load", no_io)
    monkeypatch.setattr(torch.jit, "load", no_io)
    model = build_clip("tiny")
    assert isinstance(model, CLIP) and model.config == TINY
