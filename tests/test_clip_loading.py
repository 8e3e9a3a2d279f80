"""Loading CLIP weights: every released format, the HF renaming, errors, file identity."""

from __future__ import annotations

import copy
import hashlib
import inspect
import logging
import socket
import urllib.request
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from textmef.checkpoint import save_checkpoint
from textmef.clip import loading
from textmef.clip.config import CLIP_CONFIGS, CLIPConfig, TextConfig, VisionConfig
from textmef.clip.loading import (
    OPENAI_VIT_B_32_SHA256,
    OPENAI_VIT_B_32_URL,
    clip_fingerprint,
    download_clip,
    file_sha256,
    from_hf_state_dict,
    identify_clip_file,
    infer_config,
    load_clip,
    read_clip_state_dict,
    to_hf_state_dict,
)
from textmef.clip.model import CLIP, build_clip
from textmef.errors import CheckpointError
from textmef.models import FusionNet, model_config

TINY = CLIP_CONFIGS["tiny"]
SOT, EOT = 49406, 49407
ARCHIVE_EXTRAS = {"input_resolution", "context_length", "vocab_size"}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Loading must never reach the network; any socket connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ---- the tiny model, its inputs and writers for each format -------------------------------
def _tiny_model() -> CLIP:
    torch.manual_seed(0)
    model = build_clip("tiny").eval()
    # OpenAI's init zeroes biases; noise makes a swapped or dropped bias show in the features.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def tiny() -> CLIP:
    return _tiny_model()


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 224, 224, generator=gen)
    tokens = torch.zeros(3, TINY.text.context_length, dtype=torch.long)
    for row, length in enumerate((5, 12, 30)):
        tokens[row, 0] = SOT
        tokens[row, 1 : length - 1] = torch.randint(1, SOT, (length - 2,), generator=gen)
        tokens[row, length - 1] = EOT
    return images, tokens


def _features(model: CLIP, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    images, tokens = inputs
    with torch.no_grad():
        return model.image_features(images), model.encode_text(tokens)


class _OpenAIArchive(nn.Module):
    """Holds the CLIP's submodules and parameters under their own names, like OpenAI's model.

    The CLIP itself is kept out of the module tree so its non-persistent normalisation
    buffers do not end up in the archive (TorchScript saves every buffer).
    """

    def __init__(self, clip: CLIP) -> None:
        super().__init__()
        for name, child in clip.named_children():
            self.add_module(name, child)
        for name, param in clip.named_parameters(recurse=False):
            self.register_parameter(name, param)
        # The metadata entries OpenAI's archives carry next to the weights.
        self.register_buffer("input_resolution", torch.tensor(clip.config.vision.image_size))
        self.register_buffer("context_length", torch.tensor(clip.config.text.context_length))
        self.register_buffer("vocab_size", torch.tensor(clip.config.text.vocab_size))
        object.__setattr__(self, "clip", clip)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(pixels)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens)


def save_torchscript(model: CLIP, path: Path, dtype: torch.dtype = torch.float32) -> Path:
    clip = copy.deepcopy(model).to(dtype)
    pixels = torch.zeros(1, 3, 224, 224, dtype=dtype)
    tokens = torch.zeros(1, clip.config.text.context_length, dtype=torch.long)
    tokens[0, :2] = torch.tensor([SOT, EOT])
    with warnings.catch_warnings():
        # torch.jit is deprecated and warns about python ints in the trace; neither matters
        # for an archive that is only read for its weights.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace_module(
            _OpenAIArchive(clip), {"encode_image": (pixels,), "encode_text": (tokens,)}
        )
        torch.jit.save(traced, str(path))
    return path


def _jit_state_keys(path: Path) -> set[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return set(torch.jit.load(str(path), map_location="cpu").state_dict())


def _state(model: CLIP) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# format name -> (file name, expected detected format)
FILES = {
    "torchscript": ("ViT-tiny.pt", "openai-torchscript"),
    "torchscript-fp16": ("ViT-tiny-fp16.pt", "openai-torchscript"),
    "state-dict": ("tiny_state.pt", "torch-state-dict"),
    "open_clip-bin": ("open_clip_pytorch_model.bin", "open_clip-checkpoint"),
    "open_clip-safetensors": ("open_clip_model.safetensors", "safetensors"),
    "hf-safetensors": ("model.safetensors", "hf-safetensors"),
    "hf-bin": ("pytorch_model.bin", "hf-pytorch"),
}
FP32_FORMATS = [name for name in FILES if name != "torchscript-fp16"]


@pytest.fixture(scope="module")
def files(tiny, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clip_files")
    paths = {name: root / name / fname for name, (fname, _) in FILES.items()}
    for path in paths.values():
        path.parent.mkdir()
    state = _state(tiny)
    save_torchscript(tiny, paths["torchscript"])
    save_torchscript(tiny, paths["torchscript-fp16"], torch.float16)
    torch.save(state, paths["state-dict"])
    torch.save(
        {
            "epoch": 32,
            "name": "tiny",
            "optimizer": {"state": {}, "param_groups": []},
            "state_dict": {f"module.{k}": v for k, v in state.items()},
        },
        paths["open_clip-bin"],
    )
    save_file(state, str(paths["open_clip-safetensors"]))
    hf = to_hf_state_dict(state)
    save_file(hf, str(paths["hf-safetensors"]), metadata={"format": "pt"})
    # Older transformers saved position_ids as persistent buffers; the loader drops them.
    hf_bin = dict(
        hf,
        **{
            f"{t}_model.embeddings.position_ids": torch.arange(n)[None]
            for t, n in (("text", 77), ("vision", 50))
        },
    )
    torch.save(hf_bin, paths["hf-bin"])
    return paths


# ---- every format -------------------------------------------------------------------------
def test_torchscript_archive_has_openai_names(tiny, files):
    for name in ("torchscript", "torchscript-fp16"):
        assert _jit_state_keys(files[name]) == set(tiny.state_dict()) | ARCHIVE_EXTRAS


@pytest.mark.parametrize("name", FP32_FORMATS)
def test_each_format_loads_to_identical_features(tiny, inputs, files, name):
    state, fmt = read_clip_state_dict(files[name])
    assert fmt == FILES[name][1]
    assert set(state) == set(tiny.state_dict())
    model = load_clip(files[name])
    assert model.config == TINY
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for got, want in zip(_features(model, inputs), _features(tiny, inputs)):
        assert torch.equal(got, want)


def test_fp16_archive_is_converted_to_float32(tiny, inputs, files):
    model = load_clip(files["torchscript-fp16"])
    assert model.config == TINY
    assert all(p.dtype == torch.float32 for p in model.parameters())
    rounded = copy.deepcopy(tiny).half().float()
    for key, value in model.state_dict().items():
        assert torch.equal(value, rounded.state_dict()[key]), key
    for got, want in zip(_features(model, inputs), _features(tiny, inputs)):
        torch.testing.assert_close(got, want, atol=2e-3, rtol=1e-2)


def test_format_is_detected_from_content_not_suffix(tiny, inputs, files, tmp_path):
    swaps = {
        "torchscript": "weights.bin",
        "hf-safetensors": "weights.pt",
        "open_clip-bin": "weights.safetensors",
    }
    for name, new_name in swaps.items():
        path = tmp_path / new_name
        path.write_bytes(files[name].read_bytes())
        assert read_clip_state_dict(path)[1] == FILES[name][1]
        assert torch.equal(_features(load_clip(path), inputs)[0], _features(tiny, inputs)[0])


def test_expected_config_is_checked(files):
    assert load_clip(files["state-dict"], expected=TINY).config == TINY
    with pytest.raises(CheckpointError, match=r"vision\.width 32 \(expected 768\)"):
        load_clip(files["state-dict"], expected=CLIP_CONFIGS["ViT-B-32"])


def test_device_argument(files):
    assert load_clip(files["state-dict"], device="cpu").visual.proj.device.type == "cpu"


# ---- config inference ---------------------------------------------------------------------
def _small(vision_width: int, text_width: int, heads: int = 1) -> CLIPConfig:
    return CLIPConfig(
        embed_dim=16,
        vision=VisionConfig(
            image_size=64, patch_size=16, width=vision_width, layers=1, heads=heads
        ),
        text=TextConfig(context_length=16, vocab_size=64, width=text_width, layers=3, heads=heads),
    )


def test_infer_config_matches_presets_and_openai_rule(tiny):
    # Tiny's 2 heads (of width 16) can only come from the preset table.
    assert infer_config(tiny.state_dict()) == TINY
    assert infer_config(tiny.state_dict(), vision_heads=4, text_heads=8).vision.heads == 4
    # No preset: heads = width // 64, as in every released CLIP.
    config = infer_config(CLIP(_small(128, 64)).state_dict())
    assert (config.vision.heads, config.text.heads) == (2, 1)
    assert config == CLIPConfig(
        embed_dim=16, vision=VisionConfig(64, 16, 128, 1, 2), text=TextConfig(16, 64, 64, 3, 1)
    )
    with pytest.raises(ValueError, match="cannot infer the vision tower's heads"):
        infer_config(CLIP(_small(48, 64)).state_dict())
    assert infer_config(CLIP(_small(48, 64)).state_dict(), vision_heads=3) == CLIPConfig(
        embed_dim=16, vision=VisionConfig(64, 16, 48, 1, 3), text=TextConfig(16, 64, 64, 3, 1)
    )


def test_infer_config_rejects_malformed_states(tiny):
    state = _state(tiny)
    for key in [k for k in state if k.startswith("visual.transformer.resblocks.0.")]:
        del state[key]
    with pytest.raises(ValueError, match="not numbered"):
        infer_config(state)
    state = _state(tiny)
    state["visual.positional_embedding"] = torch.zeros(48, 32)
    with pytest.raises(ValueError, match="not a square grid"):
        infer_config(state)


# ---- Hugging Face names -------------------------------------------------------------------
def test_hf_renaming_round_trips_and_transposes(tiny):
    state = _state(tiny)
    hf = to_hf_state_dict(state)
    assert len(hf) == len(state) + 2 * 2 * 2 * 2  # in_proj w/b -> q, k, v per block
    assert torch.equal(hf["visual_projection.weight"], state["visual.proj"].t())
    assert torch.equal(hf["text_projection.weight"], state["text_projection"].t())
    q, k, v = state["transformer.resblocks.1.attn.in_proj_weight"].chunk(3)
    assert torch.equal(hf["text_model.encoder.layers.1.self_attn.k_proj.weight"], k)
    assert torch.equal(hf["vision_model.pre_layrnorm.weight"], state["visual.ln_pre.weight"])
    assert "vision_model.encoder.layers.0.mlp.fc2.bias" in hf
    back = from_hf_state_dict({**hf, "text_model.embeddings.position_ids": torch.arange(77)})
    assert back.keys() == state.keys()
    assert all(torch.equal(back[key], state[key]) for key in state)
    with pytest.raises(ValueError, match="no Hugging Face name"):
        to_hf_state_dict({**state, "visual.extra": torch.zeros(1)})


def test_incomplete_hf_qkv_is_reported_not_dropped(tiny, tmp_path):
    hf = to_hf_state_dict(_state(tiny))
    del hf["vision_model.encoder.layers.1.self_attn.v_proj.bias"]
    path = tmp_path / "model.safetensors"
    save_file(hf, str(path))
    with pytest.raises(CheckpointError, match=r"missing key.*in_proj_bias") as err:
        load_clip(path)
    assert "unexpected" in str(err.value) and "q_proj.bias" in str(err.value)


# ---- errors -------------------------------------------------------------------------------
def _side_effect():  # pragma: no cover - must never run
    raise AssertionError("unpickling executed code")


class _Evil:
    def __reduce__(self):
        return (_side_effect, ())


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


BAD_FILES = {
    "empty.safetensors": (lambda files, d: b"", "is empty"),
    "truncated.safetensors": (
        lambda files, d: _truncated(files["hf-safetensors"].read_bytes()),
        "truncated",
    ),
    "truncated.pt": (lambda files, d: _truncated(files["state-dict"].read_bytes()), "truncated"),
    "truncated_archive.pt": (
        lambda files, d: _truncated(files["torchscript"].read_bytes()),
        "truncated",
    ),
    "garbage.bin": (lambda files, d: b"definitely not weights" * 10, "not a CLIP weights"),
    "random.pt": (None, "holds no CLIP weights"),
    "random.safetensors": (None, "holds no CLIP weights"),
    "evil.pt": (None, "refused for safety"),
    "fusionnet.safetensors": (None, "is a textmef-fusionnet checkpoint, not CLIP weights"),
}


def _write_bad(name: str, files: dict[str, Path], path: Path) -> None:
    make = BAD_FILES[name][0]
    if make is not None:
        path.write_bytes(make(files, path))
    elif name == "random.pt":
        torch.save({"a": torch.randn(3, 4), "b": torch.randn(5)}, path)
    elif name == "random.safetensors":
        save_file({"conv.weight": torch.randn(3, 4)}, str(path))
    elif name == "evil.pt":
        torch.save({"state_dict": _Evil()}, path)
    elif name == "fusionnet.safetensors":
        save_checkpoint(FusionNet(model_config("textmef-tiny")), path)


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_give_one_line_errors_naming_the_file(files, tmp_path, name):
    path = tmp_path / name
    _write_bad(name, files, path)
    with pytest.raises(CheckpointError, match=BAD_FILES[name][1]) as err:
        load_clip(path)
    message = str(err.value)
    assert name in message and "\n" not in message and "Traceback" not in message
    # torch's or safetensors' own exception is not chained into the report.
    assert err.value.__context__ is None or err.value.__suppress_context__


def test_missing_file_and_directory(files, tmp_path):
    with pytest.raises(CheckpointError, match="absent.pt: no such CLIP weights file"):
        load_clip(tmp_path / "absent.pt")
    with pytest.raises(CheckpointError, match=r"is a directory.*model\.safetensors"):
        load_clip(files["hf-safetensors"].parent)


def test_missing_unexpected_and_mismatched_keys(tiny, tmp_path):
    path = tmp_path / "edited.pt"
    state = _state(tiny)
    del state["ln_final.bias"]
    state["visual.extra"] = torch.zeros(2)
    state["transformer.resblocks.0.ln_1.weight"] = torch.zeros(7)
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_clip(path)
    message = str(err.value)
    assert message.startswith(str(path))
    for part in (
        "1 missing key(s): ln_final.bias",
        "1 unexpected key(s): visual.extra",
        "shape-mismatched key(s): transformer.resblocks.0.ln_1.weight (7,)",
    ):
        assert part in message


# ---- identity -----------------------------------------------------------------------------
def test_fingerprint_is_format_independent(tiny, files):
    want = clip_fingerprint(tiny)
    assert len(want) == 64
    for name in FP32_FORMATS:
        assert clip_fingerprint(read_clip_state_dict(files[name])[0]) == want, name
        assert clip_fingerprint(load_clip(files[name])) == want, name
    # Raw state dicts in other names are normalised first.
    assert clip_fingerprint(to_hf_state_dict(_state(tiny))) == want
    assert clip_fingerprint({f"module.{k}": v for k, v in _state(tiny).items()}) == want
    # fp16 storage changes the values, and the fingerprint says so.
    fp16 = clip_fingerprint(load_clip(files["torchscript-fp16"]))
    assert fp16 != want
    assert fp16 == clip_fingerprint(copy.deepcopy(tiny).half().float())


def test_fingerprint_changes_with_one_weight(tiny):
    state = _state(tiny)
    before = clip_fingerprint(state)
    state["visual.transformer.resblocks.1.mlp.c_fc.bias"][3] += 1e-6
    assert clip_fingerprint(state) != before


def test_file_sha256_and_known_file_table(tmp_path, monkeypatch):
    path = tmp_path / "some.pt"
    path.write_bytes(b"x" * (3 << 20) + b"tail")  # several read chunks
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_sha256(path) == digest
    assert identify_clip_file(path) is None
    monkeypatch.setattr(loading, "KNOWN_CLIP_FILES", {digest: "test weights"})
    assert identify_clip_file(path) == "test weights"


def test_openai_hash_is_the_one_in_openais_url():
    assert OPENAI_VIT_B_32_URL.split("/")[-2] == OPENAI_VIT_B_32_SHA256
    assert OPENAI_VIT_B_32_URL.endswith("/ViT-B-32.pt")
    assert len(OPENAI_VIT_B_32_SHA256) == 64 and int(OPENAI_VIT_B_32_SHA256, 16) >= 0
    assert OPENAI_VIT_B_32_SHA256 in loading.KNOWN_CLIP_FILES


def test_load_logs_known_files_and_warns_on_impostors(files, tmp_path, monkeypatch, caplog):
    impostor = tmp_path / "ViT-B-32.pt"
    impostor.write_bytes(files["torchscript"].read_bytes())
    with caplog.at_level(logging.INFO, logger="textmef.clip.loading"):
        assert load_clip(impostor).config == TINY
    warnings_ = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings_) == 1 and "not the file OpenAI released" in warnings_[0].message
    assert any("unknown CLIP file" in r.getMessage() for r in caplog.records)

    caplog.clear()
    monkeypatch.setattr(loading, "KNOWN_CLIP_FILES", {file_sha256(impostor): "tiny archive"})
    monkeypatch.setattr(loading, "OPENAI_VIT_B_32_SHA256", file_sha256(impostor))
    with caplog.at_level(logging.INFO, logger="textmef.clip.loading"):
        load_clip(impostor)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("known file: tiny archive" in r.getMessage() for r in caplog.records)


# ---- download -----------------------------------------------------------------------------
def test_download_verifies_the_hash_and_renames_atomically(tmp_path, monkeypatch):
    source = tmp_path / "src" / "ViT-B-32.pt"
    source.parent.mkdir()
    source.write_bytes(b"pretend weights" * 1000)
    good = file_sha256(source)
    dest = tmp_path / "cache"

    monkeypatch.setattr(loading, "CLIP_DOWNLOADS", {"test": (source.as_uri(), "0" * 64)})
    with pytest.raises(CheckpointError, match="expected 0000"):
        download_clip(dest, "test")
    assert list(dest.iterdir()) == []  # neither the file nor its temporary part

    monkeypatch.setattr(loading, "CLIP_DOWNLOADS", {"test": (source.as_uri(), good)})
    path = download_clip(dest, "test")
    assert path == dest / "ViT-B-32.pt" and file_sha256(path) == good
    assert [p.name for p in dest.iterdir()] == ["ViT-B-32.pt"]

    def no_fetch(*args, **kwargs):
        raise AssertionError("a verified file must not be fetched again")

    monkeypatch.setattr(urllib.request, "urlopen", no_fetch)
    assert download_clip(dest, "test") == path
    with pytest.raises(ValueError, match="unknown CLIP source"):
        download_clip(dest, "nowhere")


def test_loading_never_downloads(files, monkeypatch):
    def no_fetch(*args, **kwargs):
        raise AssertionError("load_clip must not download")

    monkeypatch.setattr(urllib.request, "urlopen", no_fetch)
    monkeypatch.setattr(loading, "download_clip", no_fetch)
    load_clip(files["torchscript"])


# ---- against the real transformers library ------------------------------------------------
def _hf_features(output) -> torch.Tensor:
    # transformers 4.x returns the projected features; 5.x an output whose pooler_output is.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def test_hf_checkpoint_matches_transformers(inputs, tmp_path):
    transformers = pytest.importorskip(
        "transformers", reason="transformers is not installed (pip install -e '.[test]')"
    )
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=TINY.text.vocab_size,
            hidden_size=TINY.text.width,
            intermediate_size=4 * TINY.text.width,
            num_hidden_layers=TINY.text.layers,
            num_attention_heads=TINY.text.heads,
            max_position_embeddings=TINY.text.context_length,
            hidden_act="quick_gelu",
            bos_token_id=SOT,
            eos_token_id=EOT,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=TINY.vision.width,
            intermediate_size=4 * TINY.vision.width,
            num_hidden_layers=TINY.vision.layers,
            num_attention_heads=TINY.vision.heads,
            image_size=TINY.vision.image_size,
            patch_size=TINY.vision.patch_size,
            hidden_act="quick_gelu",
        ),
        projection_dim=TINY.embed_dim,
    )
    torch.manual_seed(3)
    hf = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.02 * torch.randn_like(p))
    kwargs = {}
    if "safe_serialization" in inspect.signature(hf.save_pretrained).parameters:
        kwargs["safe_serialization"] = True
    hf.save_pretrained(tmp_path, **kwargs)

    path = tmp_path / "model.safetensors"
    model = load_clip(path)
    assert read_clip_state_dict(path)[1] == "hf-safetensors"
    assert model.config == TINY
    images, tokens = inputs
    pixels = model.preprocess(images)
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_image(pixels),
            _hf_features(hf.get_image_features(pixel_values=pixels)),
            atol=1e-5,
            rtol=1e-5,
        )
        torch.testing.assert_close(
            model.encode_text(tokens),
            _hf_features(hf.get_text_features(input_ids=tokens)),
            atol=1e-5,
            rtol=1e-5,
        )
        assert torch.equal(model.logit_scale, hf.logit_scale)

    # And the other way: our weights, renamed, drive transformers to the same features.
    hf2 = transformers.CLIPModel(config).eval()
    result = hf2.load_state_dict(to_hf_state_dict(_state(model)), strict=False)
    assert not result.unexpected_keys
    assert all(k.endswith("position_ids") for k in result.missing_keys)
    with torch.no_grad():
        torch.testing.assert_close(
            _hf_features(hf2.get_text_features(input_ids=tokens)),
            model.encode_text(tokens),
            atol=1e-5,
            rtol=1e-5,
        )
