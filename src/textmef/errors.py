"""Exceptions that the CLI turns into one-line messages (never a traceback)."""

from __future__ import annotations

from pathlib import Path


class TextmefError(Exception):
    """Base class of every error textmef reports to users."""


class InputError(TextmefError, ValueError):
    """A user-supplied file or value is unusable; the message names it and the problem."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


class CheckpointError(InputError):
    """A weights file is missing, unsafe, or does not match the model."""
