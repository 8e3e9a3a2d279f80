"""Classic fusion baselines: the network's call signature, Mertens and enfuse behaviour."""

import numpy as np
import pytest
import torch
from conftest import textured

from textmef.baselines import (
    EnfuseFusion,
    MeanFusion,
    MertensFusion,
    enfuse_available,
    enfuse_fusion,
    enfuse_version,
    mean_fusion,
    mertens,
    mertens_fusion,
)
from textmef.baselines.enfuse import EnfuseError, EnfuseNotFoundError

SIZE = (48, 64)  # (H, W): small enough that enfuse runs in a few milliseconds
FUNCTIONS = {"mean": mean_fusion, "mertens": mertens_fusion, "enfuse": enfuse_fusion}
MODULES = {"mean": MeanFusion, "mertens": MertensFusion, "enfuse": EnfuseFusion}
# Enfuse's rounding to 16 bits varies from run to run by one level; the others are exact.
REPEAT_ATOL = {"mean": 0.0, "mertens": 0.0, "enfuse": 1.5 / 65535}

needs_enfuse = pytest.mark.skipif(
    not enfuse_available(),
    reason="enfuse binary not installed (Debian package enfuse / enblend-enfuse)",
)


def _param(name):
    marks = [needs_enfuse] if name == "enfuse" else []
    return pytest.param(name, marks=marks, id=name)


ALL = [_param(name) for name in FUNCTIONS]


def chw(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def pair_batch(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Textured dark and bright exposures, (batch, 3, H, W)."""
    rng = np.random.default_rng(seed)
    under = torch.stack([chw(textured(0.15, rng, SIZE)) for _ in range(batch)])
    over = torch.stack([chw(textured(0.85, rng, SIZE)) for _ in range(batch)])
    return under, over


def test_mean_of_two_constant_images_is_their_average():
    under = torch.full((1, 3, *SIZE), 0.2)
    over = torch.full((1, 3, *SIZE), 0.6)
    torch.testing.assert_close(mean_fusion(under, over), torch.full((1, 3, *SIZE), 0.4))


@pytest.mark.parametrize("name", ALL)
def test_output_keeps_shape_dtype_range_and_device(name):
    under, over = pair_batch(2)
    fused = FUNCTIONS[name](under.double(), over.double())
    assert fused.shape == under.shape
    assert fused.dtype == torch.float32
    assert fused.device == under.device
    assert 0.0 <= fused.min() and fused.max() <= 1.0


@pytest.mark.parametrize("name", ALL)
def test_single_image_in_gives_single_image_out(name):
    under, over = pair_batch(1)
    fused = FUNCTIONS[name](under[0], over[0])
    assert fused.shape == under.shape[1:]
    torch.testing.assert_close(
        fused, FUNCTIONS[name](under, over)[0], rtol=0, atol=REPEAT_ATOL[name]
    )


@pytest.mark.parametrize("name", ALL)
def test_batch_result_equals_per_image_results(name):
    under, over = pair_batch(3)
    batch = FUNCTIONS[name](under, over)
    singles = torch.stack([FUNCTIONS[name](under[i], over[i]) for i in range(3)])
    torch.testing.assert_close(batch, singles, rtol=0, atol=REPEAT_ATOL[name])


@pytest.mark.parametrize("name", ALL)
def test_module_equals_function(name):
    under, over = pair_batch(2)
    module = MODULES[name]()
    assert isinstance(module, torch.nn.Module) and not list(module.parameters())
    torch.testing.assert_close(
        module(under, over), FUNCTIONS[name](under, over), rtol=0, atol=REPEAT_ATOL[name]
    )


@pytest.mark.parametrize("name", ALL)
def test_registered_method_equals_the_pair_function(name):
    from textmef.methods import build_method, list_methods

    assert name in list_methods()
    under, over = pair_batch(1)
    fused = build_method(name)([under, over])
    expected = FUNCTIONS[name](under, over)
    torch.testing.assert_close(fused, expected, rtol=0, atol=max(REPEAT_ATOL[name], 1e-6))


def test_mertens_tensor_form_equals_numpy_mertens():
    under, over = pair_batch(2)
    fused = mertens_fusion(under, over)
    for i in range(2):
        expected = mertens([under[i].permute(1, 2, 0).numpy(), over[i].permute(1, 2, 0).numpy()])
        np.testing.assert_array_equal(fused[i].permute(1, 2, 0).numpy(), expected)


@pytest.mark.parametrize("name", [_param("mertens"), _param("enfuse")])
def test_fusing_an_image_with_itself_gives_that_image(name):
    image = torch.cat(pair_batch(1))  # one dark and one bright image
    fused = FUNCTIONS[name](image, image)
    assert (fused - image).abs().max() <= 1.5 / 255


@needs_enfuse
def test_enfuse_result_lies_between_a_dark_and_a_bright_exposure():
    under, over = pair_batch(1)
    fused = enfuse_fusion(under, over)
    assert under.mean() < fused.mean() < over.mean()


@needs_enfuse
def test_enfuse_reports_its_version():
    version = enfuse_version()
    assert version is not None and version[0].isdigit()


@needs_enfuse
def test_enfuse_failure_raises_runtime_error_with_its_message():
    under, over = pair_batch(1)
    with pytest.raises(RuntimeError, match="enfuse failed.*no-such-option") as info:
        enfuse_fusion(under, over, extra_args=("--no-such-option",))
    assert isinstance(info.value, EnfuseError)


def test_wrong_enfuse_path_raises_a_clear_error():
    under, over = pair_batch(1)
    with pytest.raises(FileNotFoundError, match="/nonexistent/enfuse.*enblend-enfuse") as info:
        enfuse_fusion(under, over, binary="/nonexistent/enfuse")
    assert isinstance(info.value, EnfuseNotFoundError)
    assert not enfuse_available("/nonexistent/enfuse")
    assert enfuse_version("/nonexistent/enfuse") is None


def test_enfuse_env_var_picks_the_binary(monkeypatch):
    monkeypatch.setenv("TEXTMEF_ENFUSE", "/nonexistent/enfuse")
    assert not enfuse_available()
    with pytest.raises(FileNotFoundError, match="TEXTMEF_ENFUSE"):
        enfuse_fusion(*pair_batch(1))


def test_enfuse_module_does_not_look_for_the_binary_until_called():
    module = EnfuseFusion(binary="/nonexistent/enfuse")
    with pytest.raises(FileNotFoundError):
        module(*pair_batch(1))


def test_enfuse_rejects_a_string_as_extra_args():
    with pytest.raises(TypeError, match="sequence of strings"):
        EnfuseFusion(extra_args="--hard-mask")


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_uint8_tensors_raise_type_error(name):
    under = torch.zeros((1, 3, *SIZE), dtype=torch.uint8)
    with pytest.raises(TypeError, match="float tensor"):
        FUNCTIONS[name](under, under.clone())


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_mismatched_shapes_raise_value_error(name):
    under, over = pair_batch(1)
    with pytest.raises(ValueError, match="differ in shape"):
        FUNCTIONS[name](under, over[..., :-1])


@pytest.mark.parametrize("shape", [(1, 4, 8, 8), (3, 8), (1, 1, 3, 8, 8)])
def test_non_rgb_shapes_raise_value_error(shape):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        mean_fusion(torch.zeros(shape), torch.zeros(shape))


def test_numpy_arrays_raise_type_error():
    under = np.zeros((3, 8, 8), dtype=np.float32)
    with pytest.raises(TypeError, match="torch.Tensor"):
        mertens_fusion(under, under)


def test_mertens_uses_the_papers_weights_and_make_pairs_keeps_opencvs_defaults():
    import cv2

    from textmef.data import stacks

    rng = np.random.default_rng(5)
    # 8-bit levels, so that the uint8 path below sees exactly the same values.
    frames = [
        (np.rint(np.clip(rng.random((40, 48, 3)) * s, 0, 1) * 255) / 255).astype(np.float32)
        for s in (0.4, 1.6)
    ]
    as_uint8 = [np.rint(f[..., ::-1] * 255).astype(np.uint8) for f in frames]

    def opencv(*weights):
        return np.clip(cv2.createMergeMertens(*weights).process(as_uint8)[..., ::-1], 0, 1)

    paper, opencv_default = opencv(1.0, 1.0, 1.0), opencv()
    assert np.abs(paper - opencv_default).max() > 0.01  # the two settings really differ
    np.testing.assert_allclose(mertens(frames), paper, atol=1e-6)
    np.testing.assert_allclose(stacks.mertens(frames), opencv_default, atol=1e-6)
