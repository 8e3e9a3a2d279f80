"""Matching files across folders by stem: ``under/a.png`` goes with ``over/a.jpg``.

One rule for every place that pairs files (``textmef fuse --under --over``, triplet
datasets for training and the benchmark): images directly in each folder, matched by file
name without suffix; two images of one folder with the same stem (``a.png`` and ``a.jpg``)
are refused rather than one silently winning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from textmef.data.folders import list_images
from textmef.errors import InputError

__all__ = ["StemMatch", "images_by_stem", "match_by_stem"]


def images_by_stem(folder: str | Path) -> dict[str, Path]:
    """The images directly in ``folder`` by stem.

    Raises:
        InputError: the folder is missing or holds no image, or two images share a stem.
    """
    files: dict[str, Path] = {}
    for path in list_images(folder):
        if path.stem in files:
            raise InputError(
                path,
                f"two images share the stem {path.stem!r} ({files[path.stem].name}); "
                "pairs are matched by stem, so rename or remove one",
            )
        files[path.stem] = path
    return files


@dataclass(frozen=True)
class StemMatch:
    """Images of several folders matched by stem.

    Attributes:
        stems: stems present in every folder, sorted.
        files: per folder, stem -> path (every image of that folder).
        unmatched: stems present in some folders but not all, sorted.
    """

    stems: list[str]
    files: list[dict[str, Path]]
    unmatched: list[str]

    def groups(self) -> list[tuple[Path, ...]]:
        """One tuple of paths (in folder order) per matched stem."""
        return [tuple(f[stem] for f in self.files) for stem in self.stems]


def match_by_stem(folders: Sequence[str | Path]) -> StemMatch:
    """Match the images of ``folders`` by stem.

    Raises:
        InputError: a folder is missing, empty or has duplicate stems, or no stem is
            present in all of them.
    """
    files = [images_by_stem(folder) for folder in folders]
    every = set.intersection(*(set(f) for f in files))
    some = set.union(*(set(f) for f in files))
    if not every:
        names = ", ".join(str(f) for f in folders)
        raise InputError(None, f"no file stem is present in all of {names}")
    return StemMatch(stems=sorted(every), files=files, unmatched=sorted(some - every))
