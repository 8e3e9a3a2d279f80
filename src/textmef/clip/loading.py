"""Read released CLIP weights into :class:`textmef.clip.model.CLIP`.

Understood formats (detected from the file's bytes, not its name):

* ``openai-torchscript``: OpenAI's released archives (``ViT-B-32.pt``), TorchScript zips
  with fp16 weights and a few non-parameter entries (``input_resolution`` ...).
* ``torch-state-dict``: a ``torch.save``-d state dict in OpenAI's names.
* ``open_clip-checkpoint``: the same, wrapped as ``{"state_dict": ...}`` and/or with the
  ``module.`` prefix of ``DistributedDataParallel`` (open_clip's training checkpoints).
* ``safetensors``: a safetensors file in OpenAI's names (open_clip's
  ``open_clip_model.safetensors``).
* ``hf-safetensors`` / ``hf-pytorch``: a Hugging Face ``CLIPModel`` (``model.safetensors``
  or ``pytorch_model.bin``), renamed to OpenAI's names by :func:`from_hf_state_dict`.

Pickled files are read with ``torch.load(weights_only=True)``, which refuses anything but
tensors and plain containers; TorchScript archives are opened with ``torch.jit.load``, which
runs no Python code (only its state dict is used here). Every failure is a one-line
:class:`~textmef.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import struct
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from textmef.clip.config import CLIP_CONFIGS, CLIPConfig, TextConfig, VisionConfig
from textmef.clip.model import CLIP
from textmef.errors import CheckpointError, InputError
from textmef.serialization import load_state

log = logging.getLogger(__name__)

FORMATS = (
    "openai-torchscript",
    "torch-state-dict",
    "open_clip-checkpoint",
    "safetensors",
    "hf-safetensors",
    "hf-pytorch",
)

# The hex string in OpenAI's download URL is the file's sha256 (their clip.py checks it):
# https://github.com/openai/CLIP/blob/main/clip/clip.py, _MODELS["ViT-B/32"].
OPENAI_VIT_B_32_SHA256 = "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"
OPENAI_VIT_B_32_URL = (
    f"https://openaipublic.azureedge.net/clip/models/{OPENAI_VIT_B_32_SHA256}/ViT-B-32.pt"
)

# sha256 of the whole file -> what it is. Only hashes published by the file's source belong
# here; other releases (open_clip, Hugging Face) load fine but are reported as unknown.
KNOWN_CLIP_FILES: dict[str, str] = {
    OPENAI_VIT_B_32_SHA256: "OpenAI CLIP ViT-B/32 (ViT-B-32.pt, TorchScript, fp16)",
    # Recorded for Hugging Face timm/vit_base_patch32_clip_224.openai at revision a6f597a3
    # (a third-party pinned-download record; Hugging Face shows it as the file's LFS oid).
    "e6d1bd7789aa45192b3bf90570a789b478bae1b74ebcce7eddd908e83a2b7c31": (
        "OpenAI CLIP ViT-B/32 via open_clip (open_clip_model.safetensors, "
        "timm/vit_base_patch32_clip_224.openai)"
    ),
}

# source -> (url, sha256) for download_clip.
CLIP_DOWNLOADS: dict[str, tuple[str, str]] = {
    "openai": (OPENAI_VIT_B_32_URL, OPENAI_VIT_B_32_SHA256),
}

# Entries of OpenAI's archives that are metadata, not weights (their build_model drops them
# too); attn_mask is a buffer some re-implementations save.
_NON_PARAMETERS = {"input_resolution", "context_length", "vocab_size", "attn_mask"}
_WRAPPER_KEYS = ("state_dict", "model")
_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024
_CHUNK = 1 << 20


# ---- file identity ------------------------------------------------------------------------
def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (never the whole file in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def identify_clip_file(path: str | Path) -> str | None:
    """Description of a known released CLIP file (by sha256), or None when unknown."""
    return KNOWN_CLIP_FILES.get(file_sha256(path))


def clip_fingerprint(weights: torch.nn.Module | Mapping[str, torch.Tensor]) -> str:
    """Format-independent identity of CLIP weights.

    The sha256 over every tensor, in sorted OpenAI-name order, of its name, its shape and its
    values as little-endian float32. The same weights give the same fingerprint whichever
    format (or precision above float32) they were stored in; the file's own sha256 differs.

    Args:
        weights: A :class:`CLIP` (or any module in OpenAI's names), or a state dict in
            OpenAI, open_clip (``module.`` prefixed) or Hugging Face names.
    """
    state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
    state = _to_openai_names(dict(state))
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu", torch.float32).contiguous()
        digest.update(key.encode())
        digest.update(repr(tuple(tensor.shape)).encode())
        # astype is a no-op on little-endian hosts; it pins the byte order everywhere else.
        digest.update(tensor.numpy().astype("<f4", copy=False).data)
    return digest.hexdigest()


# ---- Hugging Face names -------------------------------------------------------------------
_HF_TOWERS = (
    ("text_model.encoder.layers.", "transformer.resblocks."),
    ("vision_model.encoder.layers.", "visual.transformer.resblocks."),
)
_HF_BLOCK = {
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
    "self_attn.out_proj.": "attn.out_proj.",
}
_HF_DIRECT = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}
# HF stores projections as nn.Linear weights (out, in); OpenAI as matrices applied x @ P.
_HF_TRANSPOSED = {
    "text_projection.weight": "text_projection",
    "visual_projection.weight": "visual.proj",
}
_HF_BLOCK_KEY = re.compile(r"(\d+)\.(.+)")


def _is_hf(keys: list[str]) -> bool:
    return any(k.startswith(("text_model.", "vision_model.")) or k in _HF_TRANSPOSED for k in keys)


def from_hf_state_dict(hf_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face ``CLIPModel`` state dict to OpenAI's names.

    q/k/v projections are concatenated into ``in_proj_weight``/``in_proj_bias`` (the order
    ``nn.MultiheadAttention`` uses) and the two projections transposed. ``position_ids``
    buffers are dropped. Keys that do not map (or an incomplete q/k/v triple) keep their HF
    name, so a strict load reports them instead of silently losing them.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, tuple[str, torch.Tensor]]] = {}
    for key, value in hf_state.items():
        if key.endswith("embeddings.position_ids"):
            continue
        if key in _HF_DIRECT:
            out[_HF_DIRECT[key]] = value
            continue
        if key in _HF_TRANSPOSED:
            out[_HF_TRANSPOSED[key]] = value.t().contiguous()
            continue
        for hf_prefix, openai_prefix in _HF_TOWERS:
            if not key.startswith(hf_prefix):
                continue
            match = _HF_BLOCK_KEY.fullmatch(key[len(hf_prefix) :])
            if match is None:
                continue
            block = f"{openai_prefix}{match.group(1)}."
            rest = match.group(2)
            proj = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
            if proj:
                qkv.setdefault((block, proj.group(2)), {})[proj.group(1)] = (key, value)
                break
            for hf_part, openai_part in _HF_BLOCK.items():
                if rest.startswith(hf_part):
                    out[block + openai_part + rest[len(hf_part) :]] = value
                    break
            else:
                out[key] = value
            break
        else:
            out[key] = value
    for (block, kind), parts in qkv.items():
        if set(parts) == {"q", "k", "v"}:
            out[f"{block}attn.in_proj_{kind}"] = torch.cat(
                [parts[name][1] for name in "qkv"], dim=0
            )
        else:
            out.update(dict(parts.values()))
    return out


def to_hf_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an OpenAI-named CLIP state dict to Hugging Face ``CLIPModel`` names.

    The inverse of :func:`from_hf_state_dict` (without ``position_ids``, which
    ``transformers`` rebuilds itself). Tensors are contiguous, ready for safetensors.

    Raises:
        ValueError: A key has no Hugging Face counterpart.
    """
    direct = {v: k for k, v in _HF_DIRECT.items()}
    transposed = {v: k for k, v in _HF_TRANSPOSED.items()}
    block_parts = {v: k for k, v in _HF_BLOCK.items()}
    out: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, value in state.items():
        if key in direct:
            out[direct[key]] = value.contiguous()
            continue
        if key in transposed:
            out[transposed[key]] = value.t().contiguous()
            continue
        for hf_prefix, openai_prefix in _HF_TOWERS:
            if not key.startswith(openai_prefix):
                continue
            match = _HF_BLOCK_KEY.fullmatch(key[len(openai_prefix) :])
            if match is None:
                unmapped.append(key)
                break
            block, rest = f"{hf_prefix}{match.group(1)}.", match.group(2)
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                for name, part in zip("qkv", value.chunk(3, dim=0)):
                    out[f"{block}self_attn.{name}_proj.{kind}"] = part.contiguous()
                break
            for openai_part, hf_part in block_parts.items():
                if rest.startswith(openai_part):
                    out[block + hf_part + rest[len(openai_part) :]] = value.contiguous()
                    break
            else:
                unmapped.append(key)
            break
        else:
            unmapped.append(key)
    if unmapped:
        raise ValueError(
            f"no Hugging Face name for {len(unmapped)} key(s): " + ", ".join(unmapped[:8])
        )
    return out


# ---- reading files ------------------------------------------------------------------------
def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(path, "no such CLIP weights file")
    if path.is_dir():
        inside = sorted(
            p.name for p in path.iterdir() if p.suffix in (".pt", ".bin", ".safetensors", ".pth")
        )
        hint = f" (it holds {', '.join(inside[:4])}: pass one of those)" if inside else ""
        raise CheckpointError(path, f"is a directory, expected a CLIP weights file{hint}")
    if path.stat().st_size == 0:
        raise CheckpointError(path, "is empty (0 bytes)")


def _sniff(path: Path) -> str:
    """'torchscript', 'torch' or 'safetensors', from the file's first bytes and zip listing."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise CheckpointError(
                path, f"is a truncated or corrupt zip archive ({_one_line(exc)})"
            ) from None
        # torch.load recognises TorchScript by the same record (constants.pkl).
        records = {name.split("/", 1)[-1] for name in names}
        if "constants.pkl" in records or any("/code/" in name for name in names):
            return "torchscript"
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len > _SAFETENSORS_MAX_HEADER:
            raise CheckpointError(path, "is not a valid safetensors file (absurd header size)")
        if 8 + header_len > size:
            raise CheckpointError(
                path,
                f"is a truncated safetensors file (header needs "
                f"{8 + header_len} bytes, file has {size})",
            )
        return "safetensors"
    if head[:1] == b"\x80":  # pickle protocol 2+: the pre-1.6 torch.save format
        return "torch"
    raise CheckpointError(
        path,
        "is not a CLIP weights file (neither a TorchScript archive, "
        "a torch.save file nor safetensors)",
    )


def _read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():
            # OpenAI only released TorchScript; the deprecation advice does not apply here.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated")
            module = torch.jit.load(str(path), map_location="cpu")
        return dict(module.state_dict())
    except (RuntimeError, ValueError, OSError) as exc:
        raise CheckpointError(path, f"unreadable TorchScript archive ({_one_line(exc)})") from None


def _read_torch(path: Path) -> object:
    try:
        # A file object, not the path: torch >= 2.13 dispatches on a ".safetensors" suffix,
        # and the content has already decided that this is a torch.save file.
        with open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "unsupported global" in str(exc).lower():
            raise CheckpointError(
                path,
                "holds pickled Python objects besides tensors, refused "
                "for safety (weights_only); save a plain state dict",
            ) from None
        raise CheckpointError(path, f"unreadable torch file ({_one_line(exc)})") from None
    except (
        RuntimeError,
        EOFError,
        ValueError,
        OSError,
        AttributeError,
        TypeError,
        KeyError,
    ) as exc:
        raise CheckpointError(
            path, f"unreadable or truncated torch file ({_one_line(exc)})"
        ) from None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, metadata
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            path, f"unreadable or truncated safetensors file ({_one_line(exc)})"
        ) from None


def _unwrap(obj: object) -> tuple[dict[str, torch.Tensor], bool]:
    """The state dict inside a torch.load result, and whether it was wrapped."""
    wrapped = False
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj, wrapped = inner, True
    if not isinstance(obj, Mapping):
        return {}, wrapped
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}, wrapped


def _strip_module_prefix(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}, True
    return state, False


def _to_openai_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state, _ = _strip_module_prefix(state)
    if _is_hf(list(state)):
        state = from_hf_state_dict(state)
    return {k: v for k, v in state.items() if k not in _NON_PARAMETERS}


def read_clip_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Read any supported CLIP file as a float32 state dict in OpenAI's names.

    Args:
        path: A CLIP weights file in one of :data:`FORMATS`.

    Returns:
        (state dict, format name from :data:`FORMATS`). Floating tensors are float32 (OpenAI's
        archive is fp16); metadata entries such as ``input_resolution`` are dropped.

    Raises:
        CheckpointError: The file is missing, unreadable, unsafe, or holds no CLIP weights.
    """
    path = Path(path)
    _check_file(path)
    container = _sniff(path)
    metadata: dict[str, str] = {}
    wrapped = False
    if container == "torchscript":
        state = _read_torchscript(path)
    elif container == "safetensors":
        state, metadata = _read_safetensors(path)
    else:
        state, wrapped = _unwrap(_read_torch(path))
    state, prefixed = _strip_module_prefix(state)
    hf = _is_hf(list(state))
    if metadata.get("format", "").startswith("textmef-"):
        raise CheckpointError(path, f"is a {metadata['format']} checkpoint, not CLIP weights")
    state = _to_openai_names(state)
    if "visual.conv1.weight" not in state or "token_embedding.weight" not in state:
        found = ", ".join(sorted(state)[:3]) or "no tensors"
        raise CheckpointError(
            path,
            "holds no CLIP weights (no visual.conv1.weight / "
            f"token_embedding.weight; found {found})",
        )
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    if container == "torchscript":
        fmt = "openai-torchscript"
    elif hf:
        fmt = "hf-safetensors" if container == "safetensors" else "hf-pytorch"
    elif container == "safetensors":
        fmt = "safetensors"
    else:
        fmt = "open_clip-checkpoint" if wrapped or prefixed else "torch-state-dict"
    return state, fmt


# ---- config inference ---------------------------------------------------------------------
def _block_count(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    indices = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if not indices:
        raise ValueError(f"no {prefix}N.* weights")
    if indices != set(range(len(indices))):
        raise ValueError(f"{prefix}* blocks are not numbered 0..{len(indices) - 1}")
    return len(indices)


def _shape(state: Mapping[str, torch.Tensor], key: str, ndim: int) -> tuple[int, ...]:
    if key not in state:
        raise ValueError(f"missing {key}")
    shape = tuple(state[key].shape)
    if len(shape) != ndim:
        raise ValueError(f"{key} has shape {shape}, expected {ndim} dimensions")
    return shape


def infer_config(
    state: Mapping[str, torch.Tensor],
    *,
    vision_heads: int | None = None,
    text_heads: int | None = None,
) -> CLIPConfig:
    """The :class:`CLIPConfig` of an OpenAI-named ViT CLIP state dict, from tensor shapes.

    Sizes follow OpenAI's ``build_model``. Head counts leave no trace in the shapes, so
    they are taken, in order, from the arguments; from a preset in ``CLIP_CONFIGS`` whose
    every other field matches (this is how the tiny test preset's 2 heads of width 16 are
    found); else ``width // 64``, the head width of every released CLIP.

    Args:
        state: State dict in OpenAI's names (see :func:`read_clip_state_dict`).
        vision_heads: Attention heads of the image tower, when known.
        text_heads: Attention heads of the text tower, when known.

    Raises:
        ValueError: A tensor that defines the architecture is missing or malformed, the model
            is a ResNet CLIP, or heads cannot be inferred.
    """
    if "visual.proj" not in state and any(k.startswith("visual.layer1.") for k in state):
        raise ValueError("ResNet CLIP image towers are not supported (only ViT)")
    width, channels, patch, patch_w = _shape(state, "visual.conv1.weight", 4)
    if channels != 3 or patch != patch_w:
        raise ValueError(
            f"visual.conv1.weight {(width, channels, patch, patch_w)} is not a "
            "square RGB patch embedding"
        )
    positions = _shape(state, "visual.positional_embedding", 2)[0] - 1
    grid = round(positions**0.5)
    if grid * grid != positions:
        raise ValueError(
            f"visual.positional_embedding has {positions} + 1 rows, not a square "
            "grid plus the class token"
        )
    context_length, text_width = _shape(state, "positional_embedding", 2)
    vocab_size = _shape(state, "token_embedding.weight", 2)[0]
    embed_dim = _shape(state, "text_projection", 2)[1]
    vision = VisionConfig(
        image_size=patch * grid,
        patch_size=patch,
        width=width,
        layers=_block_count(state, "visual.transformer.resblocks."),
        heads=0,
    )
    text = TextConfig(
        context_length=context_length,
        vocab_size=vocab_size,
        width=text_width,
        layers=_block_count(state, "transformer.resblocks."),
        heads=0,
    )

    def heads_of(kind: str, tower_width: int, given: int | None) -> int:
        if given is not None:
            return given
        for preset in CLIP_CONFIGS.values():
            if (
                preset.embed_dim == embed_dim
                and _same_but_heads(preset.vision, vision)
                and _same_but_heads(preset.text, text)
            ):
                return getattr(preset, kind).heads
        if tower_width % 64:
            raise ValueError(
                f"cannot infer the {kind} tower's heads (width {tower_width} is "
                "not a multiple of 64); pass them explicitly"
            )
        return tower_width // 64

    return CLIPConfig(
        embed_dim=embed_dim,
        vision=VisionConfig(
            **{**vision.__dict__, "heads": heads_of("vision", width, vision_heads)}
        ),
        text=TextConfig(**{**text.__dict__, "heads": heads_of("text", text_width, text_heads)}),
    )


def _same_but_heads(a: VisionConfig | TextConfig, b: VisionConfig | TextConfig) -> bool:
    return {**a.__dict__, "heads": 0} == {**b.__dict__, "heads": 0}


# ---- loading ------------------------------------------------------------------------------
def load_clip(
    path: str | Path, *, expected: CLIPConfig | None = None, device: str | torch.device = "cpu"
) -> CLIP:
    """Build a :class:`CLIP` from a weights file in any supported format.

    The file's sha256 is looked up in :data:`KNOWN_CLIP_FILES` and logged; a file named
    ``ViT-B-32.pt`` whose hash is not OpenAI's is loaded (when it is a valid CLIP) with a
    warning that it is not the file OpenAI released.

    Args:
        path: The weights file (see :data:`FORMATS`).
        expected: The config the caller needs; its head counts are used (they cannot be read
            from shapes) and any other difference is an error.
        device: Where to put the model.

    Returns:
        The model, float32, in eval mode, with ``requires_grad`` off.

    Raises:
        CheckpointError: The file is missing, unreadable, not a CLIP, of another config than
            ``expected``, or its keys do not match the model exactly.
    """
    path = Path(path)
    _check_file(path)
    digest = file_sha256(path)
    known = KNOWN_CLIP_FILES.get(digest)
    if known:
        log.info("%s: known file: %s", path, known)
    else:
        log.info("%s: unknown CLIP file (sha256 %s)", path, digest)
    if path.name == "ViT-B-32.pt" and digest != OPENAI_VIT_B_32_SHA256:
        log.warning(
            "%s: named like OpenAI's ViT-B/32 but is not the file OpenAI released "
            "(sha256 %s, expected %s)",
            path,
            digest,
            OPENAI_VIT_B_32_SHA256,
        )
    state, fmt = read_clip_state_dict(path)
    try:
        config = infer_config(
            state,
            vision_heads=expected.vision.heads if expected else None,
            text_heads=expected.text.heads if expected else None,
        )
    except ValueError as exc:
        raise CheckpointError(path, f"not a supported CLIP: {exc}") from None
    if expected is not None and config != expected:
        diffs = _config_diff(config, expected)
        raise CheckpointError(path, f"CLIP config differs from the expected one: {diffs}")
    try:
        model = CLIP(config)
    except ValueError as exc:
        raise CheckpointError(path, f"cannot build the CLIP it describes: {exc}") from None
    report = load_state(model, state)
    if not report.clean:
        raise CheckpointError(path, f"does not match the CLIP model: {report.summary()}")
    log.info("%s: loaded %s (%s)", path, fmt, config.to_json())
    return model.eval().requires_grad_(False).to(device)


def _config_diff(found: CLIPConfig, expected: CLIPConfig) -> str:
    flat_found, flat_expected = _flatten(found.to_dict()), _flatten(expected.to_dict())
    return ", ".join(
        f"{k} {flat_found[k]} (expected {flat_expected[k]})"
        for k in sorted(flat_found)
        if flat_found[k] != flat_expected[k]
    )


def _flatten(data: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


# ---- download (never used by the tests' code paths) ---------------------------------------
def download_clip(dest_dir: str | Path, source: str = "openai", *, timeout: float = 60.0) -> Path:
    """Download released CLIP weights into ``dest_dir``, verified by sha256.

    The file is streamed to a temporary file in ``dest_dir``, hashed on the way, and only
    renamed into place when the hash matches, so ``dest_dir`` never holds a partial or wrong
    file under the real name. An existing file with the right hash is reused.

    Args:
        dest_dir: Folder for the file (created when missing).
        source: Key of :data:`CLIP_DOWNLOADS`.
        timeout: Socket timeout in seconds.

    Returns:
        Path of the verified file.

    Raises:
        ValueError: ``source`` is unknown.
        CheckpointError: The download failed or its sha256 is not the published one.
    """
    if source not in CLIP_DOWNLOADS:
        raise ValueError(f"unknown CLIP source {source!r}; known: {sorted(CLIP_DOWNLOADS)}")
    url, expected_sha = CLIP_DOWNLOADS[source]
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / url.rsplit("/", 1)[-1]
    if dest.is_file() and file_sha256(dest) == expected_sha:
        log.info("%s: already present and verified", dest)
        return dest
    log.info("downloading %s to %s", url, dest)
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as src:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != expected_sha:
            raise CheckpointError(
                url,
                f"downloaded file has sha256 {digest.hexdigest()}, "
                f"expected {expected_sha}; discarded",
            )
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as exc:
        raise CheckpointError(url, f"download failed ({_one_line(exc)})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def clip_cache_dir() -> Path:
    """Where downloaded CLIP weights live: ``$XDG_CACHE_HOME/textmef/clip`` or
    ``~/.cache/textmef/clip``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "textmef" / "clip"


def find_clip_file(clip: str | os.PathLike[str] | None = None, download: bool = False) -> Path:
    """The CLIP weights file to use: ``clip``, ``$TEXTMEF_CLIP``, the cache, or a download.

    Args:
        clip: a file the user named; returned as it is (loading checks it).
        download: when nothing else is found, download OpenAI's ViT-B-32.pt into the cache
            (sha256-verified; needs the internet). Never done unless asked.

    Raises:
        InputError: no file given, none in the environment or cache, and no download asked.
    """
    if clip is not None:
        return Path(clip)
    if os.environ.get("TEXTMEF_CLIP"):
        return Path(os.environ["TEXTMEF_CLIP"])
    cached = clip_cache_dir() / "ViT-B-32.pt"
    if cached.is_file():
        return cached
    if download:
        return download_clip(clip_cache_dir())
    raise InputError(
        None,
        "no CLIP weights: pass --clip FILE (OpenAI's ViT-B-32.pt, an open_clip checkpoint "
        "or a Hugging Face model.safetensors), set TEXTMEF_CLIP, or add --clip-download to "
        "fetch ViT-B-32.pt",
    )
