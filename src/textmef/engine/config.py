"""Stage 2 training configuration: YAML mapped onto frozen dataclasses, CLI overrides.

Every field is reachable as ``--section.field VALUE`` on the command line (generated from the
dataclasses, so the YAML keys, the flags and the code cannot drift apart).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textmef.errors import InputError


@dataclass(frozen=True)
class DataConfig:
    """Training data.

    Attributes:
        root: Folder with ``under/ over/ gt/`` (or SICE's ``trainA/ trainB/ trainC/``).
        crop: Random crop side in pixels (the paper: 224).
        augment: Random flips and 90° rotations.
        val_fraction: Sequences held out for validation (fixed by name hash).
        max_side: Downsize training images whose longer side exceeds this (0: keep).
        val_max_side: Downsize validation images likewise (0: keep); bounds CPU time.
        workers: DataLoader worker processes (crops are cheap; 0 is usually best on CPU).
        whole_fraction: Share of samples, in [0, 1], that are whole images shrunk to the
            crop size instead of crops (0: crops only, as the paper).
        val_root: Validate on the validation split of this folder instead of ``root``'s
            (training still uses ``root``'s training split); a validation sequence that
            also occurs in training is refused.
        by_sequence: Sample each sequence equally often, then one of its triplets (for
            ``make-pairs --pick all-pairs`` data, where stacks give 1 to 55 pairs);
            False samples triplets equally often.
    """

    root: str = ""
    crop: int = 224
    augment: bool = True
    val_fraction: float = 0.1
    max_side: int = 0
    val_max_side: int = 512
    workers: int = 0
    whole_fraction: float = 0.0
    val_root: str = ""
    by_sequence: bool = False


@dataclass(frozen=True)
class ModelConfig:
    """Which network: a named config, optionally with another width / state size.

    Attributes:
        name: A key of ``textmef.models.CONFIGS``.
        width: Base width C (0: the named config's).
        d_state: SSM state size N (0: the named config's).
        init: Start from this checkpoint's weights instead of a fresh initialisation
            (fine-tuning); its architecture must be the one configured here.
    """

    name: str = "textmef"
    width: int = 0
    d_state: int = 0
    init: str = ""


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule (docs/design.md §5; the authors' Adam betas).

    Attributes:
        lr: Initial learning rate.
        betas: Adam betas.
        weight_decay: Adam weight decay.
        batch_size: Crops per step and process.
        steps: Optimiser steps.
        milestones: Where the learning rate is multiplied by ``gamma``, as fractions of
            ``steps`` (the paper: epochs 100 and 135 of 200).
        gamma: Decay factor.
        grad_clip: Clip the gradient norm to this (0: off).
    """

    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0
    batch_size: int = 8
    steps: int = 9200
    milestones: tuple[float, ...] = (0.5, 0.675)
    gamma: float = 0.1
    grad_clip: float = 0.0


@dataclass(frozen=True)
class LossConfig:
    """Weights of the loss terms (``textmef.losses.FusionLoss``); the paper: MSE + λ · L_clip.

    A weight of 0 switches its term off (it is then not computed). The defaults are the
    paper's loss.

    Attributes:
        mse: Weight of MSE(fused, gt).
        mef_ssim: Weight of 1 − MEF-SSIM(fused; under, over), structure against the two
            inputs (needs ``data.crop`` >= 41).
        ssim: Weight of 1 − SSIM(fused, gt) (needs ``data.crop`` >= 11).
        colour: Weight of the colour term against gt (1 − cosine of the RGB vectors).
        clip_weight: λ (the paper: 1e-2). Used only when ``clip`` and ``prompts`` are given;
            otherwise the run is the paper's λ = 0 variant, and the log says so.
        clip: CLIP weights file (see ``textmef train-prompt``).
        prompts: Stage 1 prompts file learned with that CLIP.
    """

    mse: float = 1.0
    mef_ssim: float = 0.0
    ssim: float = 0.0
    colour: float = 0.0
    clip_weight: float = 1e-2
    clip: str = ""
    prompts: str = ""


@dataclass(frozen=True)
class RunConfig:
    """Where and how the run goes.

    Attributes:
        out: Run folder (checkpoints, logs).
        seed: Seeds initialisation and the sample stream.
        val_every: Validate every this many steps (and at the end).
        save_every: Write the resumable state every this many steps (and at the end).
        log_every: Write a CSV row every this many steps.
        device: ``cpu`` or ``cuda``.
        threads: CPU threads per process (0: PyTorch's default).
        session_steps: Stop after this many steps in this invocation and save the state, to
            be continued with ``--resume`` (for time-limited jobs; 0: run to the end).
    """

    out: str = "runs/textmef"
    seed: int = 0
    val_every: int = 500
    save_every: int = 100
    log_every: int = 10
    device: str = "cpu"
    threads: int = 0
    session_steps: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``textmef train`` needs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {f.name: f.type for f in dataclasses.fields(TrainConfig)}


def _section_classes() -> dict[str, type]:
    hints = typing.get_type_hints(TrainConfig)
    return {name: hints[name] for name in SECTIONS}


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML or command-line value to the field's declared type."""
    origin = typing.get_origin(annotation)
    try:
        if annotation is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in {"true", "false", "1", "0", "yes", "no"}:
                    raise ValueError(f"expected true or false, got {value!r}")
                return lowered in {"true", "1", "yes"}
            return bool(value)
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            args = typing.get_args(annotation)
            item_type = args[0]
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(item_type(x) for x in items)
            if len(items) != len(args):
                raise ValueError(f"expected {len(args)} values, got {len(items)}")
            return tuple(t(x) for t, x in zip(args, items))
        if origin is types.UnionType:
            return value
        if annotation is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(f"expected an integer, got {value}")
        return annotation(value)
    except (TypeError, ValueError) as exc:
        raise InputError(None, f"{where}: {exc}") from None


def config_from_dict(data: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a :class:`TrainConfig` from nested dicts; unknown keys are errors."""
    data = data or {}
    if not isinstance(data, dict):
        raise InputError(source, "must be a mapping of sections (data, model, optim, ...)")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise InputError(source, f"unknown section(s) {unknown}; known: {sorted(SECTIONS)}")
    sections = {}
    for name, cls in _section_classes().items():
        values = data.get(name) or {}
        if not isinstance(values, dict):
            raise InputError(source, f"section {name!r} must be a mapping")
        hints = typing.get_type_hints(cls)
        unknown = sorted(set(values) - set(hints))
        if unknown:
            raise InputError(
                source, f"unknown key(s) {unknown} in {name!r}; known: {sorted(hints)}"
            )
        sections[name] = cls(**{k: _coerce(v, hints[k], f"{name}.{k}") for k, v in values.items()})
    return TrainConfig(**sections)


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML config file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    return config_from_dict(data or {}, str(path))


def add_override_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--section.field`` for every field (default None: keep the config's value)."""
    for name, cls in _section_classes().items():
        group = parser.add_argument_group(f"{name} (overrides the config file)")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                raise TypeError(f"{cls.__name__}.{f.name} has no default")
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            group.add_argument(
                f"--{name}.{f.name}",
                dest=f"override__{name}__{f.name}",
                metavar=_metavar(hints[f.name]),
                default=None,
                help=f"default {shown!r}" if shown != "" else "default unset",
            )


def _metavar(annotation: Any) -> str:
    if annotation is bool:
        return "BOOL"
    if typing.get_origin(annotation) is tuple:
        return "A,B"
    return getattr(annotation, "__name__", "VALUE").upper()


def apply_overrides(config: TrainConfig, args: argparse.Namespace) -> TrainConfig:
    """Return ``config`` with every ``--section.field`` given on the command line applied."""
    changes: dict[str, dict[str, Any]] = {}
    for key, value in vars(args).items():
        if key.startswith("override__") and value is not None:
            _, section, name = key.split("__", 2)
            changes.setdefault(section, {})[name] = value
    if not changes:
        return config
    merged = config.to_dict()
    for section, values in changes.items():
        merged[section].update(values)
    return config_from_dict(merged, "command line")
