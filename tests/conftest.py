"""Shared fixtures: a tiny random CLIP and synthetic exposure folders."""

from pathlib import Path

import numpy as np
import pytest
import torch

from textmef import io
from textmef.clip import build_clip

# Mean brightness of the synthetic images of each exposure class.
LEVELS = {"under": 0.08, "over": 0.92, "well": 0.5}


def textured(level: float, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """An RGB float image around ``level``: blocky colour texture plus fine noise."""
    h, w = size
    blocks = rng.random((h // 8 + 1, w // 8 + 1, 3))
    texture = np.kron(blocks, np.ones((8, 8, 1)))[:h, :w]
    noise = 0.03 * rng.standard_normal((h, w, 3))
    return np.clip(level + 0.15 * (texture - 0.5) + noise, 0, 1).astype(np.float32)


def make_exposure_folders(root: Path, per_class: int, seed: int = 0) -> dict[str, list[Path]]:
    """Dark (under), bright (over) and mid-grey (well) textured PNGs of varied sizes."""
    rng = np.random.default_rng(seed)
    folders = {}
    for exposure, level in LEVELS.items():
        folder = root / exposure
        folder.mkdir(parents=True)
        for i in range(per_class):
            size = tuple(int(s) for s in rng.integers(40, 96, 2))
            io.write_image(folder / f"{i:03d}.png", textured(level, rng, size), 8)
        folders[exposure] = sorted(folder.iterdir())
    return folders


@pytest.fixture(scope="session")
def tiny_clip():
    """A randomly initialised tiny CLIP (seeded), frozen, in eval mode."""
    torch.manual_seed(1234)
    return build_clip("tiny").eval().requires_grad_(False)


@pytest.fixture(scope="session")
def exposure_folders(tmp_path_factory):
    return make_exposure_folders(tmp_path_factory.mktemp("exposures"), per_class=12)
