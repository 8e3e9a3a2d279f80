# ruff: noqa: E501  (the case tables read best one case a line)
"""A corpus of bad inputs, run through every entry point that reads images.

Each case asserts the exit code (or exception), a one-line message naming the file, and that
no file was written or changed.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

import textmef
from textmef import io
from textmef.checkpoint import save_checkpoint
from textmef.cli import main
from textmef.errors import InputError
from textmef.models import FusionNet, model_config

SIZE = (48, 64)  # (H, W): MEF-SSIM (make-pairs) needs 41 px a side


def _pixels(seed: int, scale: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.random((*SIZE, 3), dtype=np.float32) * scale, 0, 1)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png(width: int, height: int, idat: bytes | None) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunks = _png_chunk(b"IHDR", ihdr)
    if idat is not None:
        chunks += _png_chunk(b"IDAT", idat)
    return b"\x89PNG\r\n\x1a\n" + chunks + _png_chunk(b"IEND", b"")


def _valid_bomb(side: int) -> bytes:
    """A valid all-black PNG of side x side pixels: a few hundred KB that decode to GBs."""
    row = b"\x00" * (1 + 3 * side)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    return _png(side, side, idat)


def _write_pil(path: Path, mode: str, size: tuple[int, int] = (64, 48)) -> Path:
    PIL.Image.new(mode, size, 128 if mode == "L" else (90, 120, 150, 200)[: len(mode)]).save(path)
    return path


def _truncate(source: Path, path: Path) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """Every bad (and a few good) files, written once."""
    root = tmp_path_factory.mktemp("corpus")
    good = {
        "under.png": io.write_image(root / "under.png", _pixels(0, 0.4), 8),
        "over.png": io.write_image(root / "over.png", _pixels(1, 2.0), 8),
        "under16.tif": io.write_image(root / "under16.tif", _pixels(2, 0.4), 16),
        "over.jpg": io.write_image(root / "over.jpg", _pixels(3, 2.0), 8),
        "over.tif": io.write_image(root / "over.tif", _pixels(4, 2.0), 16),
    }
    bad = {
        "truncated.png": _truncate(good["over.png"], root / "truncated.png"),
        "truncated.jpg": _truncate(good["over.jpg"], root / "truncated.jpg"),
        "truncated.tif": _truncate(good["over.tif"], root / "truncated.tif"),
        "bomb-header.png": root / "bomb-header.png",
        "bomb-valid.png": root / "bomb-valid.png",
        "empty.png": root / "empty.png",
        "text.png": root / "text.png",
        "gray.png": _write_pil(root / "gray.png", "L"),
        "alpha.png": _write_pil(root / "alpha.png", "RGBA"),
        "tiny.png": root / "tiny.png",
        "wide.png": io.write_image(root / "wide.png", np.zeros((48, 80, 3), np.float32) + 0.5, 8),
        "frame.gif": root / "frame.gif",
    }
    bad["bomb-header.png"].write_bytes(_png(30000, 30000, None))
    bad["bomb-valid.png"].write_bytes(_valid_bomb(12000))  # 144 MP, over the 100 MP default
    bad["empty.png"].write_bytes(b"")
    bad["text.png"].write_text("this is not an image\n")
    PIL.Image.new("RGB", (1, 1)).save(bad["tiny.png"])
    PIL.Image.new("RGB", (64, 48)).save(bad["frame.gif"], format="GIF")
    return {**good, **bad}


# name -> (inputs given as corpus names, extra arguments, what the message must say)
CLI_CASES = {
    "truncated PNG": (("under.png", "truncated.png"), (), "truncated.png: is a damaged or truncated PNG"),
    "truncated JPEG": (("under.png", "truncated.jpg"), (), "truncated.jpg: is a damaged or truncated JPEG"),
    "truncated TIFF": (("under.png", "truncated.tif"), (), "truncated.tif: is a damaged"),
    "header-only pixel bomb": (("under.png", "bomb-header.png"), (), "bomb-header.png: is 30000x30000 pixels"),
    "valid pixel bomb": (("under.png", "bomb-valid.png"), (), "bomb-valid.png: is 12000x12000 pixels (144.0 MP), over the limit"),
    "empty": (("under.png", "empty.png"), (), "empty.png: is empty (0 bytes)"),
    "text named .png": (("under.png", "text.png"), (), "text.png: is not a PNG, TIFF or JPEG image"),
    "grayscale": (("under.png", "gray.png"), (), "gray.png: is a grayscale image"),
    "alpha": (("under.png", "alpha.png"), (), "alpha.png: has an alpha channel"),
    "1x1": (("under.png", "tiny.png"), (), "tiny.png: is only 1x1 pixels"),
    "mismatched sizes": (("under.png", "wide.png"), (), "wide.png: is 80x48 but under.png is 64x48"),
    "same file twice": (("under.png", "under.png"), (), "under.png: is given twice"),
    "unsupported input": (("under.png", "frame.gif"), (), "frame.gif: unsupported file type (.gif)"),
    "pixel limit flag": (("under.png", "over.png"), ("--max-pixels", "100"), "under.png: is 64x48 pixels"),
}  # fmt: skip
OUTPUT_CASES = {
    "output = input": ("{corpus}/under.png", "under.png: is also an input"),
    "missing output folder": ("{tmp}/missing/fused.png", "fused.png: output directory"),
    "bad output suffix": ("{tmp}/fused.bmp", "fused.bmp: cannot write .bmp"),
    "no output suffix": ("{tmp}/fused", "fused: cannot write a file without suffix"),
}
WEIGHT_CASES = ("text", "truncated", "runs-code", "wrong-shapes")


def _snapshot(*folders: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("textmef: error: "), err
    return err


def _bad_weights(kind: str, folder: Path) -> Path:
    if kind == "text":
        path = folder / "w.safetensors"
        path.write_text("not weights")
    elif kind == "truncated":
        good = save_checkpoint(FusionNet(model_config("textmef-tiny")), folder / "g.safetensors")
        path = folder / "w.safetensors"
        path.write_bytes(good.read_bytes()[:1000])
        good.unlink()
    elif kind == "runs-code":
        path = folder / "w.pth"

        class RunsCode:
            def __reduce__(self):
                return (Path.touch, (folder / "code-ran",))

        path.write_bytes(pickle.dumps({"w": RunsCode()}))
    else:
        model = FusionNet(model_config("textmef-tiny"))
        path = save_checkpoint(model, folder / "w.safetensors")
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        tensors["refine.conv_out.weight"] = torch.zeros(3, 16, 5, 5)
        save_file(tensors, str(path), metadata=meta)
    return path


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_fuse_refuses_bad_inputs(case, corpus, tmp_path, capsys):
    names, extra, expected = CLI_CASES[case]
    out = tmp_path / "fused.png"
    before = _snapshot(corpus["under.png"].parent, tmp_path)
    code = main(["fuse", *(str(corpus[n]) for n in names), "-o", str(out), *extra])
    assert code == 2
    assert expected in _one_line_error(capsys)
    assert _snapshot(corpus["under.png"].parent, tmp_path) == before


@pytest.mark.parametrize("case", sorted(OUTPUT_CASES))
def test_cli_fuse_refuses_bad_outputs(case, corpus, tmp_path, capsys):
    template, expected = OUTPUT_CASES[case]
    out = template.format(corpus=corpus["under.png"].parent, tmp=tmp_path)
    before = _snapshot(corpus["under.png"].parent, tmp_path)
    assert main(["fuse", str(corpus["under.png"]), str(corpus["over.png"]), "-o", out]) == 2
    assert expected in _one_line_error(capsys)
    assert _snapshot(corpus["under.png"].parent, tmp_path) == before


@pytest.mark.parametrize("kind", WEIGHT_CASES)
def test_cli_fuse_refuses_bad_weights(kind, corpus, tmp_path, capsys):
    weights = _bad_weights(kind, tmp_path)
    before = _snapshot(corpus["under.png"].parent, tmp_path)
    out = tmp_path / "fused.png"
    args = ["fuse", str(corpus["under.png"]), str(corpus["over.png"]), "-o", str(out)]
    assert main([*args, "--weights", str(weights)]) == 2
    assert f"{weights}: " in _one_line_error(capsys)
    assert _snapshot(corpus["under.png"].parent, tmp_path) == before
    assert not (tmp_path / "code-ran").exists()


def test_sixteen_bit_input_is_fused_at_sixteen_bits(corpus, tmp_path):
    out = tmp_path / "fused.png"
    args = ["fuse", str(corpus["under16.tif"]), str(corpus["over.png"]), "-o", str(out)]
    assert main(args) == 0
    assert io.read_image(out).bit_depth == 16


def test_checks_happen_before_the_model_loads(corpus, tmp_path, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr("textmef.api.load_model", no_model)
    for name in ("text.png", "gray.png", "alpha.png", "bomb-valid.png", "wide.png"):
        out = tmp_path / "fused.png"
        assert main(["fuse", str(corpus["under.png"]), str(corpus[name]), "-o", str(out)]) == 2
        capsys.readouterr()


# ---- folder mode --------------------------------------------------------------------------
FOLDER_BAD = ("truncated.png", "bomb-valid.png", "text.png", "gray.png", "tiny.png", "wide.png")


@pytest.mark.parametrize("name", FOLDER_BAD)
def test_folder_mode_reports_the_bad_pair_and_fuses_the_others(name, corpus, tmp_path, capsys):
    under, over, out = tmp_path / "u", tmp_path / "o", tmp_path / "out"
    for folder in (under, over):
        folder.mkdir()
    (under / "good.png").write_bytes(corpus["under.png"].read_bytes())
    (over / "good.png").write_bytes(corpus["over.png"].read_bytes())
    (under / "bad.png").write_bytes(corpus["under.png"].read_bytes())
    (over / "bad.png").write_bytes(corpus[name].read_bytes())
    before = _snapshot(under, over)
    assert main(["fuse", "--under", str(under), "--over", str(over), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"textmef: error: {over / 'bad.png'}: ")
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]
    assert _snapshot(under, over) == before


@pytest.mark.parametrize("which", ["under", "over"])
def test_folder_mode_never_writes_into_an_input_folder(which, corpus, tmp_path, capsys):
    under, over = tmp_path / "u", tmp_path / "o"
    for folder in (under, over):
        folder.mkdir()
    (under / "a.png").write_bytes(corpus["under.png"].read_bytes())
    (over / "a.png").write_bytes(corpus["over.png"].read_bytes())
    before = _snapshot(under, over)
    target = under if which == "under" else over
    args = ["fuse", "--under", str(under), "--over", str(over), "-o", str(target)]
    assert main(args) == 2
    assert f"{target}: is the input folder" in _one_line_error(capsys)
    assert _snapshot(under, over) == before


# ---- the Python API -----------------------------------------------------------------------
API_CASES = {
    "truncated.png": "is a damaged or truncated PNG",
    "truncated.jpg": "is a damaged or truncated JPEG",
    "truncated.tif": "is a damaged",
    "bomb-header.png": "is 30000x30000 pixels",
    "bomb-valid.png": "over the limit",
    "empty.png": "is empty",
    "text.png": "is not a PNG, TIFF or JPEG image",
    "gray.png": "is a grayscale image",
    "alpha.png": "has an alpha channel",
    "tiny.png": "is only 1x1 pixels",
    "wide.png": "is 80x48 but under.png is 64x48",
    "under.png": "is the same file as the under-exposed image",
    "frame.gif": "unsupported file type",
}


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return FusionNet(model_config("textmef-tiny")).eval()


@pytest.mark.parametrize("name", sorted(API_CASES))
def test_api_refuses_bad_inputs_with_one_line_naming_the_file(name, corpus, tiny_model):
    with pytest.raises(InputError) as info:
        textmef.fuse(corpus["under.png"], corpus[name], model=tiny_model)
    message = str(info.value)
    assert "\n" not in message and name in message and API_CASES[name] in message


def test_api_pixel_limit_is_an_argument(corpus, tiny_model):
    with pytest.raises(InputError, match="over the limit of 0.0001 MP"):
        textmef.fuse(corpus["under.png"], corpus["over.png"], model=tiny_model, max_pixels=100)
    fused = textmef.fuse(corpus["under.png"], corpus["over.png"], model=tiny_model)
    assert fused.shape == (*SIZE, 3)


# ---- make-pairs ---------------------------------------------------------------------------
MAKE_PAIRS_BAD = ("truncated.png", "bomb-valid.png", "text.png", "gray.png", "alpha.png")


@pytest.mark.parametrize("name", MAKE_PAIRS_BAD)
def test_make_pairs_skips_a_stack_with_a_bad_frame_naming_it(name, corpus, tmp_path, capsys):
    import json

    stacks, out = tmp_path / "stacks", tmp_path / "data"
    for stack, third in (("good", "over.jpg"), ("bad", name)):
        folder = stacks / stack
        folder.mkdir(parents=True)
        for i, source in enumerate(("under.png", "over.png", third)):
            target = folder / f"{i}{Path(source).suffix}"
            target.write_bytes(corpus[source].read_bytes())
    before = _snapshot(stacks)
    assert main(["make-pairs", str(stacks), "-o", str(out), "--reference", "mertens"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["source"] for s in manifest["stacks"]] == ["good"]
    (skipped,) = manifest["skipped"]
    assert skipped["source"] == "bad" and "\n" not in skipped["reason"]
    assert f"2{Path(name).suffix}" in skipped["reason"]
    assert sorted(p.name for p in (out / "gt").iterdir()) == ["good.png"]
    assert _snapshot(stacks) == before
    assert "libpng" not in capsys.readouterr().err


def test_make_pairs_bench_and_eval_take_a_pixel_limit(corpus, tmp_path, capsys):
    import json

    stacks, data = tmp_path / "stacks", tmp_path / "data"
    folder = stacks / "s"
    folder.mkdir(parents=True)
    for i, source in enumerate(("under.png", "over.png")):
        (folder / f"{i}.png").write_bytes(corpus[source].read_bytes())
    args = ["make-pairs", str(stacks), "-o", str(data), "--reference", "mertens"]
    assert main([*args, "--max-pixels", "1000"]) == 2
    manifest = json.loads((data / "manifest.json").read_text())
    assert "over the limit of 0.001 MP" in manifest["skipped"][0]["reason"]
    capsys.readouterr()
    assert main(args) == 0
    report = tmp_path / "report"
    bench = ["bench", str(data), "-o", str(report), "--methods", "mean", "--max-pixels", "1000"]
    assert main(bench) == 2
    assert "is 64x48 pixels" in _one_line_error(capsys)
    assert not (report / "fused" / "mean").exists()  # refused before fusing anything
    evaluate = ["eval", str(data / "gt"), "--under", str(data / "under"), "--over"]
    assert (
        main([*evaluate, str(data / "over"), "-o", str(tmp_path / "e"), "--max-pixels", "1000"])
        == 2
    )
    assert "over the limit" in _one_line_error(capsys)


# ---- web upload ---------------------------------------------------------------------------
WEB_CASES = {
    "truncated.png": "truncated.png: is a damaged or truncated PNG",
    "truncated.jpg": "truncated.jpg: is a damaged or truncated JPEG",
    "truncated.tif": "truncated.tif: is a damaged",
    "bomb-header.png": "bomb-header.png: is 30000x30000 pixels",
    "bomb-valid.png": "bomb-valid.png: is 12000x12000 pixels",
    "empty.png": "empty.png: is empty",
    "text.png": "text.png: is not a PNG, TIFF or JPEG image",
    "gray.png": "gray.png: is a grayscale image",
    "alpha.png": "alpha.png: has an alpha channel",
    "tiny.png": "tiny.png: is only 1x1 pixels",
    "wide.png": "wide.png: is 80x48 but under.png is 64x48",
    "under.png": "is identical to",
    "frame.gif": "frame.gif: unsupported file type (.gif)",
}


@pytest.mark.parametrize("name", sorted(WEB_CASES))
def test_web_upload_refuses_bad_inputs_naming_the_users_file(name, corpus, tiny_model, tmp_path):
    pytest.importorskip("flask", reason="the web app needs Flask: pip install 'textmef[web]'")
    from io import BytesIO

    from textmef.web.app import create_app

    root = tmp_path / "root"
    root.mkdir()
    app = create_app(tiny_model, temp_root=root, max_pixels=10_000_000)
    app.testing = True
    files = [
        (BytesIO(corpus["under.png"].read_bytes()), "under.png"),
        (BytesIO(corpus[name].read_bytes()), name),
    ]
    with app.test_client() as client:
        response = client.post("/api/fuse", data={"files": files})
        error = response.get_json()["error"]
    assert response.status_code == 422, error
    assert "\n" not in error and WEB_CASES[name] in error
    assert str(root) not in error and "in00-" not in error and "in01-" not in error
    assert list(root.iterdir()) == []
