"""The guided full-resolution path: local affine maps fitted low, applied at full size."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import textmef
from textmef.errors import InputError
from textmef.guided import (
    GuidedUpsample,
    _box_sum_1d,
    _box_sum_opencv,
    apply_local_affine,
    box_filter,
    fit_local_affine,
    guided_upsample,
)
from textmef.inference import fuse_guided, fuse_tensors, plan_fusion
from textmef.models import FusionNet, model_config
from textmef.tiling import working_size


class ToneCurve(torch.nn.Module):
    """A stand-in network with a known answer: a global tone curve of the exposures' mean."""

    def __init__(self, gamma: float = 0.6) -> None:
        super().__init__()
        self.gamma = gamma
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # so the API can find a device

    def forward(self, under, over):
        return ((under + over) / 2).clamp(min=0) ** self.gamma + self.anchor.detach()


def textured_scene(height, width, seed=0):
    """Smooth illumination times fine texture: detail that a downscaled pass loses."""
    g = torch.Generator().manual_seed(seed)
    light = F.interpolate(
        torch.rand(1, 3, 6, 8, generator=g), size=(height, width), mode="bicubic"
    ).clamp(0.05, 1)
    texture = 0.75 + 0.25 * torch.rand(1, 1, height, width, generator=g)
    scene = (light * texture).clamp(0, 1)
    return (scene * 0.35).clamp(0, 1), (scene * 1.6).clamp(0, 1)


def brute_force_box_mean(x, r):
    out = torch.empty_like(x)
    h, w = x.shape[-2:]
    for i in range(h):
        for j in range(w):
            window = x[..., max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1]
            out[..., i, j] = window.mean(dim=(-2, -1))
    return out


def test_box_filter_is_the_mean_over_windows_cut_at_the_edges():
    x = torch.rand(2, 3, 17, 23, dtype=torch.float64)
    for r in (1, 4, 30):
        assert torch.allclose(box_filter(x, r), brute_force_box_mean(x, r), atol=1e-12)
    assert torch.equal(box_filter(x, 0), x)


def test_box_sums_of_opencv_and_of_pytorch_agree():
    x = torch.rand(1, 4, 40, 57)
    r = 6
    torch_sums = _box_sum_1d(_box_sum_1d(x.double(), r, -2), r, -1)
    assert torch.allclose(_box_sum_opencv(x, r).double(), torch_sums, rtol=1e-6, atol=1e-5)


def test_fit_recovers_an_exact_affine_colour_transform():
    g = torch.Generator().manual_seed(3)
    guide = torch.rand(1, 6, 40, 50, generator=g)
    matrix = torch.randn(6, 3, generator=g) * 0.3
    offset = torch.tensor([0.1, -0.2, 0.05])
    target = torch.einsum("bihw,ij->bjhw", guide, matrix) + offset[None, :, None, None]
    maps = fit_local_affine(guide, target, radius=5, eps=1e-8)
    assert torch.allclose(
        maps.weight, matrix[None, :, :, None, None].expand_as(maps.weight), atol=1e-3
    )
    assert torch.allclose(apply_local_affine(maps, guide), target, atol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("strip_pixels", [1, 777, 1 << 30])
def test_streamed_application_equals_upsampling_every_map_at_once(backend, strip_pixels):
    g = torch.Generator().manual_seed(0)
    maps = fit_local_affine(
        torch.rand(2, 6, 23, 31, generator=g), torch.rand(2, 3, 23, 31, generator=g), 3
    )
    guide = torch.rand(2, 6, 101, 77, generator=g)
    size = guide.shape[-2:]
    weight = F.interpolate(
        maps.weight.flatten(1, 2), size=size, mode="bilinear", align_corners=False
    )
    expected = torch.einsum("bijhw,bihw->bjhw", weight.unflatten(1, (6, 3)), guide)
    expected += F.interpolate(maps.bias, size=size, mode="bilinear", align_corners=False)
    for parts in (guide, [guide[:, :3], guide[:, 3:]]):
        out = apply_local_affine(maps, parts, strip_pixels=strip_pixels, backend=backend)
        assert torch.allclose(out, expected, atol=1e-5)


def test_working_size_keeps_the_aspect_within_the_budget():
    assert working_size(400, 600, 512) == (400, 600)
    h, w = working_size(3000, 4000, 512)
    assert h * w <= 512 * 512 and abs(w / h - 4 / 3) < 0.01 and h * w > 0.99 * 512 * 512
    with pytest.raises(InputError, match="work size"):
        working_size(100, 100, 10)


def test_guided_path_is_the_network_itself_at_the_working_size():
    torch.manual_seed(0)
    net = FusionNet(model_config("textmef-tiny")).eval()
    under, over = textured_scene(48, 64)
    assert not plan_fusion(48, 64, work_size=64).guided
    with torch.no_grad():
        direct = fuse_tensors(net, under, over, tile=0)
    assert torch.equal(fuse_guided(net, under, over, work_size=64), direct)
    assert torch.equal(torch.from_numpy(textmef.fuse(
        under[0].permute(1, 2, 0).numpy(), over[0].permute(1, 2, 0).numpy(), model=net, work_size=64
    )).permute(2, 0, 1)[None], direct.clamp(0, 1))  # fmt: skip


def test_guided_path_reproduces_a_global_tone_curve_at_full_resolution():
    under, over = textured_scene(600, 800)
    curve = ToneCurve()
    with torch.no_grad():
        expected = curve(under, over)
    fused = fuse_guided(curve, under, over, work_size=128)  # 1/5.4 of the linear size
    error = (fused - expected).abs() * 255
    assert plan_fusion(600, 800, 128).guided
    # A local affine map approximates the curve over each window's range of values: on this
    # per-pixel noise texture it is within 1/255 on average (measured 0.98; 0.67 at 1/2.7).
    assert error.mean() < 1.25 and torch.quantile(error.flatten()[::7], 0.99) < 6.0
    # What the guide adds: plain upsampling of the small result loses the texture (4.6/255).
    small = curve(*(F.adaptive_avg_pool2d(x, (96, 128)) for x in (under, over)))
    blurred = F.interpolate(small, size=(600, 800), mode="bilinear", align_corners=False)
    assert ((blurred - expected).abs() * 255).mean() > 3 * error.mean()


def test_a_step_edge_in_the_exposures_stays_a_step_at_full_resolution():
    height, width, edge = 400, 600, 301  # an edge that falls inside a low-resolution pixel
    scene = torch.full((1, 3, height, width), 0.2)
    scene[..., edge:] = 0.8
    under, over = scene * 0.4, (scene * 1.5).clamp(0, 1)
    curve = ToneCurve()
    fused = fuse_guided(curve, under, over, work_size=64)  # 1/7.7 of the linear size
    row = fused[0, 1, height // 2]
    with torch.no_grad():
        left, right = curve(under, over)[0, 1, 0, [0, -1]].tolist()
    step = right - left
    # Not blurred across: no pixel is on the ramp between 10 % and 90 % of the step (plain
    # upsampling of the small result puts ~8 pixels there), and the step is one pixel wide.
    on_ramp = (row > left + 0.1 * step) & (row < right - 0.1 * step)
    assert int(on_ramp.sum()) == 0
    assert float(row[edge] - row[edge - 1]) > 0.9 * step
    # Away from the edge both sides keep their tone (measured within 1/255 at 2+ pixels).
    assert torch.allclose(row[: edge - 2], torch.tensor(left), atol=2 / 255)
    assert torch.allclose(row[edge + 2 :], torch.tensor(right), atol=2 / 255)
    small = curve(*(F.adaptive_avg_pool2d(x, (52, 78)) for x in (under, over)))
    blurred = F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
    blurred_row = blurred[0, 1, height // 2]
    assert int(((blurred_row > left + 0.1 * step) & (blurred_row < right - 0.1 * step)).sum()) > 4


def test_module_form_matches_the_function():
    low = torch.rand(1, 3, 20, 30)
    guide = torch.rand(1, 6, 80, 120)
    assert torch.equal(GuidedUpsample()(low, guide), guided_upsample(low, guide))
    with pytest.raises(ValueError):
        GuidedUpsample(radius=0)


def test_api_takes_the_guided_path_above_the_working_size_and_says_so(caplog):
    under, over = textured_scene(200, 300)
    curve = ToneCurve()
    u, o = (x[0].permute(1, 2, 0).numpy() for x in (under, over))
    with caplog.at_level("INFO", logger="textmef.api"):
        guided = textmef.fuse(u, o, model=curve, work_size=100)
    assert len(caplog.records) == 1 and "at 122x81" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="textmef.api"):
        full = textmef.fuse(u, o, model=curve, work_size=100, full_res=True)
    assert not caplog.records
    expected = curve(under, over).detach().clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert np.abs(full - expected).max() < 1e-6
    assert 0 < np.abs(guided - expected).mean() < 1 / 255
    with pytest.raises(InputError, match="work size"):
        textmef.fuse(u, o, model=curve, work_size=8)


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, torch
    sys.path.insert(0, sys.argv[1])
    from test_guided import ToneCurve
    from textmef.inference import fuse_guided
    torch.set_num_threads(2)
    h, w = 3000, 4000
    under = torch.rand(1, 3, h, w) * 0.3
    over = (under * 3).clamp(0, 1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out = fuse_guided(ToneCurve(), under, over, work_size=512)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"before": before, "peak": peak, "shape": list(out.shape)}))
    """
)


def test_memory_stays_bounded_for_a_12_megapixel_pair(tmp_path):
    """Beyond the two inputs and the output (144 MB each at 12 MP), the guided path needs
    only working-size buffers and one strip: no full-size copies of coefficients."""
    script = tmp_path / "memory.py"
    script.write_text(MEMORY_SCRIPT)
    tests = str(__import__("pathlib").Path(__file__).parent)
    result = subprocess.run([sys.executable, str(script), tests], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["shape"] == [1, 3, 3000, 4000]
    output_gb = 3000 * 4000 * 3 * 4 / 2**30
    assert report["peak"] - report["before"] < output_gb + 0.35, report
