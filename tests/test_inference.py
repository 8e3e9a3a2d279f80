"""Tiled inference and the Python API."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import textmef
from textmef.checkpoint import save_checkpoint
from textmef.errors import CheckpointError, InputError
from textmef.inference import fuse_tensors, tile_grid
from textmef.models import FusionNet, model_config


def scene(height, width, seed=1):
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(
        torch.rand(1, 3, height // 4, width // 4, generator=g),
        size=(height, width),
        mode="bilinear",
        align_corners=False,
    )
    return (base * 0.4).clamp(0, 1), (base * 1.8).clamp(0, 1)


class LocalNet(torch.nn.Module):
    """A purely local model (receptive field 5x5): tiling must reproduce it exactly."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(6, 3, 5, padding=2)

    def forward(self, under, over):
        return self.conv(torch.cat([under, over], 1))


def test_tiles_cover_the_image_and_respect_the_tile_size():
    covered = torch.zeros(70, 130, dtype=torch.int32)
    for rows, cols in tile_grid(70, 130, 32, 8):
        assert rows.stop - rows.start <= 32 and cols.stop - cols.start <= 32
        covered[rows, cols] += 1
    assert covered.min() >= 1


def test_tiled_blending_is_exact_for_a_local_model():
    torch.manual_seed(0)
    under, over = scene(40, 150)
    net = LocalNet()
    with torch.no_grad():
        full = net(under, over)
    tiled = fuse_tensors(net, under, over, tile=32, overlap=8)
    torch.testing.assert_close(tiled, full, rtol=1e-5, atol=1e-5)


def test_tiled_and_untiled_fusionnet_agree_within_one_level():
    torch.manual_seed(0)
    model = FusionNet(model_config("textmef-tiny")).eval()
    under, over = scene(48, 160)  # 4 tiles wide, 2 tiles high at tile=48
    full = fuse_tensors(model, under, over, tile=0)
    tiled = fuse_tensors(model, under, over, tile=48, overlap=16)
    # The network must change the image noticeably, or agreement would prove nothing.
    assert (full - under - over).abs().mean() > 5 / 255
    assert (tiled - full).abs().max() < 1 / 255


def test_tile_not_larger_than_overlap_is_rejected():
    with pytest.raises(ValueError, match="must exceed overlap"):
        list(tile_grid(100, 100, 16, 16))


@pytest.fixture
def tiny_weights(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(FusionNet(model_config("textmef-tiny")), tmp_path / "tiny.safetensors")


def test_fuse_returns_the_input_kind(tiny_weights):
    under, over = scene(20, 24)
    model = textmef.load_model(tiny_weights)
    out_t = textmef.fuse(under, over, model=model)
    assert out_t.shape == under.shape and 0 <= out_t.min() and out_t.max() <= 1
    u8 = (under[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    o8 = (over[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    out_a = textmef.fuse(u8, o8, model=model)
    assert out_a.dtype == np.uint8 and out_a.shape == u8.shape
    out16 = textmef.fuse(u8.astype(np.uint16) * 257, o8.astype(np.uint16) * 257, model=model)
    assert out16.dtype == np.uint16
    np.testing.assert_allclose(out16 / 65535, out_a / 255, atol=2 / 255)


def test_fuse_rejects_mismatched_sizes(tiny_weights):
    with pytest.raises(InputError, match="differ in size"):
        textmef.fuse(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9), weights=tiny_weights)


def test_missing_packaged_checkpoint_is_explained(monkeypatch):
    import textmef.api

    monkeypatch.setattr(textmef.api, "packaged_weights_path", lambda: None)
    with pytest.raises(CheckpointError, match="lacks its packaged weights"):
        textmef.load_model()


def test_image_within_the_pixel_budget_is_one_tile_whatever_its_shape():
    assert list(tile_grid(400, 600, 512, 32)) == [(slice(0, 400), slice(0, 600))]
    assert len(list(tile_grid(1536, 2048, 512, 32))) > 1
