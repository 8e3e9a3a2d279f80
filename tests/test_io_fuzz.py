"""Fuzzing textmef.io.read_image: random and mutated bytes never escape as a stray exception.

For every input the reader either raises an :class:`InputError` (one line, naming the file)
or returns a valid image (float32 (H, W, 3) in [0, 1], 8 or 16 bits, at least MIN_SIDE on a
side, within ``max_pixels``). Nothing may reach the real stderr (fd 2): libpng, libtiff and
OpenCV talk there on their own; nor may a warning or a log record. Time is bounded per
example (hypothesis ``deadline``, plus a watchdog that ends the run on a hang inside C code,
its stacks in $TMPDIR/textmef-io-fuzz-hang-PID.txt) and memory over each test (peak RSS,
which sees the decoders' C allocations that tracemalloc cannot).

The starting points are small PNG/JPEG/TIFF files made here by write_image (8 and 16 bits)
and by Pillow (progressive JPEG with an EXIF orientation, uncompressed and deflated TIFF).
Runs are derandomised, so CI sees the same examples every time.
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import logging
import os
import sys
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import PIL.Image
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from textmef.errors import InputError
from textmef.io import MIN_SIDE, SUPPORTED_SUFFIXES, read_image, write_image

MAX_PIXELS = 4_000_000  # a mutated header that claims more is refused before any decode
MAX_RSS_GROWTH = 500 * 2**20  # bytes of peak RSS one fuzz test may add
WATCHDOG_S = 120  # a hang in C code never returns to hypothesis' deadline check
# Examples per strategy: about 2 ms each, so the whole file takes a few seconds.
EXAMPLES = 600

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SUFFIXES = (".png", ".jpg", ".tif")
SIZES = ((8, 8), (12, 16), (24, 32), (48, 64))  # (height, width)

# A sample is named by a key, so failing examples print short and can be pasted back.
# (suffix, bit depth, (height, width), pixel seed, writer)
SampleKey = tuple[str, int, tuple[int, int], int, str]


def _settings(examples: int) -> Callable[[Any], Any]:
    return settings(
        max_examples=examples,
        deadline=timedelta(seconds=2),
        derandomize=True,  # the same examples on every run and machine
        database=None,  # writes nothing into the working tree
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- the check every example goes through ------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _noise() -> Iterator[tuple[list[warnings.WarningMessage], list[logging.LogRecord]]]:
    """Record the warnings and log records (INFO and up, as the CLI shows them) meanwhile."""
    root = logging.getLogger()
    handler, level = _Records(), root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught, handler.records
    finally:
        root.setLevel(level)
        root.removeHandler(handler)


def _check_read(folder: Path, data: bytes, suffix: str, capfd: pytest.CaptureFixture[str]) -> None:
    path = folder / f"fuzzed{suffix}"
    path.write_bytes(data)
    capfd.readouterr()
    try:
        with _noise() as (caught, records):
            image = read_image(path, max_pixels=MAX_PIXELS)
    except InputError as exc:
        message = str(exc)
        assert path.name in message, message
        assert "\n" not in message and "\r" not in message, message
        assert exc.path == path
    else:
        pixels = image.pixels
        assert isinstance(pixels, np.ndarray)
        assert pixels.dtype == np.float32
        assert pixels.ndim == 3 and pixels.shape[2] == 3, pixels.shape
        height, width = pixels.shape[:2]
        assert min(height, width) >= MIN_SIDE, pixels.shape
        assert height * width <= MAX_PIXELS, pixels.shape
        assert np.isfinite(pixels).all()
        assert pixels.min() >= 0.0 and pixels.max() <= 1.0
        assert image.bit_depth in (8, 16)
        assert image.path == path
    err = capfd.readouterr().err
    assert err == "", f"the reader printed on stderr: {err!r}"
    assert not caught, [str(w.message) for w in caught]
    assert not records, [record.getMessage() for record in records]


def _peak_rss_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # Windows: no getrusage
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


@contextlib.contextmanager
def _bounded() -> Iterator[Path]:
    """A scratch folder; peak RSS growth is checked; a hang ends the run (exit status 1).

    The hung stacks go to a file, since pytest's capture of fd 2 dies with the process.
    """
    before = _peak_rss_bytes()
    hang_log = Path(tempfile.gettempdir()) / f"textmef-io-fuzz-hang-{os.getpid()}.txt"
    try:
        with open(hang_log, "w") as log:
            faulthandler.dump_traceback_later(WATCHDOG_S, exit=True, file=log)
            try:
                with tempfile.TemporaryDirectory() as folder:
                    yield Path(folder)
            finally:
                faulthandler.cancel_dump_traceback_later()
    finally:
        hang_log.unlink(missing_ok=True)
    after = _peak_rss_bytes()
    if before is not None and after is not None:
        # ru_maxrss is a high-water mark: growth shows what this test's decodes needed on
        # top of whatever the process had already reached.
        assert after - before < MAX_RSS_GROWTH, f"peak RSS grew by {(after - before) >> 20} MiB"


def _fuzz(
    strategy: st.SearchStrategy[Any],
    build: Callable[[Any], tuple[bytes, str]],
    examples: int,
    capfd: pytest.CaptureFixture[str],
) -> None:
    with _bounded() as folder:

        @_settings(examples)
        @given(strategy)
        def run(case: Any) -> None:
            data, suffix = build(case)
            _check_read(folder, data, suffix, capfd)

        run()


# --- sample files --------------------------------------------------------------------------


@functools.cache
def _sample(key: SampleKey) -> bytes:
    suffix, bit_depth, size, seed, writer = key
    rng = np.random.default_rng(seed)
    pixels = rng.random((*size, 3), dtype=np.float32)
    if seed % 2:  # smooth pixels compress, so cuts and flips land in other structures
        pixels = np.sort(pixels, axis=1)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"sample{suffix}"
        if writer == "textmef":
            write_image(path, pixels, bit_depth)
        else:
            rgb = PIL.Image.fromarray(np.rint(pixels * 255).astype(np.uint8))
            if suffix == ".jpg":
                exif = PIL.Image.Exif()
                exif[0x0112] = 6  # rotated: the reader turns it upright
                rgb.save(path, quality=90, progressive=True, exif=exif)
            elif suffix == ".tif":
                rgb.save(path, compression="tiff_deflate" if seed % 2 else None)
            else:
                rgb.save(path, optimize=True, pnginfo=_png_text())
        return path.read_bytes()


def _png_text() -> Any:
    import PIL.PngImagePlugin

    info = PIL.PngImagePlugin.PngInfo()
    info.add_text("Comment", "fuzz", zip=True)
    return info


sample_keys = st.tuples(
    st.sampled_from(SUFFIXES),
    st.sampled_from((8, 16)),
    st.sampled_from(SIZES),
    st.integers(0, 1),
    st.sampled_from(("textmef", "textmef", "pillow")),
)

ALL_KEYS = [
    (suffix, depth, size, seed, writer)
    for suffix in SUFFIXES
    for depth in (8, 16)
    for size in SIZES
    for seed in (0, 1)
    for writer in ("textmef", "pillow")
    if writer == "textmef" or depth == 8
]


# --- mutations -----------------------------------------------------------------------------
# Each mutation is a tuple (name, parameters...); positions are taken modulo the length.

BIG = (0, 1, 3, 4, 7, 255, 256, 4095, 65535, 65536, 2**24, 2**31 - 1, 2**31, 2**32 - 1)
values32 = st.one_of(st.integers(0, 80), st.sampled_from(BIG), st.integers(0, 2**32 - 1))
values16 = st.one_of(st.integers(0, 80), st.sampled_from((0, 1, 3, 255, 4096, 32767, 65535)))
positions = st.integers(0, 2**20)

truncations = st.tuples(st.just("truncate"), positions)
flips = st.tuples(
    st.just("flip"),
    st.lists(
        st.tuples(positions, st.sampled_from([1 << b for b in range(8)] + [0xFF])),
        min_size=1,
        max_size=8,
    ),
)
overwrites = st.tuples(
    st.just("set"), st.lists(st.tuples(positions, st.integers(0, 255)), min_size=1, max_size=8)
)
splices = st.tuples(st.just("splice"), sample_keys, positions, positions)
duplications = st.tuples(st.just("duplicate"), positions, st.integers(1, 512), positions)
removals = st.tuples(st.just("remove"), positions, st.integers(1, 512))
chunk_edits = st.tuples(
    st.just("chunk"), st.sampled_from(("duplicate", "remove", "to_end")), st.integers(0, 30)
)
# The length field of a PNG chunk (4 bytes) or a JPEG marker segment (2 bytes).
lengths = st.tuples(st.just("length"), st.integers(0, 30), values32)
png_headers = st.tuples(
    st.just("png_ihdr"),
    values32,
    values32,
    st.sampled_from((1, 2, 4, 8, 16, 0, 3, 255)),  # bit depth
    st.sampled_from((0, 2, 3, 4, 6, 1, 7, 255)),  # colour type
    st.sampled_from((0, 1, 2)),  # interlace
    st.booleans(),  # recompute the CRC, so libpng reads the new values instead of failing
)
TIFF_TAGS = (256, 257, 258, 259, 262, 273, 274, 277, 278, 279, 284, 317, 322, 323, 338, 339)
tiff_entries = st.tuples(
    st.just("tiff_entry"),
    st.integers(0, 30),  # which entry of the first directory
    st.one_of(st.none(), st.sampled_from(TIFF_TAGS)),  # None: keep the tag
    st.one_of(st.none(), st.sampled_from((1, 3, 4, 16)), st.integers(0, 20)),  # field type
    st.one_of(st.none(), values32),  # value count
    values32,  # value or offset
)
tiff_fields = st.tuples(
    st.just("tiff_field"), st.sampled_from(("ifd_offset", "entry_count")), values32
)
jpeg_frames = st.tuples(
    st.just("jpeg_sof"),
    values16,  # height
    values16,  # width
    st.one_of(st.none(), st.sampled_from((8, 12, 16, 0, 255))),  # precision
    st.one_of(st.none(), st.integers(0, 5)),  # components
    st.one_of(st.none(), st.integers(0, 255)),  # first component's sampling factors
)

HEADER_EDITS = {
    ".png": st.one_of(png_headers, lengths),
    ".jpg": st.one_of(jpeg_frames, lengths),
    ".tif": st.one_of(tiff_entries, tiff_fields),
}


def _apply(data: bytes, mutation: tuple[Any, ...]) -> bytes:
    name, *args = mutation
    size = len(data)
    if name == "truncate":
        return data[: args[0] % (size + 1)]
    if name in ("flip", "set"):
        edited = bytearray(data)
        for position, value in args[0]:
            if edited:
                index = position % len(edited)
                edited[index] = edited[index] ^ value if name == "flip" else value
        return bytes(edited)
    if name == "splice":
        other = _sample(args[0])
        return data[: args[1] % (size + 1)] + other[args[2] % (len(other) + 1) :]
    if name == "duplicate":
        start = args[0] % (size + 1)
        piece = data[start : start + args[1]]
        where = args[2] % (size + 1)
        return data[:where] + piece + data[where:]
    if name == "remove":
        start = args[0] % (size + 1)
        return data[:start] + data[start + args[1] :]
    if name == "chunk":
        return _edit_chunk(data, *args)
    if name == "length":
        return _set_length(data, *args)
    if name == "png_ihdr":
        return _png_ihdr(data, *args)
    if name == "tiff_entry":
        return _tiff_entry(data, *args)
    if name == "tiff_field":
        return _tiff_field(data, *args)
    if name == "jpeg_sof":
        return _jpeg_sof(data, *args)
    raise AssertionError(f"unknown mutation {name}")


def _chunks(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each PNG chunk or JPEG marker segment (up to the scan), else []."""
    spans = []
    if data.startswith(PNG_SIGNATURE):
        pos = len(PNG_SIGNATURE)
        while pos + 12 <= len(data):
            end = pos + 12 + int.from_bytes(data[pos : pos + 4], "big")
            if end > len(data):
                break
            spans.append((pos, end))
            pos = end
    elif data.startswith(b"\xff\xd8"):
        pos = 2
        while pos + 4 <= len(data) and data[pos] == 0xFF:
            end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
            spans.append((pos, min(end, len(data))))
            if data[pos + 1] == 0xDA:  # start of scan: entropy-coded data follows
                break
            pos = end
    return spans


def _edit_chunk(data: bytes, action: str, index: int) -> bytes:
    spans = _chunks(data)
    if not spans:
        return data
    start, end = spans[index % len(spans)]
    piece = data[start:end]
    if action == "duplicate":
        return data[:end] + piece + data[end:]
    if action == "remove":
        return data[:start] + data[end:]
    last = spans[-1][1]  # to_end: after the last chunk (IEND) or segment (the scan header)
    return data[:start] + data[end:last] + piece + data[last:]


def _set_length(data: bytes, index: int, value: int) -> bytes:
    spans = _chunks(data)
    if not spans:
        return data
    start = spans[index % len(spans)][0]
    if data.startswith(PNG_SIGNATURE):
        return data[:start] + value.to_bytes(4, "big") + data[start + 4 :]
    return data[: start + 2] + (value & 0xFFFF).to_bytes(2, "big") + data[start + 4 :]


def _png_ihdr(
    data: bytes, width: int, height: int, depth: int, colour: int, interlace: int, fix_crc: bool
) -> bytes:
    if not data.startswith(PNG_SIGNATURE) or len(data) < 33 or data[12:16] != b"IHDR":
        return data
    fields = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    fields += bytes((depth, colour, 0, 0, interlace))
    crc = zlib.crc32(b"IHDR" + fields).to_bytes(4, "big") if fix_crc else data[29:33]
    return data[:16] + fields + crc + data[33:]


def _tiff_order(data: bytes) -> str | None:
    if data.startswith(b"II*\x00"):
        return "little"
    return "big" if data.startswith(b"MM\x00*") else None


def _tiff_entry(
    data: bytes, index: int, tag: int | None, kind: int | None, count: int | None, value: int
) -> bytes:
    order = _tiff_order(data)
    if order is None:
        return data
    directory = int.from_bytes(data[4:8], order)
    entries = int.from_bytes(data[directory : directory + 2], order)
    if entries == 0:
        return data
    pos = directory + 2 + 12 * (index % entries)
    if pos + 12 > len(data):
        return data
    old = data[pos : pos + 12]
    tag_bytes = old[0:2] if tag is None else tag.to_bytes(2, order)
    kind_bytes = old[2:4] if kind is None else kind.to_bytes(2, order)
    count_bytes = old[4:8] if count is None else count.to_bytes(4, order)
    short = int.from_bytes(kind_bytes, order) == 3 and int.from_bytes(count_bytes, order) <= 2
    value_bytes = (
        (value & 0xFFFF).to_bytes(2, order) + b"\0\0" if short else value.to_bytes(4, order)
    )
    return data[:pos] + tag_bytes + kind_bytes + count_bytes + value_bytes + data[pos + 12 :]


def _tiff_field(data: bytes, field: str, value: int) -> bytes:
    order = _tiff_order(data)
    if order is None:
        return data
    if field == "ifd_offset":
        return data[:4] + value.to_bytes(4, order) + data[8:]
    directory = int.from_bytes(data[4:8], order)
    if directory + 2 > len(data):
        return data
    return data[:directory] + (value & 0xFFFF).to_bytes(2, order) + data[directory + 2 :]


def _jpeg_sof(
    data: bytes,
    height: int,
    width: int,
    precision: int | None,
    components: int | None,
    sampling: int | None,
) -> bytes:
    for start, end in _chunks(data):
        marker = data[start + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and end - start >= 13:
            frame = bytearray(data[start + 4 : end])
            if precision is not None:
                frame[0] = precision
            frame[1:5] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
            if components is not None:
                frame[5] = components
            if sampling is not None:
                frame[7] = sampling
            return data[: start + 4] + bytes(frame) + data[end:]
    return data


def _mutants(*mutations: st.SearchStrategy[Any], most: int = 1) -> st.SearchStrategy[Any]:
    """(sample key, [mutation, ...]): one sample with 1..most mutations applied in turn."""
    return st.tuples(sample_keys, st.lists(st.one_of(*mutations), min_size=1, max_size=most))


@st.composite
def _header_mutants(draw: st.DrawFn) -> tuple[SampleKey, list[tuple[Any, ...]]]:
    key = draw(sample_keys)
    edits = draw(st.lists(HEADER_EDITS[key[0]], min_size=1, max_size=2))
    return key, edits


def _build_mutant(case: tuple[SampleKey, list[tuple[Any, ...]]]) -> tuple[bytes, str]:
    key, mutations = case
    data = _sample(key)
    for mutation in mutations:
        data = _apply(data, mutation)
    return data, key[0]


def _build_random(case: tuple[bytes, bytes, str]) -> tuple[bytes, str]:
    prefix, rest, suffix = case
    return prefix + rest, suffix


def _ihdr(width: int, height: int) -> bytes:
    fields = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes((8, 2, 0, 0, 0))
    return (
        PNG_SIGNATURE + b"\0\0\0\x0dIHDR" + fields + zlib.crc32(b"IHDR" + fields).to_bytes(4, "big")
    )


# Random bytes, bare or behind a valid magic number (or a whole valid PNG header), so that
# they get past the magic check into the header readers and decoders.
random_files = st.tuples(
    st.one_of(
        st.just(b""),
        st.sampled_from((PNG_SIGNATURE, b"\xff\xd8", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*")),
        st.builds(_ihdr, st.integers(0, 70), st.integers(0, 70)),
        st.builds(lambda order: order + b"\x08\0\0\0", st.sampled_from((b"II*\x00", b"MM\x00*"))),
    ),
    st.binary(max_size=2048),
    st.sampled_from(sorted(SUPPORTED_SUFFIXES)),
)


# --- the tests -----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ALL_KEYS, ids=str)
def test_every_sample_reads_back(key):
    """The fuzzer's starting points are valid images, so mutants start from the real thing."""
    suffix, _, (height, width), _, writer = key
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"sample{suffix}"
        path.write_bytes(_sample(key))
        image = read_image(path, max_pixels=MAX_PIXELS)
    rotated = writer == "pillow" and suffix == ".jpg"
    assert image.pixels.shape == ((width, height, 3) if rotated else (height, width, 3))


def test_random_bytes(capfd):
    _fuzz(random_files, _build_random, EXAMPLES, capfd)


def test_truncated_files(capfd):
    _fuzz(_mutants(truncations), _build_mutant, EXAMPLES, capfd)


def test_flipped_bits_and_bytes(capfd):
    _fuzz(_mutants(flips, overwrites, most=2), _build_mutant, EXAMPLES, capfd)


def test_spliced_files(capfd):
    _fuzz(_mutants(splices), _build_mutant, EXAMPLES, capfd)


def test_duplicated_or_removed_chunks(capfd):
    _fuzz(_mutants(duplications, removals, chunk_edits, most=2), _build_mutant, EXAMPLES, capfd)


def test_overwritten_header_fields(capfd):
    _fuzz(_header_mutants(), _build_mutant, EXAMPLES, capfd)


def test_stacked_mutations(capfd):
    every = (truncations, flips, overwrites, splices, duplications, removals, chunk_edits)
    _fuzz(
        _mutants(*every, lengths, png_headers, jpeg_frames, tiff_entries, most=4),
        _build_mutant,
        EXAMPLES,
        capfd,
    )


# Known-bad files that each decoder has something to say about on fd 2 (checked by hand
# without quiet_decoders): libpng, libjpeg, libtiff and OpenCV's own log.
KNOWN_BAD: dict[str, tuple[SampleKey, list[tuple[Any, ...]]]] = {
    "png cut in the image data": ((".png", 8, (48, 64), 0, "textmef"), [("truncate", 4000)]),
    "png with a bad ancillary crc": ((".png", 8, (48, 64), 0, "pillow"), [("flip", [(60, 1)])]),
    "png with a damaged idat": ((".png", 16, (24, 32), 0, "textmef"), [("remove", 2000, 3)]),
    "png ihdr claiming more rows than stored": (
        (".png", 8, (8, 8), 0, "textmef"),
        [("png_ihdr", 100, 100, 8, 2, 0, True)],
    ),
    "jpeg with a damaged scan": ((".jpg", 8, (48, 64), 0, "textmef"), [("set", [(3000, 0xFF)])]),
    "tiff cut in the strips": ((".tif", 8, (48, 64), 0, "pillow"), [("truncate", 4000)]),
    "tiff with tags out of order": (
        (".tif", 8, (24, 32), 0, "textmef"),
        [("tiff_entry", 3, 50000, None, None, 1)],
    ),
    "tiff with a bad strip offset": (
        (".tif", 16, (24, 32), 0, "textmef"),
        [("tiff_entry", 5, 273, 4, 1, 2**31)],
    ),
}


@pytest.mark.parametrize("case", KNOWN_BAD.values(), ids=KNOWN_BAD.keys())
def test_known_bad_files_print_nothing_on_stderr(case, capfd):
    with _bounded() as folder:
        _check_read(folder, *_build_mutant(case), capfd)
    out, err = capfd.readouterr()
    assert not (out or err)


# What the fuzzer found; each printed on stderr before it was fixed.
FINDINGS: dict[str, tuple[SampleKey, list[tuple[Any, ...]]]] = {
    # libjpeg warnings that quiet_decoders passed through as "another thread's output"
    "jpeg: Warning: unknown JFIF revision number 0.67": (
        (".jpg", 8, (24, 32), 0, "textmef"),
        [("remove", 11, 11)],
    ),
    "jpeg: Inconsistent progression sequence for component 0 coefficient 1": (
        (".jpg", 8, (12, 16), 0, "pillow"),
        [("remove", 370, 370)],
    ),
    "jpeg: Invalid SOS parameters for sequential JPEG": (
        (".jpg", 16, (8, 8), 1, "textmef"),
        [("splice", (".jpg", 16, (12, 16), 0, "textmef"), 76199, 131071)],
    ),
    # Pillow's TIFF reader logs an error (logging's last resort prints it; the CLI's
    # handler would print "textmef: ERROR: ..." before the InputError's line)
    "tiff: More samples per pixel than can be decoded: 8745": (
        (".tif", 8, (12, 16), 1, "textmef"),
        [("tiff_entry", 15, 277, None, None, 8745)],
    ),
}


@pytest.mark.parametrize("case", FINDINGS.values(), ids=FINDINGS.keys())
def test_fuzzer_findings(case, capfd):
    with _bounded() as folder:
        _check_read(folder, *_build_mutant(case), capfd)


@pytest.mark.parametrize("length", [0x5A002000, 2**31 - 1, 2**32 - 1])
def test_png_chunk_longer_than_the_file_is_refused_before_decoding(length, monkeypatch):
    # Found by the fuzzer: one byte of a 10 kB PNG (the IDAT length) set to 0x5A made
    # OpenCV allocate the claimed 1.5 GB on each of the two decodes (1.4 GB peak RSS, 4 s).
    data = _sample((".png", 8, (48, 64), 0, "textmef"))
    assert data[37:41] == b"IDAT"
    data = data[:33] + length.to_bytes(4, "big") + data[37:]

    def no_decode(*args: object) -> None:
        raise AssertionError("decoded a PNG whose chunk runs past the end of the file")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "long-chunk.png"
        path.write_bytes(data)
        with pytest.raises(InputError, match="long-chunk.png: is a damaged or truncated PNG file"):
            read_image(path, max_pixels=MAX_PIXELS)


def test_png_cut_inside_the_last_chunk_is_still_refused():
    data = _sample((".png", 8, (24, 32), 0, "textmef"))
    assert data.endswith(b"IEND\xaeB`\x82")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cut.png"
        path.write_bytes(data[:-2])
        with pytest.raises(InputError, match="cut.png: is a damaged or truncated PNG file"):
            read_image(path, max_pixels=MAX_PIXELS)


def test_a_jpeg_of_thousands_of_scans_is_refused_before_decoding(tmp_path):
    import io as bytes_io

    import PIL.Image

    from textmef import io
    from textmef.errors import InputError

    buffer = bytes_io.BytesIO()
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
        buffer, "JPEG", progressive=True
    )
    data = buffer.getvalue()
    start, end = data.index(b"\xff\xda"), data.index(b"\xff\xd9")
    path = tmp_path / "scans.jpg"
    path.write_bytes(data[:start] + data[start:end] * 200 + data[end:])
    with pytest.raises(InputError, match=r"scans.jpg: is a JPEG of \d+ scans"):
        io.read_image(path)
