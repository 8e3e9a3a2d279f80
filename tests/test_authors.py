"""The authors' released files: their layout to ours and back, on the shared known answer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import textmef
from textmef.authors import (
    authors_dead_keys,
    from_authors_prompts,
    from_authors_state,
    read_authors_file,
    to_authors_state,
)
from textmef.checkpoint import read_checkpoint
from textmef.cli import main
from textmef.clip.config import CLIP_CONFIGS, CLIPConfig, TextConfig
from textmef.clip.model import build_clip
from textmef.errors import CheckpointError
from textmef.models import FusionNet, model_config, set_scan_backend

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "official-checkpoint"
NETWORK = FIXTURE / "epoch_0_G.pth"
PROMPTS = FIXTURE / "best_prompt_round0.pth"
needs_fixture = pytest.mark.skipif(
    not NETWORK.is_file(),
    reason=f"the authors'-layout fixture is not here ({FIXTURE}); it lives in ../shared",
)
DEAD_VALUES = 45_696


def _pair(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    def load(name: str) -> torch.Tensor:
        pixels = np.asarray(Image.open(FIXTURE / name).convert("RGB"), dtype=np.float64) / 255
        return torch.from_numpy(pixels).permute(2, 0, 1)[None].to(dtype)

    return load("under.png"), load("over.png")


def _converted_model() -> FusionNet:
    conversion = from_authors_state(read_authors_file(NETWORK), NETWORK)
    model = FusionNet(conversion.config)
    model.load_state_dict(conversion.state, strict=True)
    return model.eval()


@needs_fixture
def test_the_authors_state_dict_becomes_the_papers_model_dropping_the_dead_values():
    conversion = from_authors_state(read_authors_file(NETWORK), NETWORK)
    assert conversion.config == model_config("textmef")
    assert conversion.dropped_values == DEAD_VALUES
    assert set(conversion.dropped) == set(authors_dead_keys(conversion.config))
    assert sum(t.numel() for t in conversion.state.values()) == 1_275_443


@needs_fixture
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_float64_output_equals_the_authors_network_within_1e9_of_its_magnitude(backend):
    expected = np.load(FIXTURE / "expected_float64.npy")
    model = _converted_model().double()
    set_scan_backend(model, backend)
    with torch.no_grad():
        raw = model(*_pair(torch.float64))[0].permute(1, 2, 0).numpy()
    assert raw.shape == expected.shape
    assert np.abs(raw - expected).max() <= 1e-9 * np.abs(expected).max()
    assert raw.min() < -1 and raw.max() > 2  # unclamped, as the known answer is


@needs_fixture
def test_float32_output_on_the_default_backend_is_within_1e4_of_its_magnitude():
    expected = np.load(FIXTURE / "expected_float64.npy")
    with torch.no_grad():
        raw = _converted_model()(*_pair(torch.float32))[0].permute(1, 2, 0).double().numpy()
    assert np.abs(raw - expected).max() <= 1e-4 * np.abs(expected).max()


@needs_fixture
def test_authors_to_textmef_to_authors_is_bit_identical(tmp_path, capsys):
    ours, back = tmp_path / "model.safetensors", tmp_path / "back.pth"
    assert main(["convert", str(NETWORK), "-o", str(ours)]) == 0
    out = capsys.readouterr().out
    assert f"dropped {DEAD_VALUES:,} values in 15 tensors" in out
    assert "deepfusion1.cross_mamba.in_proj_extra.weight" in out and "f_to_token.proj.weight" in out
    assert read_checkpoint(ours)[2]["model"] == "textmef"
    assert main(["convert", str(ours), "--to", "authors", "-o", str(back)]) == 0
    original = torch.load(NETWORK, weights_only=True)
    returned = torch.load(back, weights_only=True)
    # What the authors' strict load_state_dict needs: the same keys and shapes.
    assert list(returned) == list(original) or set(returned) == set(original)
    assert all(returned[k].shape == original[k].shape for k in original)
    dead = authors_dead_keys(model_config("textmef"))
    for key, tensor in original.items():
        if key not in dead:
            assert torch.equal(returned[key], tensor), key
            assert returned[key].dtype == tensor.dtype


@needs_fixture
def test_dead_entries_are_filled_as_the_authors_initialisation_would():
    state = to_authors_state(_converted_model().state_dict(), model_config("textmef"))
    assert torch.equal(state["f_to_token.norm.body.weight"], torch.ones(64))
    assert abs(float(state["under_encoder.1.identity.weight"].std()) - 0.02) < 0.002
    bound = 1 / 8  # 1/sqrt(64) for the 64-input Linear and the 1x1 conv biases
    extra = state["deepfusion1.cross_mamba.in_proj_extra.weight"]
    assert extra.shape == (256, 64) and float(extra.abs().max()) <= bound


@needs_fixture
def test_fuse_and_load_model_take_the_authors_file_directly(tmp_path, caplog):
    model = textmef.load_model(NETWORK)
    assert model.config == model_config("textmef")
    fused = tmp_path / "fused.png"
    with caplog.at_level("INFO"):
        code = main(["fuse", str(FIXTURE / "under.png"), str(FIXTURE / "over.png"),
                     "--weights", str(NETWORK), "-o", str(fused)])  # fmt: skip
    assert code == 0 and fused.is_file()
    lines = [r.getMessage() for r in caplog.records if "authors' checkpoint layout" in r.message]
    assert len(lines) == 1 and "converted in memory" in lines[0]


def test_the_way_back_refuses_models_the_authors_code_cannot_build(tmp_path, capsys):
    from textmef.checkpoint import save_checkpoint

    small = save_checkpoint(FusionNet(model_config("textmef-tiny")), tmp_path / "t.safetensors")
    assert main(["convert", str(small), "--to", "authors", "-o", str(tmp_path / "t.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"textmef: error: {small}: the authors' code builds")
    assert "\n" not in err and not (tmp_path / "t.pth").exists()


# ---- bad files: one line naming the file, exit 2, nothing written ---------------------------
class _RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _bad_file(kind: str, folder: Path) -> Path:
    path = folder / f"{kind}.pth"
    if kind == "needs-code":
        payload = _RunsCode()
        payload.marker = str(folder / "code-ran")
        torch.save({"w": payload}, path)
        return path
    if kind == "truncated":
        data = NETWORK.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path
    state = torch.load(NETWORK, weights_only=True)
    if kind == "other-network":
        state = {"features.0.weight": torch.zeros(8, 3, 3, 3), "classifier.weight": torch.zeros(2)}
    elif kind == "missing-key":
        del state["refine.conv_last.weight"]
    elif kind == "extra-key":
        state["refine.bonus.weight"] = torch.zeros(3)
    elif kind == "wrong-shape":
        state["refine.conv_last.weight"] = torch.zeros(3, 64, 5, 5)
    torch.save(state, path)
    return path


BAD = {
    "needs-code": "would need code to unpickle, which textmef never runs",
    "truncated": "is truncated or damaged",
    "other-network": "is not a state dict of the authors' TextMEF FusionNet",
    "missing-key": "missing refine.conv_last.weight",
    "extra-key": "unexpected refine.bonus.weight",
    "wrong-shape": "refine.conv_last.weight (3, 64, 5, 5) (expected (3, 64, 3, 3))",
}


@needs_fixture
@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_authors_files_get_one_line_and_nothing_is_written(kind, tmp_path, capsys):
    bad = _bad_file(kind, tmp_path)
    out = tmp_path / "out" / "model.safetensors"
    out.parent.mkdir()
    assert main(["convert", str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"textmef: error: {bad}: "), err
    assert BAD[kind] in err
    assert list(out.parent.iterdir()) == []
    assert not (tmp_path / "code-ran").exists()
    with pytest.raises(CheckpointError, match=str(bad.name)):
        textmef.load_model(bad)


# ---- prompts ------------------------------------------------------------------------------
def _clip_512():
    torch.manual_seed(0)
    tiny = CLIP_CONFIGS["tiny"]
    config = CLIPConfig(
        embed_dim=tiny.embed_dim, vision=tiny.vision, text=TextConfig(width=512, layers=1, heads=8)
    )
    return build_clip(config).eval()


def _authors_prompts(width: int = 512) -> dict[str, torch.Tensor]:
    if PROMPTS.is_file() and width == 512:
        return torch.load(PROMPTS, weights_only=True)
    generator = torch.Generator().manual_seed(1)
    return {"module.embedding_prompt": torch.randn(3, 77, width, generator=generator)}


def test_authors_prompts_become_a_textmef_prompt_file_for_the_given_clip(tmp_path):
    from textmef.clip.loading import clip_fingerprint
    from textmef.clip.prompts import load_prompts, save_prompts
    from textmef.losses import CLIPExposureLoss

    clip = _clip_512()
    state = _authors_prompts()
    conversion = from_authors_prompts(state, clip)
    learner = conversion.learner
    assert learner.mode == "learned" and learner.classes == ("over", "under", "well")
    raw = state["module.embedding_prompt"]
    eot = int(learner.eot_index[0])
    assert eot == 17  # start token, 16 placeholders, end token
    torch.testing.assert_close(learner.embeddings, raw[:, : eot + 1], rtol=0, atol=0)
    if PROMPTS.is_file():
        assert "text_encoder.positional_embedding" in conversion.ignored
    path = save_prompts(tmp_path / "p.safetensors", learner, clip, clip_fingerprint(clip))
    prompts = load_prompts(path)
    prompts.check_clip(clip)
    loss = CLIPExposureLoss.from_prompts(clip, prompts)
    assert torch.isfinite(loss(torch.rand(1, 3, 64, 64)))
    # The causal tower: features of the cut prompts equal those of the full 77 tokens.
    full = clip.encode_token_embeddings(raw.float(), torch.full((3,), eot))
    cut = clip.encode_token_embeddings(learner.embeddings, learner.eot_index)
    torch.testing.assert_close(cut, full, rtol=1e-5, atol=1e-5)


def test_prompts_of_another_width_are_a_clear_error():
    clip = build_clip("tiny")  # text width 32
    with pytest.raises(CheckpointError, match="512 wide but this CLIP's text tower is 32 wide"):
        from_authors_prompts(_authors_prompts(512), clip)


def test_convert_cli_writes_prompts_and_says_what_it_ignored(tmp_path, capsys):
    from safetensors.torch import save_file

    clip = build_clip("tiny")
    clip_file = tmp_path / "tiny-clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(clip_file))
    source = tmp_path / "best_prompt_round0.pth"
    state = _authors_prompts(32)
    state["module.text_encoder.ln_final.weight"] = torch.ones(32)
    torch.save(state, source)
    out = tmp_path / "prompts.safetensors"
    assert main(["convert", str(source), "--clip", str(clip_file), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ignored 1 tensor(s)" in printed and "tiny-clip.safetensors" in printed
    from textmef.clip.prompts import load_prompts

    prompts = load_prompts(out)
    assert prompts.info["converted_from"] == "best_prompt_round0.pth"
    assert json.loads(json.dumps(prompts.info["authors_rows"])) == ["over", "under", "well"]
