"""Image folders: listing and deterministic held-out splits."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from textmef.errors import InputError
from textmef.files import SUPPORTED_SUFFIXES


def list_images(folder: str | Path) -> list[Path]:
    """Every supported image directly in ``folder``, sorted by name.

    Raises:
        InputError: The folder is missing, not a folder, or holds no supported image.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError(folder, "no such folder")
    if not folder.is_dir():
        raise InputError(folder, "is a file, expected a folder of images")
    images = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
    )
    if not images:
        wanted = ", ".join(sorted(SUPPORTED_SUFFIXES))
        raise InputError(folder, f"holds no images ({wanted})")
    return images


def split_holdout(
    items: Sequence[Path], fraction: float, seed: int
) -> tuple[list[Path], list[Path]]:
    """Split ``items`` into (train, held-out) reproducibly.

    At least one item is held out when ``fraction > 0`` and two or more items exist, and at
    least one always stays for training.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    count = round(len(items) * fraction)
    if fraction > 0 and len(items) >= 2:
        count = min(max(count, 1), len(items) - 1)
    import torch  # here, not at the top: listing folders must stay cheap for the CLI

    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    held = sorted(order[:count])
    train = [items[i] for i in range(len(items)) if i not in set(held)]
    return train, [items[i] for i in held]
