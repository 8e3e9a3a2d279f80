"""Enfuse exposure fusion (enblend-enfuse project) through its command-line program.

Enfuse implements Mertens-style fusion with its own weights and multiresolution blending,
and is the fusion tool most photographers actually use, so it is the reference baseline.
It is not a Python package: install the Debian package ``enfuse`` (bookworm and older) or
``enblend-enfuse`` (newer releases), or point ``TEXTMEF_ENFUSE`` at the binary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from textmef import io
from textmef.baselines._common import fuse_per_image, prepare_pair
from textmef.errors import TextmefError

ENV_VAR = "TEXTMEF_ENFUSE"
DEFAULT_TIMEOUT = 600.0
_INSTALL_HINT = (
    "install the Debian package 'enfuse' (bookworm and older) or 'enblend-enfuse' (newer), "
    f"or set {ENV_VAR} to the enfuse binary"
)
_STDERR_TAIL = 2000


class EnfuseNotFoundError(TextmefError, FileNotFoundError):
    """The enfuse binary is missing or not executable; the message says how to install it."""


class EnfuseError(TextmefError, RuntimeError):
    """Enfuse ran but failed or timed out; the message ends with the tail of its stderr."""


def find_enfuse(binary: str | os.PathLike[str] | None = None) -> str:
    """Locate the enfuse binary.

    Args:
        binary: a path or a command name; if None, ``$TEXTMEF_ENFUSE`` and then ``enfuse``
            on the PATH are tried.

    Returns:
        The absolute path of an executable file.

    Raises:
        EnfuseNotFoundError: nothing executable was found where the arguments point.
    """
    if binary is not None:
        wanted, source = os.fspath(binary), "binary argument"
    elif os.environ.get(ENV_VAR):
        wanted, source = os.environ[ENV_VAR], f"${ENV_VAR}"
    else:
        wanted, source = "enfuse", "PATH"
    # shutil.which accepts a path too: it then only checks that the file is executable.
    found = shutil.which(wanted)
    if found is None:
        where = "on the PATH" if source == "PATH" else f"at {wanted!r} (from {source})"
        raise EnfuseNotFoundError(f"enfuse not found {where}; {_INSTALL_HINT}")
    return os.path.abspath(found)


def enfuse_available(binary: str | os.PathLike[str] | None = None) -> bool:
    """Whether :func:`find_enfuse` finds an executable enfuse (it is not run)."""
    try:
        find_enfuse(binary)
    except EnfuseNotFoundError:
        return False
    return True


def enfuse_version(binary: str | os.PathLike[str] | None = None) -> str | None:
    """The version enfuse reports, e.g. ``"4.2"``, or None if it is missing or will not say."""
    try:
        exe = find_enfuse(binary)
        run = subprocess.run(
            [exe, "--version"],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=30,
            check=False,
        )
    except (EnfuseNotFoundError, OSError, subprocess.TimeoutExpired):
        return None
    # The first line reads "enfuse 4.2"; builds differ in what follows the number.
    first = run.stdout.strip().splitlines()[0].split() if run.stdout.strip() else []
    if run.returncode != 0 or len(first) < 2 or first[0] != "enfuse":
        return None
    return first[1]


def enfuse_frames(
    frames: Sequence[np.ndarray],
    *,
    binary: str | os.PathLike[str] | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
) -> np.ndarray:
    """Fuse N >= 2 RGB frames (float32 HxWx3 in [0, 1], any order) with the enfuse program.

    The numpy, any-number-of-frames form of :func:`enfuse_fusion` (same options, same
    caveats); returns float32 HxWx3 in [0, 1].

    Raises:
        ValueError: fewer than 2 frames, or frames of different shapes.
        EnfuseNotFoundError: the binary is missing.
        EnfuseError: enfuse failed, timed out or wrote no image.
    """
    if len(frames) < 2:
        raise ValueError(f"enfuse needs at least 2 frames, got {len(frames)}")
    if len({f.shape for f in frames}) != 1:
        raise ValueError(f"frames differ in size: {sorted({f.shape for f in frames})}")
    args = _check_extra_args(extra_args)
    exe = find_enfuse(binary)
    with tempfile.TemporaryDirectory(prefix="textmef-enfuse-") as tmp:
        return _run_enfuse(exe, args, frames, Path(tmp), timeout)


def enfuse_fusion(
    under: torch.Tensor,
    over: torch.Tensor,
    *,
    binary: str | os.PathLike[str] | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
) -> torch.Tensor:
    """Fuse each under/over pair in a batch with the enfuse program.

    Each pair goes to enfuse as two 16-bit TIFF files in a temporary directory and comes
    back as a 16-bit TIFF (``--depth=16``), so quantisation costs at most 1/65535. Enfuse's
    own defaults apply unless ``extra_args`` changes them: exposure weight 1, saturation
    weight 0.2, contrast weight 0, entropy weight 0, exposure optimum 0.5 and width 0.2,
    soft masks. With no ICC profile in the files enfuse blends in the "IDENTITY" colour
    space, i.e. directly on the RGB values.

    Enfuse is not bit-exact: when it rounds to 16 bits, repeated runs on the same files
    differ by one level (1/65535) in about a tenth of the pixels, with one thread as well.

    Args:
        under: the under-exposed image(s), (B, 3, H, W) or (3, H, W), float, RGB in [0, 1].
        over: the over-exposed image(s), same shape and device.
        binary: the enfuse program, a path or a command name; default ``$TEXTMEF_ENFUSE``,
            then ``enfuse`` on the PATH.
        extra_args: more enfuse options, e.g. ``("--contrast-weight=0.5",)``; they come
            after ``--depth=16`` and so can override it.
        timeout: seconds allowed for each enfuse run.

    Returns:
        float32 tensor of the input's shape and device, values in [0, 1].

    Raises:
        TypeError: an input is not a float tensor, or ``extra_args`` is a single string.
        ValueError: the shapes or devices differ, or the shape is not an RGB image (batch).
        EnfuseNotFoundError: the binary is missing (a FileNotFoundError).
        EnfuseError: enfuse failed, timed out or wrote no image (a RuntimeError).
    """
    args = _check_extra_args(extra_args)
    # Validate the tensors before looking for the binary: a caller's shape bug should not
    # be reported as a missing installation.
    prepare_pair(under, over, "enfuse")
    exe = find_enfuse(binary)
    with tempfile.TemporaryDirectory(prefix="textmef-enfuse-") as tmp:
        folder = Path(tmp)
        return fuse_per_image(
            under, over, lambda u, o: _run_enfuse(exe, args, [u, o], folder, timeout), "enfuse"
        )


class EnfuseFusion(nn.Module):
    """:func:`enfuse_fusion` as a module, called like the fusion network: ``m(under, over)``.

    The binary is looked up on each call, not here, so building the module (e.g. for a
    benchmark's method list) never touches the file system.

    Args:
        binary: the enfuse program; see :func:`enfuse_fusion`.
        extra_args: more enfuse options; see :func:`enfuse_fusion`.
        timeout: seconds allowed for each enfuse run.
    """

    def __init__(
        self,
        binary: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__()
        self.binary = binary
        self.extra_args = _check_extra_args(extra_args)
        self.timeout = timeout

    def forward(self, under: torch.Tensor, over: torch.Tensor) -> torch.Tensor:
        """Fuse with enfuse; see :func:`enfuse_fusion`."""
        return enfuse_fusion(
            under, over, binary=self.binary, extra_args=self.extra_args, timeout=self.timeout
        )

    def extra_repr(self) -> str:
        """Show the settings in ``print(module)``."""
        return f"binary={self.binary!r}, extra_args={self.extra_args!r}"


def _check_extra_args(extra_args: Sequence[str]) -> tuple[str, ...]:
    # A lone string is a sequence too, and would be split into one argument per character.
    if isinstance(extra_args, (str, bytes)):
        raise TypeError(f"extra_args must be a sequence of strings, e.g. ({extra_args!r},)")
    return tuple(str(arg) for arg in extra_args)


def _run_enfuse(
    exe: str, args: tuple[str, ...], frames: Sequence[np.ndarray], folder: Path, timeout: float
) -> np.ndarray:
    paths = [folder / f"frame{i:02d}.tif" for i in range(len(frames))]
    out = folder / "fused.tif"
    out.unlink(missing_ok=True)  # a stale result from the previous image must not be read
    for path, pixels in zip(paths, frames):
        io.write_image(path, pixels, 16)
    # "--" ends the options, so a file name can never be taken for one.
    command = [exe, "--depth=16", *args, f"--output={out}", "--", *map(str, paths)]
    try:
        run = subprocess.run(
            command, capture_output=True, text=True, errors="replace", timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise EnfuseError(f"enfuse did not finish within {timeout:g} s") from None
    except OSError as exc:  # e.g. a file that is executable but not a program
        raise EnfuseError(f"could not run {exe}: {exc.strerror or exc}") from None
    if run.returncode != 0:
        raise EnfuseError(f"enfuse failed (exit status {run.returncode}): {_tail(run.stderr)}")
    return _read_output(out, run.stderr)


def _read_output(path: Path, stderr: str) -> np.ndarray:
    if not path.is_file():
        raise EnfuseError(f"enfuse reported success but wrote no image: {_tail(stderr)}")
    # Not io.read_image: enfuse adds an alpha channel (the blend mask), which it rejects.
    image = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise EnfuseError(f"enfuse wrote an image that is not RGB: {_tail(stderr)}")
    # Typed as any ndarray: cv2's stubs give integer | floating, which np.iinfo refuses.
    rgb: np.ndarray = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_BGR2RGB)
    if rgb.dtype.kind == "f":  # extra_args may ask for --depth=r32 or r64
        return rgb.astype(np.float32)
    return rgb.astype(np.float32) / np.float32(np.iinfo(rgb.dtype).max)


def _tail(stderr: str) -> str:
    text = stderr.strip()
    if not text:
        return "(no output on stderr)"
    return text if len(text) <= _STDERR_TAIL else "..." + text[-_STDERR_TAIL:]
