"""Files before pixels: header checks, output checks and atomic writes (standard library + Pillow).

Everything here runs before any image is decoded or any model is loaded, and imports
neither OpenCV nor torch, so a bad file or a bad output path is reported within the start-up
time of a command. :mod:`textmef.io` re-exports these names.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import PIL.Image

from textmef.errors import InputError
from textmef.limits import DEFAULT_MAX_PIXELS, MIN_SIDE

__all__ = [
    "SUPPORTED_SUFFIXES",
    "ImageHeader",
    "atomic_path",
    "check_image_file",
    "check_output_file",
    "magic_format",
    "remove_stale_temp_files",
    "same_file",
]

SUPPORTED_SUFFIXES = frozenset({".png", ".tif", ".tiff", ".jpg", ".jpeg"})
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8", "JPEG"), (b"II*\x00", "TIFF"),
          (b"MM\x00*", "TIFF"))  # fmt: skip


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, read without decoding any pixel.

    Attributes:
        path: the file.
        width: pixels per row.
        height: rows.
        format: ``"PNG"``, ``"JPEG"`` or ``"TIFF"``.
    """

    path: Path
    width: int
    height: int
    format: str

    @property
    def pixels(self) -> int:
        """width x height."""
        return self.width * self.height

    @property
    def size_text(self) -> str:
        """``WxH``, as messages show sizes."""
        return f"{self.width}x{self.height}"


def check_image_file(
    path: str | os.PathLike[str], max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> ImageHeader:
    """Check an input image from its header alone, before anything decodes it.

    The one check every entry point runs first (``textmef fuse``, the API, ``make-pairs``,
    ``bench`` and the web app): the file exists, has a supported suffix and type, and its
    dimensions are at least :data:`MIN_SIDE` and at most ``max_pixels`` pixels in all. It
    reads a few hundred bytes, so a 30000x30000 "pixel bomb" is refused in milliseconds.

    Args:
        path: the image file.
        max_pixels: the most pixels (width x height) accepted; None for no limit.

    Raises:
        InputError: missing, a directory, empty, unsupported, not an image, too small, or
            over the pixel limit (one line naming the file).
    """
    path = Path(path)
    _check_readable_file(path)
    with open(path, "rb") as stream:
        head = stream.read(32)
    if not head:
        raise InputError(path, "is empty (0 bytes)")
    fmt = magic_format(head)
    if fmt is None:
        raise InputError(path, "is not a PNG, TIFF or JPEG image")
    if fmt == "PNG":
        _check_png_chunks(path)
        width, height, layout = _png_header(head)
    else:
        width, height, layout = _header_size(path, fmt, max_pixels)
    header = ImageHeader(path=path, width=width, height=height, format=fmt)
    if max_pixels is not None and header.pixels > max_pixels:
        raise InputError(
            path,
            f"is {header.size_text} pixels ({header.pixels / 1e6:.1f} MP), over the limit of "
            f"{max_pixels / 1e6:g} MP per image (--max-pixels); downsize it or raise the limit",
        )
    if min(width, height) < MIN_SIDE:
        raise InputError(
            path,
            f"is only {header.size_text} pixels; each side must be at least {MIN_SIDE} pixels",
        )
    if layout == "gray":
        raise InputError(path, GRAYSCALE_PROBLEM)
    if layout == "alpha":
        raise InputError(path, ALPHA_PROBLEM)
    return header


GRAYSCALE_PROBLEM = "is a grayscale image; textmef needs RGB colour images"
ALPHA_PROBLEM = (
    "has an alpha channel (transparency); textmef needs plain RGB, "
    "so flatten the image onto a background first"
)
# PNG colour types (IHDR byte 25) and Pillow modes that are not plain colour.
_PNG_LAYOUT = {0: "gray", 4: "gray", 6: "alpha"}
_MODE_LAYOUT = {"1": "gray", "L": "gray", "I": "gray", "I;16": "gray", "I;16B": "gray",
                "F": "gray", "LA": "gray", "RGBA": "alpha", "PA": "alpha"}  # fmt: skip


def _check_png_chunks(path: Path) -> None:
    """Refuse a PNG whose chunks run past the end of the file, before anything decodes it.

    OpenCV allocates a chunk's declared length up front: a 10 kB PNG claiming a 4 GB IDAT
    chunk would cost 4 GB of memory on each decode, and a truncated file is caught here
    too. Only the 8-byte chunk headers up to IEND are read (seeks over the data).
    """
    end = path.stat().st_size
    with open(path, "rb") as stream:
        pos = 8
        while pos + 8 <= end:
            stream.seek(pos)
            head = stream.read(8)
            length, kind = int.from_bytes(head[:4], "big"), head[4:8]
            pos += 12 + length  # length, type, data, CRC
            if pos > end:
                raise InputError(path, "is a damaged or truncated PNG file")
            if kind == b"IEND":
                return
    raise InputError(path, "is a damaged or truncated PNG file")  # no IEND: cut short


def _png_header(head: bytes) -> tuple[int, int, str | None]:
    # The signature is followed by the IHDR chunk: length, type, width, height, bit depth,
    # colour type.
    if len(head) < 26 or head[12:16] != b"IHDR":
        return 0, 0, None  # reported as too small below; the decoder would fail on it anyway
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return width, height, _PNG_LAYOUT.get(head[25])


def _tiff_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the first directory of a classic TIFF, or None if unreadable."""
    try:
        with open(path, "rb") as stream:
            order: Literal["little", "big"] = "little" if stream.read(2) == b"II" else "big"
            stream.seek(4)
            stream.seek(int.from_bytes(stream.read(4), order))
            count = int.from_bytes(stream.read(2), order)
            found: dict[int, int] = {}
            for _ in range(min(count, 4096)):
                entry = stream.read(12)
                if len(entry) < 12:
                    return None
                tag, kind = int.from_bytes(entry[:2], order), int.from_bytes(entry[2:4], order)
                if tag in (256, 257) and kind in (3, 4):  # ImageWidth, ImageLength
                    width = 2 if kind == 3 else 4
                    found[tag] = int.from_bytes(entry[8 : 8 + width], order)
    except OSError:
        return None
    return (found[256], found[257]) if len(found) == 2 else None


def magic_format(head: bytes) -> str | None:
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


def _header_size(path: Path, fmt: str, max_pixels: int | None) -> tuple[int, int, str | None]:
    """(width, height, layout) from the header; Pillow reads headers without decoding."""
    try:
        with _quiet_pillow():  # DecompressionBombWarning among others: our limit applies
            with PIL.Image.open(path) as im:
                return int(im.width), int(im.height), _MODE_LAYOUT.get(im.mode)
    except PIL.Image.DecompressionBombError:
        # Pillow's own cap (2 x MAX_IMAGE_PIXELS) is below the caller's: over it either way
        # unless the caller allows more, then the decoder (OpenCV) has the last word.
        cap = 2 * (PIL.Image.MAX_IMAGE_PIXELS or 0)
        if max_pixels is not None and max_pixels <= cap:
            raise InputError(
                path,
                f"has over {cap / 1e6:.0f} MP, over the limit of {max_pixels / 1e6:g} MP per "
                "image (--max-pixels); downsize it or raise the limit",
            ) from None
        raise InputError(
            path, f"has over {cap / 1e6:.0f} MP, more than textmef can open safely"
        ) from None
    except Exception:  # Pillow signals broken headers with many types
        size = _tiff_size(path) if fmt == "TIFF" else None
        if size is None:
            raise InputError(path, f"is a damaged {fmt} file (its header cannot be read)") from None
        return (*size, None)  # a TIFF Pillow does not decode (e.g. floating point); OpenCV may


_PIL_LOG = logging.getLogger("PIL")
_PIL_QUIET_LOCK = threading.Lock()
_pil_quiet_users = 0
_pil_saved_level = logging.NOTSET


@contextlib.contextmanager
def _quiet_pillow() -> Iterator[None]:
    """Keep Pillow's own complaints about a bad file (warnings, log records) quiet.

    The InputError's one line says what is wrong; Pillow would add a ``logging`` record
    (e.g. "More samples per pixel than can be decoded: 8745" for a damaged TIFF) that an
    application's log handler, or logging's last resort, prints on stderr. The "PIL"
    logger is raised above CRITICAL while any thread is inside; a count of the threads
    inside restores its level once, when the last one leaves.
    """
    global _pil_quiet_users, _pil_saved_level
    with _PIL_QUIET_LOCK:
        if _pil_quiet_users == 0:
            _pil_saved_level = _PIL_LOG.level
            _PIL_LOG.setLevel(logging.CRITICAL + 1)
        _pil_quiet_users += 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        with _PIL_QUIET_LOCK:
            _pil_quiet_users -= 1
            if _pil_quiet_users == 0:
                _PIL_LOG.setLevel(_pil_saved_level)


def _check_readable_file(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "is a directory, not an image file")
    _check_suffix(path)
    if not os.access(path, os.R_OK):
        raise InputError(path, "cannot be read (permission denied)")


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        wanted = ", ".join(sorted(SUPPORTED_SUFFIXES))
        shown = path.suffix or "no suffix"
        raise InputError(path, f"unsupported file type ({shown}); use one of {wanted}")


def check_output_file(
    path: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]] = (),
    *,
    folder_made_later: bool = False,
) -> Path:
    """Check, before any work, that an image can be written to ``path``.

    Args:
        path: the output file; its suffix picks the format.
        inputs: files the output must not replace (compared after resolving links).
        folder_made_later: the caller creates the folder after its checks (and has checked
            that it can); only the suffix and the inputs are checked then.

    Raises:
        InputError: unsupported suffix, missing or read-only folder, a directory in the way,
            or ``path`` is one of ``inputs``.
    """
    path = Path(path)
    if folder_made_later and not path.parent.exists():
        _check_output_suffix(path)
    else:
        _check_output_path(path)
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise InputError(path, f"cannot be written: the folder {path.parent} is read-only")
    for source in inputs:
        if same_file(path, source):
            raise InputError(path, "is also an input; writing it would destroy that input")
    return path


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name the same file (links and ``..`` resolved; hard links too)."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _check_output_suffix(path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        wanted = ", ".join(sorted(SUPPORTED_SUFFIXES))
        raise InputError(path, f"cannot write {suffix or 'a file without suffix'}; use {wanted}")


def _check_output_path(path: Path) -> None:
    _check_output_suffix(path)
    parent = path.parent
    if not parent.is_dir():
        raise InputError(path, f"output directory {parent} does not exist")
    if path.is_dir():
        raise InputError(path, "is a directory; give a file name to write")


# `.NAME.<pid>-<32 hex>.tmp`: the pid tells a killed writer's leftovers from a live one's.
_TEMP_NAME = re.compile(r"^\..+\.(\d+)-[0-9a-f]{32}\.tmp$")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    The temporary file shares the target's directory so os.replace is a same-filesystem
    rename, and its name starts with a dot so a half-written file is not mistaken for
    output. On any error it is removed and ``path`` is left as it was. A process killed
    mid-write (SIGKILL) cannot remove it; :func:`remove_stale_temp_files` does, later.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: leave its files alone
    return True


def remove_stale_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files that killed writers left in ``folder`` (not recursive).

    Only files named as :func:`atomic_path` names them, whose writing process no longer
    runs, are removed; a live writer's temporary file is never touched.

    Returns:
        The files removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TEMP_NAME.match(entry.name)
        if match and entry.is_file() and not _process_alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed
