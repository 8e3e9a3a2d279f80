"""Stage 1: learn exposure prompts against a frozen CLIP (the paper's recipe by default).

CLIP's image tower is frozen and the augmentations are the 8 flips/rotations of the resized
image, so every image's 8 possible features are computed once and cached: training then only
runs the text tower, and gives exactly what encoding augmented images on the fly would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from textmef import io
from textmef.clip.model import CLIP
from textmef.clip.prompts import (
    EXPOSURES,
    PromptLearner,
    class_index,
    init_prompts,
    save_prompts,
)
from textmef.data.folders import split_holdout
from textmef.data.triplets import dihedral
from textmef.engine.prompt_config import PromptTrainingConfig
from textmef.errors import CheckpointError, InputError
from textmef.serialization import save_safetensors_atomic

log = logging.getLogger(__name__)

DIHEDRAL_VIEWS = 8
STATE_FILE = "prompt-state.safetensors"
FEATURES_FILE = "features.safetensors"


@dataclass
class ExposureSet:
    """Cached CLIP features of labelled images: (N, views, E) and one exposure per image."""

    features: torch.Tensor
    exposures: list[str]
    paths: list[Path]


@dataclass
class PromptTrainingResult:
    """What :func:`train_prompts` produced."""

    learner: PromptLearner
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    output: Path | None = None


# ---- features --------------------------------------------------------------------------
@torch.no_grad()
def encode_images(
    clip: CLIP,
    paths: Sequence[Path],
    views: int = DIHEDRAL_VIEWS,
    batch_size: int = 32,
    progress: bool = True,
) -> torch.Tensor:
    """Unit-norm CLIP features of every image under ``views`` flips/rotations, (N, views, E).

    Each image is resized to CLIP's input size first (as the authors do), then flipped and
    rotated, so the views are exact transforms of what the network is trained on.
    """
    from tqdm import tqdm

    device = clip.pixel_mean.device
    per_batch = max(1, batch_size // views)
    out = []
    bar = tqdm(
        total=len(paths), desc="CLIP image features", unit="img", disable=None if progress else True
    )
    for start in range(0, len(paths), per_batch):
        chunk = [_prepared(clip, p, device) for p in paths[start : start + per_batch]]
        stacked = torch.cat(chunk)
        batch = torch.stack([dihedral(stacked, v) for v in range(views)], dim=1)
        features = clip.encode_image(batch.flatten(0, 1))
        out.append(F.normalize(features.float(), dim=-1).view(len(chunk), views, -1).cpu())
        bar.update(len(chunk))
    bar.close()
    return torch.cat(out)


def _prepared(clip: CLIP, path: Path, device: torch.device) -> torch.Tensor:
    pixels = io.to_tensor(io.read_image(path).pixels).to(device)
    return clip.preprocess(pixels)


def _data_key(fingerprint: str, views: int, paths: Sequence[Path]) -> str:
    entries = []
    for p in paths:
        stat = p.stat()
        entries.append([str(p.resolve()), stat.st_size, stat.st_mtime_ns])
    blob = json.dumps([fingerprint, views, entries])
    return hashlib.sha256(blob.encode()).hexdigest()


def cached_features(
    clip: CLIP,
    fingerprint: str,
    paths: Sequence[Path],
    views: int,
    cache: Path | None,
    progress: bool = True,
) -> torch.Tensor:
    """:func:`encode_images`, reusing ``cache`` when it was made by this CLIP from these files.

    The key covers the CLIP fingerprint, the number of views, and every file's path, size
    and modification time, so a changed image or CLIP is never served stale features.
    """
    key = _data_key(fingerprint, views, paths)
    if cache is not None and cache.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(cache), framework="pt") as f:
                if (f.metadata() or {}).get("key") == key:
                    log.info("reusing cached CLIP features from %s", cache)
                    return f.get_tensor("features")
        except Exception as exc:  # a damaged cache is only a cache: recompute
            log.warning("%s: unreadable feature cache (%s), recomputing", cache, exc)
    features = encode_images(clip, paths, views, progress=progress)
    if cache is not None:
        save_safetensors_atomic({"features": features}, cache, {"key": key})
    return features


# ---- training --------------------------------------------------------------------------
def _balanced_order(
    exposures: Sequence[str], epoch: int, seed: int, views: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffled indices and random views for one epoch.

    Like the authors, the well-exposed images are repeated until they are half as many as
    the under- plus over-exposed ones (or the inputs repeated in the opposite case), so all
    three classes weigh about the same. Seeded by (seed, epoch): a resumed run replays the
    epochs an uninterrupted one would.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    inputs = [i for i, e in enumerate(exposures) if e != "well"]
    wells = [i for i, e in enumerate(exposures) if e == "well"]
    if len(wells) < len(inputs) // 2:
        wells = [wells[i % len(wells)] for i in range(len(inputs) // 2)]
    elif len(inputs) < 2 * len(wells):
        inputs = [inputs[i % len(inputs)] for i in range(2 * len(wells))]
    order = torch.tensor(inputs + wells)
    order = order[torch.randperm(len(order), generator=g)]
    view = torch.randint(0, views, (len(order),), generator=g)
    return order, view


@torch.no_grad()
def class_accuracy(
    learner: PromptLearner, clip: CLIP, data: ExposureSet
) -> dict[str, float | None]:
    """Fraction of un-augmented images of each exposure whose best prompt is the right one."""
    if not data.exposures:
        return dict.fromkeys(EXPOSURES)
    device = clip.pixel_mean.device
    predicted = learner(clip, data.features[:, 0].to(device)).argmax(dim=-1).cpu()
    result: dict[str, float | None] = {}
    for exposure in EXPOSURES:
        rows = [i for i, e in enumerate(data.exposures) if e == exposure]
        target = class_index(learner.mode, exposure)
        result[exposure] = float((predicted[rows] == target).float().mean()) if rows else None
    return result


def _format_accuracy(acc: dict[str, float | None]) -> str:
    return " ".join(f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in acc.items())


def train_prompts(
    clip: CLIP,
    fingerprint: str,
    folders: Mapping[str, Sequence[Path]],
    config: PromptTrainingConfig,
    output: Path,
    run_dir: Path,
    resume: bool = False,
    progress: bool = True,
    report: Callable[[str], None] = print,
    info: dict | None = None,
) -> PromptTrainingResult:
    """Learn prompts and write them to ``output``; state and feature cache go to ``run_dir``.

    Temporary files that a killed run left in ``run_dir`` or next to ``output`` are removed
    first (see :func:`textmef.io.remove_stale_temp_files`).

    Args:
        clip: A frozen CLIP (its device is the training device).
        fingerprint: ``clip_fingerprint(clip)``, stored with the prompts and the state.
        folders: Image paths per exposure: keys ``under``, ``over``, ``well``.
        config: The recipe.
        output: The prompts file to write.
        run_dir: Where the resumable state and the feature cache live.
        resume: Continue the run whose state is in ``run_dir``.
        progress: Show progress bars.
        report: Receives one line per epoch (loss, training and held-out accuracy), and
            one naming the temporary files of a killed run that were removed, if any.
        info: Extra facts to store in the prompts file (e.g. the CLIP file's name).
    """
    from textmef.runtime import tune_allocator

    tune_allocator()
    started = time.perf_counter()
    for exposure in EXPOSURES:
        if not folders.get(exposure):
            raise InputError(None, f"no {exposure}-exposed images given")
    clip = clip.eval().requires_grad_(False)
    run_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files([run_dir, output.parent], report)
    views = DIHEDRAL_VIEWS if config.augment else 1

    train_paths: list[Path] = []
    held_paths: list[Path] = []
    train_exp: list[str] = []
    held_exp: list[str] = []
    for exposure in EXPOSURES:
        train, held = split_holdout(list(folders[exposure]), config.holdout, config.seed)
        train_paths += train
        held_paths += held
        train_exp += [exposure] * len(train)
        held_exp += [exposure] * len(held)
    all_paths = train_paths + held_paths
    features = cached_features(
        clip, fingerprint, all_paths, views, run_dir / FEATURES_FILE, progress
    )
    train_set = ExposureSet(features[: len(train_paths)], train_exp, train_paths)
    held_set = ExposureSet(features[len(train_paths) :], held_exp, held_paths)
    data_key = _data_key(fingerprint, views, all_paths)

    generator = torch.Generator().manual_seed(config.seed)
    learner = init_prompts(
        clip, config.mode, config.length, config.texts or None, generator=generator
    ).to(clip.pixel_mean.device)
    result = PromptTrainingResult(learner)
    start_epoch = 0
    optimizer = None
    if config.mode != "fixed":
        optimizer = torch.optim.Adam(
            learner.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        start_epoch, result.history = _start(
            run_dir / STATE_FILE, resume, learner, optimizer, config, fingerprint, data_key
        )
    elif resume:
        log.info("fixed prompts have nothing to resume")

    targets = torch.tensor([class_index(config.mode, e) for e in train_exp])
    device = clip.pixel_mean.device
    epochs = range(start_epoch, config.epochs if optimizer is not None else 0)
    from tqdm import tqdm

    bar = tqdm(
        epochs,
        desc="prompt epochs",
        unit="epoch",
        disable=None if progress else True,
        initial=start_epoch,
        total=config.epochs if optimizer is not None else 0,
    )
    for epoch in bar:
        assert optimizer is not None  # without one (fixed prompts) the epoch range is empty
        order, view = _balanced_order(train_exp, epoch, config.seed, views)
        losses = []
        learner.train()
        for start in range(0, len(order), config.batch_size):
            idx, vw = (
                order[start : start + config.batch_size],
                view[start : start + config.batch_size],
            )
            logits = learner(clip, train_set.features[idx, vw].to(device))
            loss = F.cross_entropy(logits, targets[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        mean_loss = sum(losses) / len(losses)
        train_acc = class_accuracy(learner, clip, train_set)
        held_acc = class_accuracy(learner, clip, held_set)
        result.history.append(
            {"epoch": epoch + 1, "loss": mean_loss, "train": train_acc, "held_out": held_acc}
        )
        _save_state(
            run_dir / STATE_FILE,
            learner,
            optimizer,
            config,
            fingerprint,
            data_key,
            epoch + 1,
            result.history,
        )
        line = (
            f"epoch {epoch + 1}/{config.epochs}  loss {mean_loss:.4f}  "
            f"train [{_format_accuracy(train_acc)}]  "
            f"held-out [{_format_accuracy(held_acc)}]"
        )
        bar.set_postfix(loss=f"{mean_loss:.4f}")
        report(line)
    bar.close()

    if optimizer is None or not result.history:
        train_acc = class_accuracy(learner, clip, train_set)
        held_acc = class_accuracy(learner, clip, held_set)
        result.history.append({"epoch": 0, "loss": None, "train": train_acc, "held_out": held_acc})
        report(
            f"{config.mode} prompts: train [{_format_accuracy(train_acc)}]  "
            f"held-out [{_format_accuracy(held_acc)}]"
        )
    result.seconds = time.perf_counter() - started
    final = result.history[-1]
    stored = {
        "recipe": dataclasses.asdict(config),
        "images": {e: len(folders[e]) for e in EXPOSURES},
        "held_out_images": len(held_paths),
        "epochs_run": final["epoch"],
        "final_loss": final["loss"],
        "train_accuracy": final["train"],
        "held_out_accuracy": final["held_out"],
        "seconds_this_session": round(result.seconds, 1),
    }
    stored.update(info or {})
    result.output = save_prompts(output, learner, clip, fingerprint, stored)
    return result


def _remove_stale_temp_files(folders: Sequence[Path], report: Callable[[str], None]) -> None:
    """Remove the temporary files that a killed run (e.g. SIGKILL mid-write) left behind."""
    removed: list[Path] = []
    for folder in dict.fromkeys(f.absolute() for f in folders):
        removed += io.remove_stale_temp_files(folder)
    if removed:
        report(
            f"removed {len(removed)} temporary file{'s' if len(removed) > 1 else ''} left by "
            f"an interrupted run: {', '.join(str(p) for p in removed)}"
        )


# ---- resumable state -------------------------------------------------------------------
def _save_state(
    path: Path,
    learner: PromptLearner,
    optimizer: torch.optim.Optimizer,
    config: PromptTrainingConfig,
    fingerprint: str,
    data_key: str,
    epochs_done: int,
    history: list[dict],
) -> None:
    state = optimizer.state.get(learner.embeddings, {})
    tensors: dict[str, torch.Tensor] = {"embeddings": learner.embeddings}
    step = 0
    if state:
        tensors["adam.exp_avg"] = state["exp_avg"]
        tensors["adam.exp_avg_sq"] = state["exp_avg_sq"]
        step = int(state["step"])
    save_safetensors_atomic(
        tensors,
        path,
        {
            "config": config.to_json(),
            "fingerprint": fingerprint,
            "data": data_key,
            "epochs_done": str(epochs_done),
            "adam_step": str(step),
            "history": json.dumps(history),
        },
    )


def _start(
    path: Path,
    resume: bool,
    learner: PromptLearner,
    optimizer: torch.optim.Optimizer,
    config: PromptTrainingConfig,
    fingerprint: str,
    data_key: str,
) -> tuple[int, list[dict]]:
    if not path.exists():
        if resume:
            log.warning("%s: no saved state, starting from scratch", path)
        return 0, []
    if not resume:
        raise InputError(
            path.parent,
            "holds the state of an earlier prompt run; pass --resume "
            "to continue it, or choose another run folder",
        )
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(path, f"unreadable prompt training state ({exc})") from None
    saved = json.loads(meta.get("config", "{}"))
    wanted = dataclasses.asdict(config)
    changed = sorted(k for k in wanted if k != "epochs" and saved.get(k) != _jsonable(wanted[k]))
    if changed:
        raise InputError(
            path, f"was made with other settings ({', '.join(changed)}); resume with the same ones"
        )
    if meta.get("fingerprint") != fingerprint:
        raise CheckpointError(path, "was made with other CLIP weights")
    if meta.get("data") != data_key:
        raise InputError(path, "was made from other images (files added, removed or changed)")
    device = learner.embeddings.device
    with torch.no_grad():
        learner.embeddings.copy_(tensors["embeddings"].to(device))
    step = int(meta.get("adam_step", "0"))
    if step:
        optimizer.load_state_dict(
            {
                "state": {
                    0: {
                        "step": torch.tensor(float(step)),
                        "exp_avg": tensors["adam.exp_avg"].to(device),
                        "exp_avg_sq": tensors["adam.exp_avg_sq"].to(device),
                    }
                },
                "param_groups": optimizer.state_dict()["param_groups"],
            }
        )
    done = int(meta.get("epochs_done", "0"))
    log.info("resuming prompt training after epoch %d", done)
    return done, json.loads(meta.get("history", "[]"))


def _jsonable(value):
    return json.loads(json.dumps(value))
