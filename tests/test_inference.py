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
from textmef.tiling import tiles_with_cores


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


def test_tiles_are_full_width_strips_that_cover_the_image_within_the_pixel_budget():
    covered = torch.zeros(170, 130, dtype=torch.int32)
    for rows, cols in tile_grid(170, 130, 48, 8):
        assert cols == slice(0, 130)
        assert (rows.stop - rows.start) * 130 <= max(48 * 48, 32 * 130)
        covered[rows, cols] += 1
    assert covered.min() >= 1


def test_tile_cores_partition_the_rows():
    for height, width, tile, overlap in [(170, 130, 48, 8), (802, 1200, 512, 32), (999, 50, 20, 4)]:
        counted = torch.zeros(height, dtype=torch.int32)
        for rows, _, core in tiles_with_cores(height, width, tile, overlap):
            assert 0 <= core.start < core.stop <= rows.stop - rows.start
            counted[rows.start + core.start : rows.start + core.stop] += 1
        assert bool((counted == 1).all()), (height, width, tile, overlap)


def test_tiled_blending_is_exact_for_a_local_model():
    torch.manual_seed(0)
    under, over = scene(40, 150)
    net = LocalNet()
    with torch.no_grad():
        full = net(under, over)
    tiled = fuse_tensors(net, under, over, tile=32, overlap=8)
    torch.testing.assert_close(tiled, full, rtol=1e-5, atol=1e-5)


def _statistics_heavy_tiny_model() -> FusionNet:
    """The tiny network with its normalisation and gates made to matter.

    At initialisation (weights ~ N(0, 0.02)) the global operations barely move the output,
    so agreement would prove little: larger weights make every statistic count.
    """
    torch.manual_seed(0)
    model = FusionNet(model_config("textmef-tiny")).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.normal_(0, 0.1)
    return model


def test_tiled_fusionnet_equals_the_whole_image_with_shared_statistics():
    model = _statistics_heavy_tiny_model()
    under, over = scene(360, 96)  # 4 strips of 128 rows at tile=64, overlap=32
    full = fuse_tensors(model, under, over, tile=0)
    tiled = fuse_tensors(model, under, over, tile=64, overlap=32)
    # The network must change the image noticeably, or agreement would prove nothing.
    assert (full - under - over).abs().mean() > 20 / 255
    assert (tiled - full).abs().max() < 0.05 / 255


def test_tiles_fused_on_their_own_drift_from_the_whole_image():
    model = _statistics_heavy_tiny_model()
    under, over = scene(360, 96)
    full = fuse_tensors(model, under, over, tile=0)
    alone = fuse_tensors(model, under, over, tile=64, overlap=32, shared_statistics=False)
    assert (alone - full).abs().max() > 1 / 255


def test_progress_counts_both_passes():
    model = _statistics_heavy_tiny_model()
    under, over = scene(200, 96)
    calls = []
    fuse_tensors(model, under, over, tile=48, overlap=16, on_tile=lambda d, t: calls.append((d, t)))
    total = len(tiles_with_cores(200, 96, 48, 16)) * 2
    assert calls == [(i, total) for i in range(1, total + 1)]


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
