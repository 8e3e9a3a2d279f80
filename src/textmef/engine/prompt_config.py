"""Stage 1's recipe as a frozen config (no heavy imports: the command line reads defaults)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

__all__ = ["PromptTrainingConfig"]


@dataclass(frozen=True)
class PromptTrainingConfig:
    """Stage 1 recipe; the defaults are the authors' (``train_prompt.py``).

    Attributes:
        mode: ``learned`` (three prompts), ``pos-neg`` or ``fixed``.
        length: Learnable tokens per prompt.
        texts: Handcrafted texts for ``fixed`` (empty: the packaged defaults).
        lr: Adam learning rate.
        weight_decay: Adam (L2) weight decay.
        batch_size: Images per step.
        epochs: Passes over the (class-balanced) training list.
        augment: Draw one of the 8 flips/rotations per image and step.
        holdout: Fraction of each folder kept out of training for the accuracy report.
        seed: Seeds the prompt initialisation, the split, the order and the augmentations.
    """

    mode: str = "learned"
    length: int = 16
    texts: tuple[str, ...] = ()
    lr: float = 5e-5
    weight_decay: float = 1e-3
    batch_size: int = 16
    epochs: int = 180
    augment: bool = True
    holdout: float = 0.1
    seed: int = 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)
