"""The shape of the package: a light command line, optional extras, one registry of each kind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
HEAVY = ("torch", "numba", "cv2", "flask", "matplotlib")
COMMANDS = (
    "fuse",
    "serve",
    "make-pairs",
    "train-prompt",
    "train",
    "eval",
    "bench",
    "convert",
    "info",
)


def run_python(code: str, *, timeout: float = 300, cwd: Path | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEXTMEF_")}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or REPO,
        env=env,
    )


def test_help_and_version_import_no_heavy_module():
    code = f"""
import contextlib, io, json, sys
from textmef.cli import main
loaded = {{}}
for argv in [["--help"], ["--version"]] + [[c, "--help"] for c in {list(COMMANDS)!r}]:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as exc:
            assert exc.code == 0, (argv, exc.code)
    loaded[" ".join(argv)] = [m for m in {list(HEAVY)!r} if m in sys.modules]
print(json.dumps(loaded))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert len(loaded) == len(COMMANDS) + 2
    assert all(modules == [] for modules in loaded.values()), loaded


def test_the_method_registry_names_methods_without_loading_torch():
    result = run_python(
        "import sys; from textmef.methods import list_methods; print(list_methods()); "
        f"print([m for m in {list(HEAVY)!r} if m in sys.modules])"
    )
    assert result.returncode == 0, result.stderr
    names, heavy = result.stdout.splitlines()
    assert "'textmef'" in names and "'mertens'" in names and heavy == "[]"


BLOCK = "import sys; sys.modules[{name!r}] = None\n"


@pytest.mark.parametrize("blocked", ["flask", "waitress", "selenium", "transformers"])
def test_the_cli_works_with_an_optional_dependency_missing(blocked, tmp_path):
    out = tmp_path / "fused.png"
    web = blocked in ("flask", "waitress")
    code = (
        BLOCK.format(name=blocked)
        + f"""
import contextlib, io
from textmef.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
assert main(["info"]) == 0
assert main(["fuse", {str(SAMPLES / "under.png")!r}, {str(SAMPLES / "over.png")!r},
             "-o", {str(out)!r}, "--threads", "2"]) == 0
# Without Flask or waitress, serve must stop at once with the extra to install (with them
# it would start serving, so it only runs here when one is blocked).
raise SystemExit(main(["serve", "--port", "0"]) if {web!r} else 0)
"""
    )
    result = run_python(code)
    assert out.is_file(), result.stderr
    assert "model: textmef-c32" in result.stdout
    assert "Traceback" not in result.stderr
    if web:
        assert result.returncode == 2, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("textmef: error: textmef serve needs Flask and waitress")
        assert f"{blocked} is not installed" in last and "pip install 'textmef[web]'" in last
    else:
        assert result.returncode == 0, result.stderr


def test_fused_sample_is_a_valid_image(tmp_path):
    import numpy as np

    from textmef import io

    result = run_python(
        "import sys; from textmef.cli import main; "
        f"sys.exit(main(['fuse', {str(SAMPLES / 'under.png')!r}, {str(SAMPLES / 'over.png')!r}, "
        f"'-o', {str(tmp_path / 'f.png')!r}]))"
    )
    assert result.returncode == 0, result.stderr
    image = io.read_image(tmp_path / "f.png")
    assert image.pixels.shape == (256, 256, 3) and image.bit_depth == 8
    assert 0.05 < float(np.mean(image.pixels)) < 0.95
