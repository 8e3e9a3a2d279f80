"""Pairing files by stem: one rule for `fuse --under/--over` and triplet datasets."""

from __future__ import annotations

import numpy as np
import pytest

from textmef import io
from textmef.cli import main
from textmef.data.pairs import images_by_stem, match_by_stem
from textmef.data.triplets import find_triplets
from textmef.errors import InputError


def write(path, value=0.5):
    path.parent.mkdir(parents=True, exist_ok=True)
    return io.write_image(path, np.full((8, 8, 3), value, np.float32), 8)


def test_images_are_matched_by_stem_whatever_their_suffix(tmp_path):
    write(tmp_path / "u" / "a.png")
    write(tmp_path / "u" / "b.png")
    write(tmp_path / "o" / "a.jpg")
    write(tmp_path / "o" / "c.png")
    match = match_by_stem([tmp_path / "u", tmp_path / "o"])
    assert match.stems == ["a"] and match.unmatched == ["b", "c"]
    assert match.groups() == [(tmp_path / "u" / "a.png", tmp_path / "o" / "a.jpg")]


def test_two_images_with_one_stem_are_refused_naming_both(tmp_path):
    write(tmp_path / "u" / "a.png")
    write(tmp_path / "u" / "a.jpg")
    with pytest.raises(InputError, match=r"a\.png.*share the stem 'a' \(a\.jpg\)"):
        images_by_stem(tmp_path / "u")


def test_triplets_refuse_duplicate_stems_instead_of_keeping_one(tmp_path):
    for role in ("under", "over", "gt"):
        write(tmp_path / role / "s1.png")
    write(tmp_path / "gt" / "s1.jpg")
    with pytest.raises(InputError, match="share the stem 's1'"):
        find_triplets(tmp_path)


def test_no_common_stem_is_an_error(tmp_path):
    write(tmp_path / "u" / "a.png")
    write(tmp_path / "o" / "b.png")
    with pytest.raises(InputError, match="no file stem is present in all of"):
        match_by_stem([tmp_path / "u", tmp_path / "o"])


def test_fuse_folder_mode_refuses_duplicate_stems_before_loading_a_model(tmp_path, capsys):
    write(tmp_path / "u" / "a.png")
    write(tmp_path / "u" / "a.tif")
    write(tmp_path / "o" / "a.png")
    code = main(
        ["fuse", "--under", str(tmp_path / "u"), "--over", str(tmp_path / "o"), "-o", "out",
         "--weights", str(tmp_path / "missing.safetensors")]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "share the stem 'a'" in err and "missing.safetensors" not in err
