"""Specs for textmef.io: reading, writing and converting images."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import pytest
import torch

import textmef.io as tio
from textmef.errors import InputError
from textmef.io import (
    MIN_SIDE,
    SUPPORTED_SUFFIXES,
    Image,
    check_pair,
    from_tensor,
    read_image,
    to_tensor,
    write_image,
)

RNG_SEED = 1234


def _random_levels(bit_depth: int, height: int = 12, width: int = 10) -> np.ndarray:
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    rng = np.random.default_rng(RNG_SEED)
    return rng.integers(0, np.iinfo(dtype).max, (height, width, 3), dtype=dtype, endpoint=True)


def _save_with_cv2(path: Path, bgr: np.ndarray) -> Path:
    """Write a file with OpenCV directly, bypassing the code under test."""
    ok, buffer = cv2.imencode(path.suffix, bgr)
    assert ok
    buffer.tofile(path)
    return path


def _smooth_rgb(height: int = 32, width: int = 48) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([x / width, y / height, 0.5 + 0.0 * x], axis=-1)


def _expect_input_error(path: Path, *keywords: str) -> InputError:
    with pytest.raises(InputError) as info:
        read_image(path)
    message = str(info.value)
    assert path.name in message
    assert "\n" not in message
    for keyword in keywords:
        assert keyword in message.lower()
    return info.value


def _dir_listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- reading and round trips -------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff"])
@pytest.mark.parametrize("bit_depth", [8, 16])
def test_lossless_formats_round_trip_exactly(tmp_path, suffix, bit_depth):
    levels = _random_levels(bit_depth)
    pixels = levels.astype(np.float32) / np.iinfo(levels.dtype).max

    written = write_image(tmp_path / f"out{suffix}", pixels, bit_depth)
    image = read_image(written)

    assert image.bit_depth == bit_depth
    assert image.path == written
    assert image.pixels.dtype == np.float32
    assert image.pixels.shape == levels.shape
    np.testing.assert_array_equal(image.pixels, pixels)


def test_read_16bit_png_keeps_full_precision(tmp_path):
    # 1, 257*k+1 ... are not multiples of 257, so they would not survive a trip through 8 bits.
    levels = np.array([1, 258, 32769, 65534], dtype=np.uint16)
    bgr = np.broadcast_to(levels, (MIN_SIDE, 4)).repeat(3).reshape(MIN_SIDE, 4, 3)
    path = _save_with_cv2(tmp_path / "deep.png", np.ascontiguousarray(bgr))

    image = read_image(path)

    assert image.bit_depth == 16
    np.testing.assert_array_equal(np.rint(image.pixels * 65535).astype(np.uint16), bgr)


def test_every_16bit_level_survives_write_and_read(tmp_path):
    ramp = np.arange(65536, dtype=np.float32).reshape(256, 256) / 65535
    pixels = np.stack([ramp, ramp[::-1], ramp.T], axis=-1)

    image = read_image(write_image(tmp_path / "ramp.png", pixels, 16))

    np.testing.assert_array_equal(image.pixels, pixels)


def test_read_returns_rgb_channel_order(tmp_path):
    bgr = np.zeros((MIN_SIDE, MIN_SIDE, 3), np.uint8)
    bgr[..., 2] = 255  # OpenCV's last channel is red
    path = _save_with_cv2(tmp_path / "red.png", bgr)

    pixels = read_image(path).pixels

    np.testing.assert_array_equal(pixels[0, 0], [1.0, 0.0, 0.0])


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".JPG"])
def test_jpeg_round_trip_is_close(tmp_path, suffix):
    pixels = _smooth_rgb()

    image = read_image(write_image(tmp_path / f"out{suffix}", pixels, 8))

    assert image.bit_depth == 8
    assert np.abs(image.pixels - pixels).mean() < 0.01


def test_jpeg_asked_for_at_16_bits_is_written_at_8_bits(tmp_path):
    image = read_image(write_image(tmp_path / "out.jpg", _smooth_rgb(), 16))

    assert image.bit_depth == 8


def test_read_accepts_non_ascii_file_names(tmp_path):
    levels = _random_levels(8)
    path = _save_with_cv2(tmp_path / "Belichtung_überbelichtet_露出.png", levels)

    image = read_image(path)

    np.testing.assert_array_equal(image.pixels, levels[..., ::-1] / np.float32(255))


def _quadrants(height: int = 16, width: int = 32) -> np.ndarray:
    """Four flat, 8x8-block-aligned colours, so JPEG reproduces them almost exactly."""
    rgb = np.zeros((height, width, 3), np.uint8)
    half_h, half_w = height // 2, width // 2
    rgb[:half_h, :half_w] = (255, 0, 0)
    rgb[:half_h, half_w:] = (0, 255, 0)
    rgb[half_h:, :half_w] = (0, 0, 255)
    rgb[half_h:, half_w:] = (255, 255, 255)
    return rgb


@pytest.mark.parametrize(
    ("orientation", "quarter_turns"),
    [(6, -1), (8, 1)],  # 6: display rotated 90 degrees clockwise; 8: counter-clockwise
)
def test_read_honours_exif_orientation(tmp_path, orientation, quarter_turns):
    stored = _quadrants()
    path = tmp_path / f"camera_{orientation}.jpg"
    exif = PIL.Image.Exif()
    exif[0x0112] = orientation
    PIL.Image.fromarray(stored).save(path, quality=100, subsampling=0, exif=exif)

    pixels = read_image(path).pixels

    upright = np.rot90(stored, k=quarter_turns).astype(np.float32) / 255
    assert pixels.shape == upright.shape == (32, 16, 3)
    np.testing.assert_allclose(pixels, upright, atol=0.05)


# --- bad input files ---------------------------------------------------------------------


def test_missing_file_is_reported(tmp_path):
    _expect_input_error(tmp_path / "nowhere.png", "no such file")


def test_directory_is_reported(tmp_path):
    folder = tmp_path / "folder.png"
    folder.mkdir()
    _expect_input_error(folder, "directory")


def test_empty_file_is_reported(tmp_path):
    path = tmp_path / "empty.png"
    path.touch()
    _expect_input_error(path, "empty")


def test_text_file_with_image_suffix_is_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels\n" * 20)
    _expect_input_error(path, "not a png")


@pytest.mark.parametrize(
    ("suffix", "fraction"),
    [(".png", 0.5), (".png", 0.9), (".jpg", 0.5), (".jpg", 0.98), (".tif", 0.5)],
)
def test_truncated_file_is_reported(tmp_path, suffix, fraction):
    whole = tmp_path / f"whole{suffix}"
    # Pillow writes the TIFF directory first, so a cut TIFF still looks like a TIFF.
    PIL.Image.fromarray(_random_levels(8, 64, 64)).save(whole)
    data = whole.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: int(len(data) * fraction)])

    _expect_input_error(cut, "truncated")


def test_truncated_jpeg_is_reported_even_if_opencv_returns_partial_pixels(tmp_path, monkeypatch):
    # OpenCV 4.x decodes a cut JPEG into a half-grey image and only logs a warning.
    whole = tmp_path / "whole.jpg"
    PIL.Image.fromarray(_random_levels(8, 64, 64)).save(whole)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[:-400])
    grey = np.full((64, 64, 3), 128, np.uint8)
    monkeypatch.setattr(tio.cv2, "imdecode", lambda data, flags: grey.copy())

    _expect_input_error(cut, "truncated")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_grayscale_image_is_reported(tmp_path, dtype):
    path = _save_with_cv2(tmp_path / "gray.png", np.zeros((8, 8), dtype))
    _expect_input_error(path, "grayscale", "rgb")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_alpha_channel_is_reported_with_a_fix(tmp_path, dtype):
    path = _save_with_cv2(tmp_path / "transparent.png", np.zeros((8, 8, 4), dtype))
    _expect_input_error(path, "alpha", "flatten")


@pytest.mark.parametrize(("height", "width"), [(1, 1), (MIN_SIDE - 1, 20), (20, MIN_SIDE - 1)])
def test_too_small_image_is_reported(tmp_path, height, width):
    path = _save_with_cv2(tmp_path / "tiny.png", np.zeros((height, width, 3), np.uint8))
    _expect_input_error(path, f"at least {MIN_SIDE}")


def test_image_of_exactly_min_side_is_accepted(tmp_path):
    path = _save_with_cv2(tmp_path / "small.png", np.zeros((MIN_SIDE, MIN_SIDE, 3), np.uint8))
    assert read_image(path).pixels.shape == (MIN_SIDE, MIN_SIDE, 3)


def test_float_tiff_is_reported_as_unsupported_bit_depth(tmp_path):
    path = _save_with_cv2(tmp_path / "hdr.tif", np.zeros((8, 8, 3), np.float32))
    _expect_input_error(path, "bit depth", "32-bit")


@pytest.mark.parametrize("name", ["frame.gif", "frame.bmp", "frame"])
def test_unsupported_suffix_is_reported(tmp_path, name):
    path = tmp_path / name
    PIL.Image.fromarray(_random_levels(8)).save(path, format="GIF")
    _expect_input_error(path, "unsupported file type")


def test_supported_suffixes_are_lowercase_and_complete():
    assert {".png", ".tif", ".tiff", ".jpg", ".jpeg"} == SUPPORTED_SUFFIXES


# --- writing -----------------------------------------------------------------------------


def test_write_rounds_to_the_nearest_level(tmp_path):
    pixels = np.full((MIN_SIDE, MIN_SIDE, 3), 10.6 / 255, np.float32)
    path = write_image(tmp_path / "rounded.png", pixels, 8)

    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[0, 0, 0] == 11


def test_write_clamps_out_of_range_and_nan_values(tmp_path):
    pixels = np.zeros((MIN_SIDE, MIN_SIDE, 3), np.float32)
    pixels[0, 0] = (-0.5, 1.7, np.nan)
    image = read_image(write_image(tmp_path / "clamped.png", pixels, 16))

    np.testing.assert_array_equal(image.pixels[0, 0], [0.0, 1.0, 0.0])


def test_write_returns_the_path_and_replaces_an_existing_file(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")

    written = write_image(str(target), _smooth_rgb(), 8)

    assert written == target
    assert read_image(target).pixels.shape == (32, 48, 3)
    assert _dir_listing(tmp_path) == ["out.png"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_written_file_gets_ordinary_permissions(tmp_path):
    old_mask = os.umask(0o022)
    try:
        path = write_image(tmp_path / "out.png", _smooth_rgb(), 8)
    finally:
        os.umask(old_mask)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_write_leaves_neither_output_nor_temp_file(tmp_path, monkeypatch, error):
    def failing_replace(src, dst):
        raise error

    monkeypatch.setattr(tio.os, "replace", failing_replace)

    with pytest.raises(InputError if isinstance(error, OSError) else KeyboardInterrupt):
        write_image(tmp_path / "out.png", _smooth_rgb(), 8)
    assert _dir_listing(tmp_path) == []


def test_failed_write_keeps_the_previous_file_intact(tmp_path, monkeypatch):
    target = tmp_path / "out.tif"
    target.write_bytes(b"previous result")

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(tio.os, "fsync", failing_fsync)

    with pytest.raises(InputError, match="Input/output error"):
        write_image(target, _smooth_rgb(), 16)
    assert target.read_bytes() == b"previous result"
    assert _dir_listing(tmp_path) == ["out.tif"]


def test_encoder_failure_is_reported_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(tio.cv2, "imencode", lambda *args: (False, None))

    with pytest.raises(InputError, match="out.png"):
        write_image(tmp_path / "out.png", _smooth_rgb(), 8)
    assert _dir_listing(tmp_path) == []


def test_write_into_missing_directory_is_reported(tmp_path):
    target = tmp_path / "not_there" / "out.png"

    with pytest.raises(InputError, match="does not exist"):
        write_image(target, _smooth_rgb(), 8)
    assert not target.parent.exists()


def test_write_with_unsupported_suffix_is_reported(tmp_path):
    with pytest.raises(InputError, match=r"out\.bmp.*cannot write \.bmp"):
        write_image(tmp_path / "out.bmp", _smooth_rgb(), 8)
    assert _dir_listing(tmp_path) == []


def test_write_with_unsupported_bit_depth_is_reported(tmp_path):
    with pytest.raises(InputError, match="8 or 16"):
        write_image(tmp_path / "out.png", _smooth_rgb(), 12)


def test_write_rejects_pixels_that_are_not_rgb(tmp_path):
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        write_image(tmp_path / "out.png", np.zeros((8, 8), np.float32), 8)


# --- pairs -------------------------------------------------------------------------------


def _image(width: int, height: int, name: str, bit_depth: int = 8) -> Image:
    return Image(np.zeros((height, width, 3), np.float32), bit_depth, Path(name))


def test_pair_of_equal_size_passes_even_with_different_bit_depths():
    check_pair(_image(600, 400, "under.png", 8), _image(600, 400, "over.tif", 16))


def test_pair_of_different_sizes_names_both_files():
    under, over = _image(600, 400, "under.png"), _image(601, 400, "over.png")

    with pytest.raises(InputError) as info:
        check_pair(under, over)

    assert info.value.path == over.path
    assert "under.png is 600x400 but over.png is 601x400" in str(info.value)


def test_pair_without_paths_still_explains_the_mismatch():
    under = Image(np.zeros((4, 4, 3), np.float32), 8)
    over = Image(np.zeros((5, 4, 3), np.float32), 8)

    with pytest.raises(InputError, match="4x4 but the over-exposed image is 4x5"):
        check_pair(under, over)


# --- tensors -----------------------------------------------------------------------------


def test_to_tensor_puts_channels_first_in_a_batch_of_one():
    pixels = _smooth_rgb(6, 5)

    tensor = to_tensor(pixels)

    assert tensor.shape == (1, 3, 6, 5)
    assert tensor.dtype == torch.float32
    assert tensor.is_contiguous()
    np.testing.assert_array_equal(tensor[0, :, 2, 3].numpy(), pixels[2, 3])


def test_from_tensor_inverts_to_tensor_without_clamping():
    pixels = _smooth_rgb(6, 5) * 3 - 1  # values outside [0, 1] must survive

    back = from_tensor(to_tensor(pixels))

    assert back.dtype == np.float32
    assert back.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(back, pixels)


def test_from_tensor_accepts_unbatched_half_precision_tensors_that_need_grad():
    tensor = torch.ones(3, 4, 5, dtype=torch.bfloat16, requires_grad=True)

    pixels = from_tensor(tensor)

    assert pixels.shape == (4, 5, 3)
    assert pixels.dtype == np.float32


def test_from_tensor_returns_a_copy():
    tensor = torch.zeros(1, 3, 1, 1)

    from_tensor(tensor)[0, 0, 0] = 5.0

    assert tensor.max() == 0


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (1, 4, 4, 4), (4, 4)])
def test_from_tensor_rejects_anything_but_one_rgb_image(shape):
    with pytest.raises(ValueError, match="3, H, W"):
        from_tensor(torch.zeros(shape))


def test_to_tensor_rejects_anything_but_rgb_pixels():
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        to_tensor(np.zeros((4, 4, 4), np.float32))
