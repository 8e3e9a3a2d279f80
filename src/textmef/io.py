"""Image I/O: read and write the RGB exposures that textmef fuses.

In memory an image is a float32 numpy array of shape (H, W, 3), RGB, values in [0, 1].
8-bit files map through /255 and 16-bit files through /65535. Every problem with a
user's file is reported as an :class:`~textmef.errors.InputError` naming the file.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import PIL.Image
import torch

from textmef.errors import InputError
from textmef.files import (
    ALPHA_PROBLEM,
    GRAYSCALE_PROBLEM,
    SUPPORTED_SUFFIXES,
    ImageHeader,
    _check_output_path,
    _check_readable_file,
    _quiet_pillow,
    atomic_path,
    check_image_file,
    check_output_file,
    magic_format,
    remove_stale_temp_files,
    same_file,
)
from textmef.limits import DEFAULT_MAX_PIXELS, MIN_SIDE

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MIN_SIDE",
    "SUPPORTED_SUFFIXES",
    "Image",
    "ImageHeader",
    "atomic_path",
    "check_image_file",
    "check_output_file",
    "check_pair",
    "from_tensor",
    "quiet_decoders",
    "read_image",
    "remove_stale_temp_files",
    "same_file",
    "to_tensor",
    "write_image",
]

_MAX_VALUE = {8: 255, 16: 65535}
_DTYPE = {8: np.uint8, 16: np.uint16}
_JPEG_QUALITY = 95

# IMREAD_UNCHANGED is the only mode that shows an alpha channel, but OpenCV never applies
# EXIF orientation under it; ANYDEPTH|ANYCOLOR keeps 16 bits and does apply orientation.
_INSPECT_FLAGS = cv2.IMREAD_UNCHANGED
_PIXEL_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


@dataclass(frozen=True, eq=False)
class Image:
    """A decoded RGB image.

    ``eq=False`` keeps identity comparison: field-wise ``==`` on numpy arrays is ambiguous.

    Attributes:
        pixels: float32 array of shape (H, W, 3), RGB, values in [0, 1].
        bit_depth: bits per channel of the source file, 8 or 16.
        path: the file it was read from, or None for an image made in memory.
    """

    pixels: np.ndarray
    bit_depth: int
    path: Path | None = None


def read_image(path: str | os.PathLike[str], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image:
    """Read an 8- or 16-bit RGB PNG, TIFF or JPEG file.

    The header is checked first (:func:`check_image_file`), so nothing over ``max_pixels``
    is ever decoded. The EXIF orientation tag is honoured, so a camera JPEG comes back
    upright. The decoders' own warnings (libpng, libtiff, OpenCV) are kept off stderr: the
    one line of the :class:`InputError` says what is wrong.

    Args:
        path: file to read; non-ASCII names are fine.
        max_pixels: the most pixels accepted (None: no limit).

    Returns:
        The image, with float32 RGB pixels in [0, 1] and the file's bit depth.

    Raises:
        InputError: the file is missing, a directory, empty, of an unsupported type,
            damaged or truncated, grayscale, has an alpha channel, is smaller than
            MIN_SIDE pixels on a side, over ``max_pixels``, or has a bit depth other than
            8 or 16.
    """
    path = Path(path)
    check_image_file(path, max_pixels)
    data = _read_bytes(path)
    _check_jpeg_scans(path, data)
    raw = _decode(path, data, _INSPECT_FLAGS)
    bit_depth = _bit_depth(path, raw.dtype)
    _check_layout(path, raw)
    del raw  # the pixels come from the orientation-aware decode below
    _check_complete(path, data)
    bgr = _decode(path, data, _PIXEL_FLAGS)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    pixels = rgb.astype(np.float32)
    pixels /= _MAX_VALUE[bit_depth]  # in place: a 24-megapixel float copy is ~300 MB
    return Image(pixels=pixels, bit_depth=bit_depth, path=path)


def write_image(path: str | os.PathLike[str], pixels: np.ndarray, bit_depth: int) -> Path:
    """Write RGB pixels to a PNG, TIFF or JPEG file, atomically.

    Values are clamped to [0, 1] (NaN becomes 0) and rounded to the nearest integer
    level. The file appears complete or not at all: the bytes go to a temporary file in
    the same directory, which then replaces the target. JPEG holds 8 bits only, so a
    JPEG asked for at 16 bits is written at 8 bits (quality 95).

    Args:
        path: output file; its suffix picks the format. Its directory must exist.
        pixels: float array of shape (H, W, 3), RGB.
        bit_depth: 8 or 16 bits per channel.

    Returns:
        The path written.

    Raises:
        InputError: unsupported suffix, bit depth other than 8 or 16, missing parent
            directory, a directory in the way, or the file system refusing the write.
        ValueError: pixels is not an (H, W, 3) array.
    """
    path = Path(path)
    _check_output_path(path)
    if bit_depth not in _MAX_VALUE:
        raise InputError(path, f"bit depth must be 8 or 16, not {bit_depth}")
    _check_rgb_array(pixels)
    _write_atomically(path, _encode(path, pixels, bit_depth))
    return path


def check_pair(under: Image, over: Image) -> None:
    """Check that two exposures can be fused: they must have the same size.

    Differing bit depths are allowed; the fused output takes the under image's depth.

    Args:
        under: the under-exposed image.
        over: the over-exposed image.

    Raises:
        InputError: the sizes differ; the message names both files and is reported
            against the over image's path.
    """
    if under.pixels.shape[:2] == over.pixels.shape[:2]:
        return
    under_name = _display_name(under, "the under-exposed image")
    over_name = _display_name(over, "the over-exposed image")
    raise InputError(
        over.path,
        f"{under_name} is {_size(under)} but {over_name} is {_size(over)}; "
        "the exposures must be the same size",
    )


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """Turn (H, W, 3) pixels into a contiguous (1, 3, H, W) float32 tensor (a copy).

    Args:
        pixels: array of shape (H, W, 3).

    Returns:
        The tensor, batch of one, channels first.

    Raises:
        ValueError: pixels is not an (H, W, 3) array.
    """
    _check_rgb_array(pixels)
    chw = np.array(pixels.transpose(2, 0, 1), dtype=np.float32, order="C")
    return torch.from_numpy(chw).unsqueeze(0)


def from_tensor(tensor: torch.Tensor) -> np.ndarray:
    """Turn a (1, 3, H, W) or (3, H, W) tensor into (H, W, 3) float32 pixels (a copy).

    Values are not clamped, so callers can inspect out-of-range model output.

    Args:
        tensor: image tensor on any device, of any float dtype.

    Returns:
        A new C-contiguous float32 array of shape (H, W, 3).

    Raises:
        ValueError: the tensor does not hold exactly one 3-channel image.
    """
    chw = tensor.squeeze(0) if tensor.dim() == 4 else tensor
    if chw.dim() != 3 or chw.shape[0] != 3:
        raise ValueError(f"expected a (1, 3, H, W) or (3, H, W) tensor, got {tuple(tensor.shape)}")
    # float32 before .numpy(): numpy has no bfloat16, and this also leaves the GPU.
    hwc = chw.detach().to(device="cpu", dtype=torch.float32).permute(1, 2, 0)
    return np.array(hwc.numpy(), dtype=np.float32, order="C")


def _read_bytes(path: Path) -> np.ndarray:
    _check_readable_file(path)
    try:
        # np.fromfile + imdecode, because cv2.imread cannot open non-ASCII paths on Windows.
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or exc})") from None
    if data.size == 0:
        raise InputError(path, "is empty (0 bytes)")
    return data


# A progressive JPEG has ~10 scans; thousands of tiny ones make a small file take minutes.
_MAX_JPEG_SCANS = 1000


def _check_jpeg_scans(path: Path, data: np.ndarray) -> None:
    """Refuse a JPEG with an absurd number of scans (start-of-scan markers) before decoding.

    Entropy-coded data escapes every 0xFF byte, so ``FF DA`` only ever appears as a marker.
    """
    if magic_format(data[:8].tobytes()) != "JPEG":
        return
    scans = data.tobytes().count(b"\xff\xda")
    if scans > _MAX_JPEG_SCANS:
        raise InputError(
            path,
            f"is a JPEG of {scans} scans (a photo has a few dozen at most); refused, since "
            "decoding it would take minutes",
        )


def _decode(path: Path, data: np.ndarray, flags: int) -> np.ndarray:
    try:
        with quiet_decoders():
            image = cv2.imdecode(data, flags)
    except cv2.error:
        image = None
    if image is None or image.size == 0:
        raise InputError(path, _undecodable_problem(data))
    return image


def _undecodable_problem(data: np.ndarray) -> str:
    fmt = magic_format(data[:16].tobytes())
    if fmt is None:
        return "is not a PNG, TIFF or JPEG image, or is too damaged to read"
    return f"is a damaged or truncated {fmt} file"


_STDERR_LOCK = threading.Lock()


def _capture_file() -> BinaryIO:
    """A scratch file for captured stderr: in memory where the OS allows (no path on disk,
    so a server's "write only in the temp folder" rule holds), else a temporary file."""
    if hasattr(os, "memfd_create"):
        with contextlib.suppress(OSError):
            return os.fdopen(os.memfd_create("textmef-stderr"), "w+b")
    import tempfile

    return tempfile.TemporaryFile()


# What the decoders print on their own; anything else that reaches fd 2 meanwhile is passed on.
_DECODER_NOISE = re.compile(
    r"^(libpng |\[ ?(WARN|ERROR|INFO)[: ]|TIFF|JPEG|Corrupt JPEG|Premature end"
    # libjpeg's other warnings (JWRN_* in jerror.h), one line per decode of a damaged file
    r"|Warning: unknown JFIF revision|Inconsistent progression sequence"
    r"|Invalid SOS parameters|Unknown Adobe color transform|Invalid restart interval"
    r"|Application transferred too many scanlines)"
)


@contextlib.contextmanager
def quiet_decoders() -> Iterator[None]:
    """Keep libpng's, libtiff's and OpenCV's own messages off stderr while decoding.

    They write straight to file descriptor 2 (C ``fprintf``), past Python's ``sys.stderr``,
    so fd 2 is pointed at a temporary file meanwhile; lines that are not decoder noise
    (another thread's output) are written back afterwards.
    """
    with _STDERR_LOCK:
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 (some embedded interpreters): nothing to silence
            saved = -1
        capture = _capture_file()
        try:
            if saved >= 0:
                with contextlib.suppress(Exception):
                    sys.stderr.flush()
                os.dup2(capture.fileno(), 2)
            yield
        finally:
            if saved >= 0:
                os.dup2(saved, 2)
                os.close(saved)
            cv2.utils.logging.setLogLevel(level)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            capture.close()
    passed = [line for line in text.splitlines() if line and not _DECODER_NOISE.match(line)]
    if passed:
        print("\n".join(passed), file=sys.stderr)


def _bit_depth(path: Path, dtype: np.dtype) -> int:
    if dtype == np.uint8:
        return 8
    if dtype == np.uint16:
        return 16
    kind = "floating-point" if dtype.kind == "f" else "integer"
    raise InputError(
        path,
        f"has an unsupported bit depth ({dtype.itemsize * 8}-bit {kind}); "
        "textmef reads 8- and 16-bit images",
    )


def _check_layout(path: Path, raw: np.ndarray) -> None:
    channels = 1 if raw.ndim == 2 else raw.shape[2]
    if channels < 3:
        raise InputError(path, GRAYSCALE_PROBLEM)
    if channels == 4:
        raise InputError(path, ALPHA_PROBLEM)
    if channels != 3:
        raise InputError(path, f"has {channels} channels; textmef needs RGB (3 channels)")
    height, width = raw.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise InputError(
            path,
            f"is only {width}x{height} pixels; each side must be at least {MIN_SIDE} pixels",
        )


def _check_complete(path: Path, data: np.ndarray) -> None:
    """Reject files whose image data stops early.

    Some OpenCV builds hand back a partly grey image for a truncated JPEG instead of
    failing, so the data is also run through Pillow. TIFF is left to OpenCV's libtiff,
    which fails on short strips, because Pillow cannot open every TIFF variant it can.
    """
    with _quiet_pillow():  # Pillow's own warnings and log records about a damaged file
        try:
            im = PIL.Image.open(io.BytesIO(data.tobytes()))
        except Exception:  # not Pillow's to judge: OpenCV decoded it already
            return
        try:
            with im:
                if im.format == "PNG":
                    im.verify()  # walks every chunk and its CRC without inflating pixels
                elif im.format == "JPEG":
                    # Decoding at 1/8 scale still reads every entropy-coded byte, at a
                    # fraction of the cost of a full decode.
                    im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
                    im.load()
        except Exception:  # any failure while reading the data means it is incomplete
            raise InputError(path, f"is a damaged or truncated {im.format} file") from None


def _check_rgb_array(pixels: np.ndarray) -> None:
    shape = getattr(pixels, "shape", None)
    if shape is None or len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {shape}")


def _encode(path: Path, pixels: np.ndarray, bit_depth: int) -> bytes:
    suffix = path.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        bit_depth = 8  # baseline JPEG has no 16-bit mode
    levels = _MAX_VALUE[bit_depth]
    clean = np.nan_to_num(np.asarray(pixels, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    quantised = np.rint(np.clip(clean, 0.0, 1.0) * levels).astype(_DTYPE[bit_depth])
    bgr = cv2.cvtColor(quantised, cv2.COLOR_RGB2BGR)
    # JPEG-only flag: OpenCV 5 warns about it on every PNG/TIFF write otherwise.
    params = [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY] if suffix in (".jpg", ".jpeg") else []
    try:
        ok, buffer = cv2.imencode(suffix, bgr, params)
    except cv2.error as exc:
        raise InputError(path, f"could not be encoded ({exc.err})") from None
    if not ok:
        raise InputError(path, f"could not be encoded as {suffix}")
    return buffer.tobytes()


def _write_atomically(path: Path, payload: bytes) -> None:
    # os.open with mode 0o666 lets the umask set permissions exactly as for a plain open();
    # mkstemp would leave the result readable by its owner only.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        with atomic_path(path) as tmp:
            fd = os.open(tmp, flags, 0o666)
            with os.fdopen(fd, "wb") as stream:
                stream.write(payload)
                stream.flush()
                os.fsync(stream.fileno())
    except OSError as exc:
        raise InputError(path, f"cannot be written ({exc.strerror or exc})") from None


def _display_name(image: Image, fallback: str) -> str:
    return str(image.path) if image.path is not None else fallback


def _size(image: Image) -> str:
    height, width = image.pixels.shape[:2]
    return f"{width}x{height}"
