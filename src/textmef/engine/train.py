"""Stage 2: train the fusion network; resumable; DDP under torchrun.

The loss is :class:`textmef.losses.FusionLoss` with the weights of ``config.loss``: the
paper's MSE + λ · L_clip by default, optionally with 1 − MEF-SSIM against the two inputs,
1 − SSIM against the reference and a colour term.

Run folder layout (``run.out``)::

    config.yaml          the resolved config of the run
    split.json           training and validation sequence names
    state.pt             resumable state: model, optimiser, scheduler, step, RNG states
    last.safetensors     latest weights (a normal checkpoint: ``textmef fuse --weights``)
    best.safetensors     weights with the best validation PSNR so far
    log.csv              one row per logged step (total loss and each term) and per
                         validation (PSNR, SSIM, MEF-SSIM, and two-frame Mertens's)
    summary.json         final figures (validation scores next to Mertens, wall time)

Only rank 0 writes. Every file is written to a temporary name and renamed; a temporary
file that a killed run left behind is removed when the run starts or resumes.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from textmef.checkpoint import save_checkpoint
from textmef.data.triplets import (
    StreamBatches,
    Triplet,
    TripletCrops,
    find_triplets,
    load_triplet,
    sequence_of,
    split_by_sequence,
)
from textmef.engine.config import TrainConfig
from textmef.errors import CheckpointError, InputError, TextmefError
from textmef.io import atomic_path, remove_stale_temp_files
from textmef.losses import FusionLoss
from textmef.models import FusionNetConfig, model_config
from textmef.models.fusionnet import FusionNet

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
# Log columns of the loss terms that are logged only when their weight is not 0 (MSE and
# L_clip always are, as before). Their values are the terms before weighting, i.e. 1 − SSIM,
# not SSIM: hence the prefix, so that they are not read as scores like val_ssim.
TERM_COLUMNS = {"mef_ssim": "loss_mef_ssim", "ssim": "loss_ssim", "colour": "loss_colour"}
# New columns go at the end, so that readers of older logs by position still work.
LOG_FIELDS = [
    "step",
    "kind",
    "loss",
    "mse",
    "clip",
    "lr",
    "sec_per_step",
    "val_psnr",
    "val_ssim",
    "mertens_psnr",
    "mertens_ssim",
    *TERM_COLUMNS.values(),
    "val_mef_ssim",
    "mertens_mef_ssim",
]
# MEF-SSIM's three scales of 11x11 windows need sides of at least 41 pixels; smaller
# validation images are scored by PSNR and SSIM only.
MEF_SSIM_MIN_SIDE = 41


class TrainingDivergedError(TextmefError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


@dataclass
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


@dataclass
class TrainResult:
    """Outcome of :func:`train`."""

    step: int
    history: list[dict] = field(default_factory=list)
    best_psnr: float | None = None
    summary: dict = field(default_factory=dict)


# ---- setup -----------------------------------------------------------------------------
def init_distributed(device: str) -> Distributed:
    """Join the torchrun job described by the environment, if any (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Distributed(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    )


def build_model_config(config: TrainConfig) -> FusionNetConfig:
    """The registered architecture ``model.name`` with the config's width/d_state overrides."""
    base = model_config(config.model.name)
    return dataclasses.replace(
        base,
        width=config.model.width or base.width,
        d_state=config.model.d_state or base.d_state,
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    numpy_state = np.random.get_state(legacy=True)
    assert isinstance(numpy_state, tuple)  # the global generator is always a legacy MT19937
    kind, keys, pos, has_gauss, cached = numpy_state
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def _atomic_torch_save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _atomic_text(text: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _remove_stale_temp_files(out: Path, report: Callable[[str], None]) -> None:
    """Remove the temporary files a killed run (e.g. SIGKILL mid-write) left in ``out``."""
    removed = remove_stale_temp_files(out)
    if removed:
        report(
            f"removed {len(removed)} temporary file{'s' if len(removed) > 1 else ''} left by "
            f"an interrupted run: {', '.join(sorted(p.name for p in removed))}"
        )


def _clip_loss(config: TrainConfig, device: torch.device, report: Callable[[str], None]):
    """The CLIP term, or None for the λ = 0 variant (with the reason in the log)."""
    loss = config.loss
    if loss.clip_weight == 0:
        report("λ = 0 (loss.clip_weight is 0): no CLIP term, the paper's λ = 0 variant")
        return None
    if not (loss.clip and loss.prompts):
        missing = " and ".join(
            n for n, v in (("loss.clip", loss.clip), ("loss.prompts", loss.prompts)) if not v
        )
        report(
            f"λ = 0: {missing} not given, so training has no CLIP term (the paper's λ = 0 "
            f"variant); give CLIP weights and stage 1 prompts for λ = {loss.clip_weight}"
        )
        return None
    from textmef.clip.loading import load_clip
    from textmef.clip.prompts import load_prompts
    from textmef.losses import CLIPExposureLoss

    clip = load_clip(loss.clip, device=device)
    module = CLIPExposureLoss.from_prompts(clip, load_prompts(loss.prompts)).to(device)
    report(
        f"λ = {loss.clip_weight}: L_clip with {Path(loss.clip).name} and {Path(loss.prompts).name}"
    )
    return module


def _check_config(config: TrainConfig) -> None:
    """Refuse settings that would only fail later, after the data has been read."""
    loss, data = config.loss, config.data
    for name in ("mse", "mef_ssim", "ssim", "colour", "clip_weight"):
        weight = getattr(loss, name)
        if not 0.0 <= weight < math.inf:  # also refuses NaN
            raise InputError(None, f"loss.{name} must be a finite weight >= 0, got {weight}")
    if loss.mef_ssim and data.crop < MEF_SSIM_MIN_SIDE:
        raise InputError(
            None,
            f"loss.mef_ssim needs data.crop >= {MEF_SSIM_MIN_SIDE} (three scales of 11x11 "
            f"windows), got {data.crop}",
        )
    if loss.ssim and data.crop < 11:
        raise InputError(None, f"loss.ssim needs data.crop >= 11 (its window), got {data.crop}")
    if not 0.0 <= data.whole_fraction <= 1.0:
        raise InputError(None, f"data.whole_fraction must be in [0, 1], got {data.whole_fraction}")


def _split(config: TrainConfig) -> tuple[list[Triplet], list[Triplet]]:
    """Training triplets from ``data.root``; validation ones from it or ``data.val_root``."""
    data = config.data
    train_set, val_set = split_by_sequence(find_triplets(data.root), data.val_fraction)
    if not data.val_root:
        return train_set, val_set
    candidates = find_triplets(data.val_root)
    try:
        _, val_set = split_by_sequence(candidates, data.val_fraction)
    except InputError:  # "no training sequence left": here that means all of it validates
        val_set = candidates
    # Another folder may hold the same scenes (other pairs of one stack, a re-export):
    # validating on a scene the network trained on would flatter it.
    seen = {sequence_of(t.name) for t in train_set}
    shared = sorted({sequence_of(t.name) for t in val_set} & seen)
    if shared:
        listed = ", ".join(shared[:5]) + (f" and {len(shared) - 5} more" if len(shared) > 5 else "")
        raise InputError(
            data.val_root,
            f"validation sequence(s) {listed} also occur in the training set of {data.root}; "
            "remove them from one of the folders",
        )
    return train_set, val_set


# ---- validation ------------------------------------------------------------------------
@dataclass
class ValidationSet:
    """Held-out sequences in memory, with the two-frame Mertens baseline scored once."""

    names: list[str]
    unders: list[torch.Tensor]
    overs: list[torch.Tensor]
    gts: list[torch.Tensor]
    mertens_psnr: float | None = None
    mertens_ssim: float | None = None
    # Mean over the sequences large enough for MEF-SSIM (None when there are none).
    mertens_mef_ssim: float | None = None


def _mef_ssim_or_none(under: torch.Tensor, over: torch.Tensor, fused: torch.Tensor) -> float | None:
    """MEF-SSIM of (1, 3, H, W) ``fused`` against the pair, None for images too small."""
    from textmef.metrics import mef_ssim

    if min(fused.shape[-2:]) < MEF_SSIM_MIN_SIDE:
        return None
    return float(mef_ssim(torch.cat([under, over]), fused))


def _mean_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def load_validation(triplets: list[Triplet], max_side: int) -> ValidationSet:
    """Read the validation triplets and score two-frame Mertens on them once."""
    from textmef.baselines import mertens
    from textmef.metrics import psnr, ssim

    data = ValidationSet([], [], [], [])
    scores = []
    for t in triplets:
        under, over, gt = load_triplet(t, max_side or None)
        as_tensor = [
            torch.from_numpy(a).permute(2, 0, 1)[None].contiguous() for a in (under, over, gt)
        ]
        data.names.append(t.name)
        data.unders.append(as_tensor[0])
        data.overs.append(as_tensor[1])
        data.gts.append(as_tensor[2])
        baseline = torch.from_numpy(mertens([under, over])).permute(2, 0, 1)[None]
        scores.append(
            (
                float(psnr(baseline, as_tensor[2])),
                float(ssim(baseline, as_tensor[2])),
                _mef_ssim_or_none(as_tensor[0], as_tensor[1], baseline),
            )
        )
    if scores:
        data.mertens_psnr = float(np.mean([s[0] for s in scores]))
        data.mertens_ssim = float(np.mean([s[1] for s in scores]))
        data.mertens_mef_ssim = _mean_or_none([s[2] for s in scores])
    return data


@torch.no_grad()
def validate(
    model: FusionNet, data: ValidationSet, device: torch.device
) -> tuple[dict[str, float | None], list[dict]]:
    """Mean scores of the clamped fusion, and per-sequence rows.

    Returns:
        ``({"psnr": ..., "ssim": ..., "mef_ssim": ...}, rows)``: PSNR and SSIM against the
        references, MEF-SSIM against the input pair (None when no image is large enough),
        and one row per sequence with the same keys and its ``name``.
    """
    from textmef.api import fuse
    from textmef.metrics import psnr, ssim

    was_training = model.training
    model.eval()
    rows: list[dict] = []
    for name, u, o, g in zip(data.names, data.unders, data.overs, data.gts):
        # The network itself is validated, never the guided path for big photos.
        fused = fuse(u, o, model=model, device=device, full_res=True)
        rows.append(
            {
                "name": name,
                "psnr": float(psnr(fused, g)),
                "ssim": float(ssim(fused, g)),
                "mef_ssim": _mef_ssim_or_none(u, o, fused),
            }
        )
    model.train(was_training)
    means: dict[str, float | None] = {
        "psnr": float(np.mean([r["psnr"] for r in rows])),
        "ssim": float(np.mean([r["ssim"] for r in rows])),
        "mef_ssim": _mean_or_none([r["mef_ssim"] for r in rows]),
    }
    return means, rows


# ---- the loop --------------------------------------------------------------------------
def train(
    config: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    report: Callable[[str], None] = print,
) -> TrainResult:
    """Train the fusion network as ``config`` says; see the module docstring for outputs.

    Args:
        config: The run's configuration.
        resume: Continue from ``run.out/state.pt``.
        progress: Show a progress bar (rank 0).
        report: Receives the log lines meant for people (rank 0).

    Raises:
        TrainingDivergedError: The loss became NaN/inf (the last good checkpoint is kept).
        InputError: Bad data or configuration.
    """
    started = time.perf_counter()
    dist_info = init_distributed(config.run.device)
    if not dist_info.main:
        report = _silent  # only rank 0 talks
    from textmef.runtime import resolve_device, set_threads, tune_allocator

    tune_allocator()  # halves a C = 64 step on CPU: activations reuse heap memory
    device = resolve_device(config.run.device)
    if device.type == "cuda" and dist_info.active:
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    if config.run.threads:
        set_threads(config.run.threads)
    out = Path(config.run.out)
    state_path = out / STATE_FILE
    if dist_info.main:
        out.mkdir(parents=True, exist_ok=True)
        if state_path.exists() and not resume:
            raise InputError(
                out, "holds an earlier run; pass --resume to continue it, or choose another run.out"
            )
        _remove_stale_temp_files(out, report)
    if not config.data.root:
        raise InputError(None, "no training data: set data.root (a folder with under/ over/ gt/)")
    _check_config(config)

    train_set, val_set = _split(config)
    if config.data.val_root:
        report(
            f"data: {len(train_set)} training sequences from {config.data.root}, "
            f"{len(val_set)} validation sequences from {config.data.val_root}"
        )
    else:
        report(
            f"data: {len(train_set)} training and {len(val_set)} validation sequences "
            f"from {config.data.root}"
        )
    dataset = TripletCrops(
        train_set,
        config.data.crop,
        config.data.augment,
        config.run.seed,
        config.data.max_side or None,
        whole_fraction=config.data.whole_fraction,
        by_sequence=config.data.by_sequence,
    ).load()

    _seed_everything(config.run.seed)
    model_config = build_model_config(config)
    # channels_last like the activations: conv weight gradients then come out in the layout
    # DDP's buckets expect (otherwise it warns and copies on every step).
    # Module.to accepts memory_format (documented), but torch's type stubs leave it out.
    model = FusionNet(model_config)
    if config.model.init:
        _init_from(model, Path(config.model.init), report)
    model = model.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=config.optim.lr,
        betas=config.optim.betas,
        weight_decay=config.optim.weight_decay,
    )
    milestones = sorted({max(1, round(f * config.optim.steps)) for f in config.optim.milestones})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, config.optim.gamma)
    clip_loss = _clip_loss(config, device, report)
    weight = config.loss.clip_weight if clip_loss is not None else 0.0
    try:
        loss_fn = FusionLoss(
            mse=config.loss.mse,
            mef_ssim=config.loss.mef_ssim,
            ssim=config.loss.ssim,
            colour=config.loss.colour,
            clip=weight,
            clip_loss=clip_loss,
        ).to(device)
    except ValueError as exc:
        raise InputError(None, f"loss: {exc}") from None
    report(f"loss: {loss_fn.describe()}")

    start_step = 0
    best: dict[str, float | int | None] = {"psnr": None, "step": None}
    history: list[dict] = []
    elapsed_before = 0.0
    if resume and state_path.exists():
        start_step, best, history, elapsed_before = _load_state(
            state_path, config, model, optimizer, scheduler
        )
        report(f"resuming at step {start_step} of {config.optim.steps}")
    elif resume:
        report(f"{state_path} does not exist yet: starting from scratch")

    params = sum(p.numel() for p in model.parameters())
    report(
        f"model {config.model.name} ({model_config.width} wide, d_state "
        f"{model_config.d_state}): {params:,} parameters; {config.optim.steps} steps of "
        f"{config.optim.batch_size * dist_info.world} crops of {config.data.crop} px"
        + (f" over {dist_info.world} processes" if dist_info.active else "")
    )
    if dist_info.main:
        _write_run_files(out, config, train_set, val_set, model_config)
    validation = (
        load_validation(val_set, config.data.val_max_side) if (dist_info.main and val_set) else None
    )
    if validation is not None and validation.mertens_psnr is not None:
        report(
            f"validation: two-frame Mertens scores PSNR {validation.mertens_psnr:.2f} dB, "
            f"SSIM {validation.mertens_ssim:.4f} against the references"
            + _mef_ssim_text(validation.mertens_mef_ssim, ", MEF-SSIM {:.4f} against the pairs")
        )

    net = model
    if dist_info.active:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    stop = config.optim.steps
    if config.run.session_steps:
        stop = min(stop, start_step + config.run.session_steps)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=StreamBatches(
            config.optim.batch_size, start_step, stop, dist_info.rank, dist_info.world
        ),
        num_workers=config.data.workers,
        persistent_workers=config.data.workers > 0,
    )
    writer = _CsvLog(out / "log.csv", start_step) if dist_info.main else None
    tensorboard = _tensorboard(out) if dist_info.main else None

    from tqdm import tqdm

    bar = tqdm(
        total=config.optim.steps,
        initial=start_step,
        desc="training",
        unit="step",
        disable=None if (progress and dist_info.main) else True,
    )
    model.train()
    step = start_step
    window: list[dict] = []
    tick = time.perf_counter()
    for under, over, gt in loader:
        under, over, gt = under.to(device), over.to(device), gt.to(device)
        fused = net(under, over)
        loss, terms = loss_fn(fused, under, over, gt)
        if not torch.isfinite(loss).all():
            bar.close()
            raise TrainingDivergedError(
                f"the loss became {loss.item()} at step {step + 1}; stopped, keeping the last "
                f"good checkpoint ({_last_good(out)})"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        window.append(_logged_terms(loss, terms, fused, gt))
        bar.update(1)
        bar.set_postfix(loss=f"{window[-1]['loss']:.4f}")
        if step % config.run.log_every == 0 or step == stop:
            now = time.perf_counter()
            row: dict[str, object] = {
                "step": step,
                "kind": "train",
                **{k: float(np.mean([w[k] for w in window])) for k in window[0]},
                "lr": scheduler.get_last_lr()[0],
                "sec_per_step": (now - tick) / len(window),
            }
            tick, window = now, []
            history.append(row)
            if writer:
                writer.write(row)
            if tensorboard:
                for key in ("loss", "mse", "clip", *TERM_COLUMNS.values(), "lr"):
                    if key in row:
                        tensorboard.add_scalar(f"train/{key}", row[key], step)
        if validation is not None and (
            step % config.run.val_every == 0 or step == config.optim.steps
        ):
            scores, _ = validate(model, validation, device)
            psnr_value, ssim_value, mef_value = scores["psnr"], scores["ssim"], scores["mef_ssim"]
            assert psnr_value is not None and ssim_value is not None  # always computed
            row = {
                "step": step,
                "kind": "val",
                "val_psnr": psnr_value,
                "val_ssim": ssim_value,
                "mertens_psnr": validation.mertens_psnr,
                "mertens_ssim": validation.mertens_ssim,
            }
            if mef_value is not None:
                row["val_mef_ssim"] = mef_value
                row["mertens_mef_ssim"] = validation.mertens_mef_ssim
            history.append(row)
            assert writer is not None  # validation runs on the main process, which logs
            writer.write(row)
            if tensorboard:
                for key in ("psnr", "ssim", "mef_ssim"):
                    if scores[key] is not None:
                        tensorboard.add_scalar(f"val/{key}", scores[key], step)
            improved = best["psnr"] is None or psnr_value > best["psnr"]
            if improved:
                best = {"psnr": psnr_value, "ssim": ssim_value, "step": step}
                if mef_value is not None:
                    best["mef_ssim"] = mef_value
                save_checkpoint(model, out / "best.safetensors", _extra(step, best))
            report(
                f"step {step}: validation PSNR {psnr_value:.2f} dB, SSIM {ssim_value:.4f}"
                + _mef_ssim_text(mef_value, ", MEF-SSIM {:.4f}")
                + f" (two-frame Mertens {validation.mertens_psnr:.2f} dB"
                + _mef_ssim_text(validation.mertens_mef_ssim, ", MEF-SSIM {:.4f}")
                + ")"
                + (" - best so far" if improved else "")
            )
        if dist_info.main and (step % config.run.save_every == 0 or step == stop):
            save_checkpoint(model, out / "last.safetensors", _extra(step, best))
            _save_state(
                state_path,
                config,
                model,
                optimizer,
                scheduler,
                step,
                best,
                history,
                elapsed_before + time.perf_counter() - started,
            )
    bar.close()

    fingerprints = _rank_fingerprints(model, dist_info)
    result = TrainResult(step, history, best["psnr"])
    if dist_info.main:
        result.summary = _summary(
            config,
            model_config,
            params,
            step,
            best,
            validation,
            history,
            elapsed_before + time.perf_counter() - started,
            dist_info,
            fingerprints,
            weight,
            loss_fn,
        )
        _atomic_text(
            json.dumps(result.summary, indent=2, sort_keys=True) + "\n", out / "summary.json"
        )
        report(
            f"done: step {step}; best validation PSNR "
            + (
                f"{best['psnr']:.2f} dB at step {best['step']}"
                if best["psnr"] is not None
                else "n/a (no validation sequences)"
            )
            + f"; run folder {out}"
        )
    if tensorboard:
        tensorboard.close()
    if dist_info.active:
        import torch.distributed as dist

        dist.barrier()
    return result


def _init_from(model: FusionNet, path: Path, report: Callable[[str], None]) -> None:
    """Load a checkpoint's weights into the fresh ``model`` (architectures must match)."""
    from textmef.checkpoint import load_checkpoint

    start, _ = load_checkpoint(path)
    if start.config != model.config:
        raise InputError(
            path,
            f"holds a {start.config.width}-wide network with d_state {start.config.d_state}; "
            f"the run trains {model.config.width}-wide with d_state {model.config.d_state}",
        )
    model.load_state_dict(start.state_dict())
    report(f"starting from the weights of {path}")


def _silent(_: str) -> None:
    pass


def _mef_ssim_text(value: float | None, template: str) -> str:
    return template.format(value) if value is not None else ""


def _logged_terms(
    loss: torch.Tensor, terms: dict[str, torch.Tensor], fused: torch.Tensor, gt: torch.Tensor
) -> dict[str, float]:
    """One step's log values: the total, MSE and L_clip (as always), then the other terms."""
    if "mse" in terms:
        mse = terms["mse"].item()
    else:  # weight 0: not part of the loss, but the log has always shown it
        with torch.no_grad():
            mse = F.mse_loss(fused, gt).item()
    values = {
        "loss": loss.item(),
        "mse": mse,
        "clip": terms["clip"].item() if "clip" in terms else 0.0,
    }
    for name, column in TERM_COLUMNS.items():
        if name in terms:
            values[column] = terms[name].item()
    return values


def _extra(step: int, best: dict) -> dict[str, str]:
    return {"step": str(step), "best": json.dumps(best)}


def _last_good(out: Path) -> str:
    path = out / "last.safetensors"
    return str(path) if path.exists() else "none written yet"


def _write_run_files(
    out: Path,
    config: TrainConfig,
    train_set: list[Triplet],
    val_set: list[Triplet],
    model_config: FusionNetConfig,
) -> None:
    import yaml

    _atomic_text(
        yaml.safe_dump(json.loads(json.dumps(config.to_dict())), sort_keys=False),
        out / "config.yaml",
    )
    split = {
        "train": [t.name for t in train_set],
        "validation": [t.name for t in val_set],
        "model": model_config.to_dict(),
    }
    _atomic_text(json.dumps(split, indent=2) + "\n", out / "split.json")


def _save_state(
    path: Path,
    config: TrainConfig,
    model: FusionNet,
    optimizer,
    scheduler,
    step: int,
    best: dict,
    history: list[dict],
    seconds: float,
) -> None:
    _atomic_torch_save(
        {
            "seconds": seconds,
            "format": "textmef-train-state/1",
            "step": step,
            "config": json.dumps(config.to_dict()),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(),
            "best": json.dumps(best),
            "history": json.dumps(history),
        },
        path,
    )


def _load_state(
    path: Path, config: TrainConfig, model: FusionNet, optimizer, scheduler
) -> tuple[int, dict, list[dict], float]:
    try:
        # weights_only: tensors and plain containers only, never arbitrary objects.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(path, f"unreadable training state ({str(exc)[:200]})") from None
    saved = json.loads(state["config"])
    wanted = json.loads(json.dumps(config.to_dict()))
    defaults = json.loads(json.dumps(TrainConfig().to_dict()))
    for section in ("model", "data"):
        # A state written before a field existed ran with that field's default.
        if {**defaults[section], **saved[section]} != wanted[section]:
            raise InputError(
                path,
                f"was made with other {section} settings; resume with the "
                f"same ones (saved: {saved[section]})",
            )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return (
        state["step"],
        json.loads(state["best"]),
        json.loads(state["history"]),
        float(state.get("seconds", 0.0)),
    )


class _CsvLog:
    """Append-only CSV log; on resume, rows after the resumed step are dropped first."""

    def __init__(self, path: Path, start_step: int) -> None:
        self.path = path
        rows = []
        if start_step and path.exists():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, LOG_FIELDS).writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _rank_fingerprints(model: FusionNet, dist_info: Distributed) -> list[str]:
    import hashlib

    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    mine = digest.hexdigest()
    if not dist_info.active:
        return [mine]
    import torch.distributed as dist

    gathered: list[str] = [""] * dist_info.world
    dist.all_gather_object(gathered, mine)
    return gathered


def _summary(
    config: TrainConfig,
    model_config: FusionNetConfig,
    params: int,
    step: int,
    best: dict,
    validation: ValidationSet | None,
    history: list[dict],
    seconds: float,
    dist_info: Distributed,
    fingerprints: list[str],
    weight: float,
    loss_fn: FusionLoss,
) -> dict:
    vals = [h for h in history if h.get("kind") == "val"]
    return {
        "steps": step,
        "params": params,
        "model": model_config.to_dict(),
        "config": json.loads(json.dumps(config.to_dict())),
        "processes": dist_info.world,
        "ranks_identical": len(set(fingerprints)) == 1,
        "weights_sha256_per_rank": fingerprints,
        "best": best,
        "last_validation": vals[-1] if vals else None,
        "validation_sequences": len(validation.names) if validation else 0,
        "mertens_psnr": validation.mertens_psnr if validation else None,
        "mertens_ssim": validation.mertens_ssim if validation else None,
        "mertens_mef_ssim": validation.mertens_mef_ssim if validation else None,
        "wall_seconds": round(seconds, 1),
        "clip_weight_used": weight,
        "loss_weights": dict(loss_fn.weights),
        "loss": loss_fn.describe(),
        "final_train_mse": next(
            (h["mse"] for h in reversed(history) if h.get("kind") == "train"), math.nan
        ),
    }
