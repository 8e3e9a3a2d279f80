"""``textmef make-pairs``: exposure stacks to (under, over, pseudo reference) triplets."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import PIL.ExifTags
import PIL.Image
import pytest
from PIL.TiffImagePlugin import IFDRational

from textmef import __version__, io
from textmef.cli import main
from textmef.data import stacks
from textmef.data.stacks import PairOptions, make_pairs

BRACKETS = Path(__file__).resolve().parents[2] / "shared" / "data" / "brackets"
REAL_SEQUENCES = ("hdrps/507", "merianos/agiagalini", "misc/villa")
SIZE = (48, 64)
# Exposures of a synthetic stack, and the (shuffled) file number each one is saved under.
THREE = {0.25: "02", 1.0: "03", 4.0: "01"}
FIVE = {1 / 16: "04", 0.25: "01", 1.0: "05", 4.0: "02", 16.0: "03"}


def radiance(seed: int = 0, size: tuple[int, int] = SIZE) -> np.ndarray:
    """A smooth random HDR-ish radiance map: about 7 stops of range, mildly coloured."""
    rng = np.random.default_rng(seed)
    h, w = size
    grey = cv2.resize(rng.random((4, 5)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    grey = (grey - grey.min()) / (grey.max() - grey.min())
    tint = cv2.resize(
        rng.random((3, 3, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC
    )
    return np.exp2(-6.0 + 7.0 * grey)[..., None] * (0.8 + 0.4 * np.clip(tint, 0, 1))


def render(scene: np.ndarray, exposure: float) -> np.ndarray:
    return np.clip(scene * exposure, 0, 1) ** (1 / 2.2)


def write_stack(
    folder: Path,
    exposures: dict[float, str],
    seed: int = 0,
    bit_depth: int = 8,
    size: tuple[int, int] = SIZE,
    exif: bool = False,
) -> Path:
    """Render ``scene`` at each exposure into ``folder/NN.png`` (8- or 16-bit)."""
    folder.mkdir(parents=True, exist_ok=True)
    scene = radiance(seed, size)
    for exposure, number in exposures.items():
        path = io.write_image(folder / f"{number}.png", render(scene, exposure), bit_depth)
        if exif:
            tags = PIL.Image.Exif()
            tags.get_ifd(PIL.ExifTags.IFD.Exif)[PIL.ExifTags.Base.ExposureTime] = IFDRational(
                round(exposure * 400), 4000
            )
            with PIL.Image.open(path) as im:
                im.load()
                im.save(path, exif=tags.tobytes())
    return folder


def by_number(exposures: dict[float, str]) -> list[str]:
    """File names in exposure order."""
    return [f"{exposures[e]}.png" for e in sorted(exposures)]


def mean_scorer(stack: np.ndarray, image: np.ndarray) -> float:
    """A cheap, deterministic stand-in for MEF-SSIM: brighter wins."""
    return float(image.mean())


@pytest.fixture
def tree(tmp_path):
    """Two good stacks (one nested deeper), a mixed-size folder and a one-image folder."""
    root = tmp_path / "stacks"
    write_stack(root / "groupA" / "s1", THREE, seed=1)
    write_stack(root / "groupB" / "deep" / "s2", FIVE, seed=2)
    mixed = write_stack(root / "groupA" / "mixed", THREE, seed=3)
    io.write_image(mixed / "09.png", np.full((20, 30, 3), 0.5, np.float32), 8)
    lonely = root / "lonely"
    lonely.mkdir()
    io.write_image(lonely / "01.png", np.full((20, 30, 3), 0.5, np.float32), 8)
    (root / ".hidden").mkdir()
    io.write_image(root / ".hidden" / "01.png", np.zeros((20, 30, 3), np.float32), 8)
    return root


def test_find_stacks_walks_recursively_skips_hidden_and_the_output(tree):
    found = stacks.find_stacks(tree, exclude=[tree / "groupA" / "mixed"])
    assert [p.relative_to(tree).as_posix() for p in found] == [
        "groupA/s1",
        "groupB/deep/s2",
        "lonely",
    ]


def test_order_is_recovered_from_luminance(tmp_path):
    folder = write_stack(tmp_path / "s", FIVE)
    frames, ordering = stacks.order_by_exposure(stacks.load_stack(folder))
    assert ordering == "luminance"
    assert [f.path.name for f in frames] == by_number(FIVE)
    ev = stacks.relative_exposures(frames, ordering)
    np.testing.assert_allclose(ev, [0, 2, 4, 6, 8], atol=0.2)


def test_exif_exposure_times_are_used_when_every_frame_has_one(tmp_path):
    folder = write_stack(tmp_path / "s", THREE, exif=True)
    frames, ordering = stacks.order_by_exposure(stacks.load_stack(folder))
    assert ordering == "exif"
    assert [f.path.name for f in frames] == by_number(THREE)
    assert [f.exposure_time for f in frames] == [0.025, 0.1, 0.4]
    # Exact stops: they come from the EXIF times, not from the pixels.
    assert stacks.relative_exposures(frames, ordering).tolist() == [0.0, 2.0, 4.0]

    io.write_image(folder / "02.png", render(radiance(0), 0.25), 8)  # drops its EXIF
    frames, ordering = stacks.order_by_exposure(stacks.load_stack(folder))
    assert ordering == "luminance"
    assert [f.path.name for f in frames] == by_number(THREE)


@pytest.mark.parametrize(
    ("ev", "pick", "gap", "pair"),
    [
        ([0, 2, 4, 6, 8], "extremes", 2.0, (0, 4)),
        ([0, 2, 4, 6, 8], "ev-gap", 4.0, (1, 3)),  # three pairs 4 stops apart: the centred one
        ([0, 2.1, 3.9, 6, 8], "ev-gap", 4.0, (1, 3)),  # noisy estimates do not change that
        ([0, 2, 4, 6, 8], "ev-gap", 2.0, (1, 2)),  # two equally centred pairs: the darker
        ([0, 2, 4, 6, 8], "ev-gap", 20.0, (0, 4)),
        ([0, 1, 3], "ev-gap", 2.0, (1, 2)),
        ([0, 3], "ev-gap", 1.0, (0, 1)),
    ],
)
def test_pick_pair(ev, pick, gap, pair):
    assert stacks.pick_pair(ev, pick, gap) == pair


def test_make_pairs_writes_triplets_and_a_manifest(tree):
    out = tree.parent / "data"
    manifest = make_pairs(tree, out, PairOptions(), scorer=mean_scorer)
    names = ["groupA_s1", "groupB_deep_s2"]
    for kind in ("under", "over", "gt"):
        assert sorted(p.name for p in (out / kind).iterdir()) == [f"{n}.png" for n in names]
        for name in names:
            image = io.read_image(out / kind / f"{name}.png")
            assert image.pixels.shape == (*SIZE, 3)
            assert image.bit_depth == 8
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["textmef_version"] == __version__
    assert manifest["options"] == {
        "pick": "extremes",
        "ev_gap": 2.0,
        "min_gap": 2.0,
        "reference": "best",
        "max_side": None,
        "align": False,
        "max_pixels": 100_000_000,
    }
    s1, s2 = manifest["stacks"]
    assert (s1["source"], s1["name"], s1["size"]) == ("groupA/s1", "groupA_s1", [64, 48])
    assert s1["ordering"] == "luminance"
    assert [f["file"] for f in s1["frames"]] == by_number(THREE)
    assert [f["exposure_time"] for f in s1["frames"]] == [None] * 3
    luminances = [f["mean_luminance"] for f in s1["frames"]]
    assert luminances == sorted(luminances)
    assert (s1["under"], s1["over"]) == ("02.png", "01.png")
    assert (s2["under"], s2["over"]) == ("04.png", "03.png")
    assert s1["outputs"] == {k: f"{k}/groupA_s1.png" for k in ("under", "over", "gt")}
    assert (s1["sequence"], s2["sequence"]) == ("groupA_s1", "groupB_deep_s2")
    assert set(s1["reference"]["scores"]) == {"mertens", "mertens-paper", "hdr"}
    assert s1["reference"]["chosen"] in ("mertens", "mertens-paper", "hdr")
    # The darkest/brightest frames on disk are the ones the manifest names.
    under = io.read_image(out / "under" / "groupA_s1.png").pixels
    assert np.array_equal(under, io.read_image(tree / "groupA" / "s1" / "02.png").pixels)
    gt = io.read_image(out / "gt" / "groupA_s1.png").pixels
    assert luminances[0] < stacks.mean_luminance(gt) < luminances[-1]


def test_mixed_sizes_and_single_images_are_skipped_and_reported(tree, caplog):
    manifest = make_pairs(
        tree, tree.parent / "data", PairOptions(reference="mertens"), scorer=mean_scorer
    )
    skipped = {s["source"]: s["reason"] for s in manifest["skipped"]}
    assert set(skipped) == {"groupA/mixed", "lonely"}
    assert "different sizes (30x20, 64x48)" in skipped["groupA/mixed"]
    assert "holds 1 image" in skipped["lonely"]
    assert "skipped groupA/mixed" in caplog.text
    assert not (tree.parent / "data" / "gt" / "groupA_mixed.png").exists()


def test_ev_gap_picks_the_centred_pair(tmp_path):
    write_stack(tmp_path / "stacks" / "s", FIVE)
    manifest = make_pairs(
        tmp_path / "stacks",
        tmp_path / "data",
        PairOptions(pick="ev-gap", ev_gap=4.0, reference="mertens"),
        scorer=mean_scorer,
    )
    entry = manifest["stacks"][0]
    assert (entry["under"], entry["over"]) == ("01.png", "02.png")  # exposures 1/4 and 4
    assert entry["pair_ev_gap"] == pytest.approx(4.0, abs=0.3)


def test_same_input_gives_byte_identical_output(tree):
    first, second = tree.parent / "a", tree.parent / "b"
    make_pairs(tree, first, scorer=mean_scorer)
    make_pairs(tree, second, scorer=mean_scorer)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 7  # 2 stacks x 3 images + the manifest
    assert sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file()) == files
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel


def test_skip_existing_reuses_outputs_and_entries(tree):
    out = tree.parent / "data"
    make_pairs(tree, out, scorer=mean_scorer)
    before = (out / "manifest.json").read_bytes()
    stale = (out / "gt" / "groupA_s1.png").stat().st_mtime_ns
    (out / "over" / "groupB_deep_s2.png").unlink()

    calls = []

    def counting_scorer(stack, image):
        calls.append(image.shape)
        return mean_scorer(stack, image)

    make_pairs(tree, out, PairOptions(skip_existing=True), scorer=counting_scorer)
    assert len(calls) == 3  # only groupB_deep_s2 was redone, its three candidates scored
    assert (out / "gt" / "groupA_s1.png").stat().st_mtime_ns == stale
    assert (out / "over" / "groupB_deep_s2.png").is_file()
    assert (out / "manifest.json").read_bytes() == before


def test_output_inside_the_stacks_folder_is_not_searched(tree):
    make_pairs(tree, tree / "out", scorer=mean_scorer)
    manifest = make_pairs(tree, tree / "out", scorer=mean_scorer)
    assert [s["source"] for s in manifest["stacks"]] == ["groupA/s1", "groupB/deep/s2"]


def test_sixteen_bit_stacks_give_sixteen_bit_triplets_and_max_side_downsizes(tmp_path):
    write_stack(tmp_path / "stacks" / "s", THREE, bit_depth=16)
    make_pairs(tmp_path / "stacks", tmp_path / "data", PairOptions(max_side=32), scorer=mean_scorer)
    for kind in ("under", "over", "gt"):
        image = io.read_image(tmp_path / "data" / kind / "s.png")
        assert image.bit_depth == 16
        assert image.pixels.shape == (24, 32, 3)


@pytest.mark.parametrize(("brighter_wins", "chosen"), [(True, "hdr"), (False, "mertens")])
def test_best_keeps_the_higher_scoring_candidate(tmp_path, monkeypatch, brighter_wins, chosen):
    # Stand-ins make the candidates and their scores known exactly.
    monkeypatch.setattr(stacks, "mertens", lambda frames: np.full_like(frames[0], 0.2))
    monkeypatch.setattr(stacks, "mertens_paper", lambda frames: np.full_like(frames[0], 0.4))
    monkeypatch.setattr(stacks, "hdr_tonemap", lambda frames, ev: np.full_like(frames[0], 0.6))
    sign = 1.0 if brighter_wins else -1.0
    monkeypatch.setattr(stacks, "mef_ssim_score", lambda stack, image: sign * float(image.mean()))
    write_stack(tmp_path / "stacks" / "s", THREE)
    manifest = make_pairs(tmp_path / "stacks", tmp_path / "data")
    reference = manifest["stacks"][0]["reference"]
    assert reference["chosen"] == chosen
    assert reference["scores"]["hdr"] == pytest.approx(sign * round(0.6 * 255) / 255, abs=1e-6)
    gt = io.read_image(tmp_path / "data" / "gt" / "s.png").pixels
    assert gt.mean() == pytest.approx(0.6 if chosen == "hdr" else 0.2, abs=1 / 255)


def test_best_with_the_real_mef_ssim(tmp_path):
    frames, ordering = stacks.order_by_exposure(
        stacks.load_stack(write_stack(tmp_path / "s", THREE))
    )
    ev = stacks.relative_exposures(frames, ordering)
    reference = stacks.pseudo_reference([f.pixels for f in frames], ev.tolist(), "best")
    scores = reference.scores
    assert set(scores) == {"mertens", "mertens-paper", "hdr"}
    assert all(0.0 < s <= 1.0 for s in scores.values())
    assert reference.method == max(scores, key=scores.get)


def test_hdr_candidate_is_sane_on_a_synthetic_stack(tmp_path):
    frames, ordering = stacks.order_by_exposure(
        stacks.load_stack(write_stack(tmp_path / "s", FIVE))
    )
    ev = stacks.relative_exposures(frames, ordering)
    image = stacks.hdr_tonemap([f.pixels for f in frames], ev.tolist())
    assert image.shape == (*SIZE, 3) and image.dtype == np.float32
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    assert frames[0].mean_luminance < stacks.mean_luminance(image) < frames[-1].mean_luminance


def test_opencv_settings_are_restored(tmp_path):
    # The fusions run OpenCV single-threaded for reproducible sums; that must not leak.
    frames = [f.pixels for f in stacks.load_stack(write_stack(tmp_path / "s", THREE))]
    threads = cv2.getNumThreads()
    try:
        cv2.setNumThreads(3)
        stacks.mertens(frames)
        stacks.hdr_tonemap(frames, [0.0, 2.0, 4.0])
        assert cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(threads)


def test_cli_makes_pairs(tree, monkeypatch, capsys):
    monkeypatch.setattr(stacks, "mef_ssim_score", mean_scorer)
    out = tree.parent / "data"
    assert (
        main(
            [
                "make-pairs",
                str(tree),
                "-o",
                str(out),
                "--reference",
                "mertens",
                "--pick",
                "ev-gap",
                "--ev-gap",
                "4",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "wrote 2 triplet(s)" in printed and "mertens 2" in printed
    assert "2 folder(s) skipped" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["pick"] == "ev-gap"
    assert manifest["options"]["ev_gap"] == 4.0


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("missing", [], "no such folder"),
        ("empty", [], "holds no images"),
        ("lonely", [], "holds no usable exposure stack"),
        ("empty", ["--pick", "extremes", "--ev-gap", "2"], "--ev-gap is only used with"),
        ("empty", ["--pick", "ev-gap", "--ev-gap", "-1"], "positive number of stops"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, setup, args, message):
    stacks_dir = tmp_path / "stacks"
    if setup != "missing":
        stacks_dir.mkdir()
    if setup == "lonely":
        (stacks_dir / "one").mkdir()
        io.write_image(stacks_dir / "one" / "01.png", np.zeros((8, 8, 3), np.float32), 8)
    assert main(["make-pairs", str(stacks_dir), "-o", str(tmp_path / "data"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("textmef: error:")]
    assert len(errors) == 1 and message in errors[0]


@pytest.mark.slow
def test_real_sequences(tmp_path):
    missing = [s for s in REAL_SEQUENCES if not (BRACKETS / s).is_dir()]
    if missing:
        pytest.skip(
            f"real exposure brackets not found under {BRACKETS} ({', '.join(missing)}); "
            "they live outside the repository in ../shared/data"
        )
    root = tmp_path / "stacks"
    for sequence in REAL_SEQUENCES:
        link = root / sequence
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(BRACKETS / sequence, target_is_directory=True)
    manifest = make_pairs(root, tmp_path / "data", PairOptions(max_side=256))
    assert [s["source"] for s in manifest["stacks"]] == sorted(REAL_SEQUENCES)
    assert manifest["skipped"] == []
    villa = next(s for s in manifest["stacks"] if s["source"] == "misc/villa")
    assert villa["ordering"] == "exif"
    for entry in manifest["stacks"]:
        images = {
            k: io.read_image(tmp_path / "data" / p).pixels for k, p in entry["outputs"].items()
        }
        assert max(images["gt"].shape[:2]) == 256
        under, over, gt = (stacks.mean_luminance(images[k]) for k in ("under", "over", "gt"))
        assert under < gt < over, entry["source"]
        assert all(s is None or np.isfinite(s) for s in entry["reference"]["scores"].values())


@pytest.mark.slow
def test_real_sequences_all_pairs(tmp_path):
    missing = [s for s in REAL_SEQUENCES if not (BRACKETS / s).is_dir()]
    if missing:
        pytest.skip(
            f"real exposure brackets not found under {BRACKETS} ({', '.join(missing)}); "
            "they live outside the repository in ../shared/data"
        )
    root = tmp_path / "stacks"
    for sequence in REAL_SEQUENCES:
        link = root / sequence
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(BRACKETS / sequence, target_is_directory=True)
    out = tmp_path / "data"
    manifest = make_pairs(root, out, PairOptions(pick="all-pairs", min_gap=2.0, max_side=128))
    assert manifest["skipped"] == []
    by_sequence: dict[str, list[dict]] = {}
    for entry in manifest["stacks"]:
        by_sequence.setdefault(entry["sequence"], []).append(entry)
    assert sorted(by_sequence) == sorted(s.replace("/", "_") for s in REAL_SEQUENCES)
    for sequence, entries in by_sequence.items():
        ev = [f["ev"] for f in entries[0]["frames"]]
        expected = stacks.all_pairs(ev, 2.0)
        assert len(entries) == len(expected) > 1, sequence
        names = [f["file"] for f in entries[0]["frames"]]
        assert [(e["under"], e["over"]) for e in entries] == [
            (names[i], names[j]) for i, j in expected
        ]
        gts = {(out / e["outputs"]["gt"]).read_bytes() for e in entries}
        assert len(gts) == 1, sequence
        chosen = entries[0]["reference"]
        assert chosen["chosen"] == max(chosen["scores"], key=lambda k: chosen["scores"][k] or -1)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporary_files_of_a_killed_run_are_removed_at_the_next_run(tree, caplog):
    out = tree.parent / "data"
    make_pairs(tree, out, scorer=mean_scorer)
    pid = dead_pid()
    stale = [
        out / f".manifest.json.{pid}-{'a' * 32}.tmp",
        out / "under" / f".groupA_s1.png.{pid}-{'b' * 32}.tmp",
        out / "gt" / f".groupB_deep_s2.png.{pid}-{'c' * 32}.tmp",
    ]
    live = out / "over" / f".groupA_s1.png.{os.getpid()}-{'d' * 32}.tmp"
    for path in (*stale, live):
        path.write_bytes(b"half")
    caplog.set_level(logging.INFO, logger="textmef")
    make_pairs(tree, out, PairOptions(skip_existing=True), scorer=mean_scorer)
    assert not any(p.exists() for p in stale) and live.exists()
    assert (
        "removed 3 temporary files left by an interrupted run: .manifest.json."
        f"{pid}-{'a' * 32}.tmp, under/.groupA_s1.png.{pid}-{'b' * 32}.tmp, "
        f"gt/.groupB_deep_s2.png.{pid}-{'c' * 32}.tmp"
    ) in caplog.messages


# ---- all-pairs ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ev", "min_gap", "pairs"),
    [
        ([0, 2, 4, 6, 8], 4.0, [(0, 2), (0, 3), (0, 4), (1, 3), (1, 4), (2, 4)]),
        ([0, 2, 4], 2.0, [(0, 1), (0, 2), (1, 2)]),
        ([0, 1.9, 4], 2.0, [(0, 1), (0, 2), (1, 2)]),  # within 1/6 stop: counts as 2
        ([0, 5 / 3, 10 / 3], 2.0, [(0, 2)]),  # a 1/3-stop step short does not
        ([0, 1, 2], 3.0, []),
    ],
)
def test_all_pairs(ev, min_gap, pairs):
    assert stacks.all_pairs(ev, min_gap) == pairs


def test_pick_pair_refuses_all_pairs():
    with pytest.raises(ValueError, match="all_pairs"):
        stacks.pick_pair([0, 2, 4], "all-pairs")


def test_all_pairs_writes_every_pair_with_the_stack_reference(tmp_path):
    root = tmp_path / "stacks"
    write_stack(root / "grp" / "s", FIVE, exif=True)  # exact stops 0, 2, 4, 6, 8
    write_stack(root / "t", THREE, seed=4, exif=True)  # 0, 2, 4: one pair 4 stops apart
    out = tmp_path / "data"
    calls = []

    def counting_scorer(stack, image):
        calls.append(stack.shape[0])
        return mean_scorer(stack, image)

    manifest = make_pairs(
        root, out, PairOptions(pick="all-pairs", min_gap=4.0), scorer=counting_scorer
    )
    # Exposure order of FIVE is 04 01 05 02 03; of THREE 02 03 01.
    expected = [
        "grp_s@04-05",
        "grp_s@04-02",
        "grp_s@04-03",
        "grp_s@01-02",
        "grp_s@01-03",
        "grp_s@05-03",
        "t@02-01",
    ]
    assert [e["name"] for e in manifest["stacks"]] == expected
    assert [e["sequence"] for e in manifest["stacks"]] == ["grp_s"] * 6 + ["t"]
    assert calls == [5, 5, 5, 3, 3, 3]  # one reference per stack: three candidates each
    for kind in ("under", "over", "gt"):
        assert sorted(p.stem for p in (out / kind).iterdir()) == sorted(expected)
    first = manifest["stacks"][0]
    gt = (out / "gt" / "grp_s@04-05.png").read_bytes()
    for entry in manifest["stacks"][:6]:
        assert (out / entry["outputs"]["gt"]).read_bytes() == gt
        assert entry["reference"] == first["reference"] and entry["frames"] == first["frames"]
        assert entry["pair_ev_gap"] >= 4.0
        under, over = entry["name"].split("@")[1].split("-")
        assert (entry["under"], entry["over"]) == (f"{under}.png", f"{over}.png")
        assert entry["outputs"] == {k: f"{k}/{entry['name']}.png" for k in ("under", "over", "gt")}
        for kind in ("under", "over"):
            written = io.read_image(out / entry["outputs"][kind]).pixels
            source = io.read_image(root / "grp" / "s" / entry[kind]).pixels
            assert np.array_equal(written, source)
    assert manifest["stacks"][6]["pair_ev_gap"] == 4.0
    assert manifest["options"]["pick"] == "all-pairs" and manifest["options"]["min_gap"] == 4.0


def test_all_pairs_skips_a_stack_without_a_wide_enough_pair(tmp_path):
    root = tmp_path / "stacks"
    write_stack(root / "narrow", THREE, exif=True)  # spans 4 stops
    write_stack(root / "wide", FIVE, exif=True)
    manifest = make_pairs(
        root, tmp_path / "data", PairOptions(pick="all-pairs", min_gap=5.0), scorer=mean_scorer
    )
    assert {e["sequence"] for e in manifest["stacks"]} == {"wide"}
    assert manifest["skipped"] == [
        {
            "source": "narrow",
            "reason": "no two frames are at least 5 stops apart (the whole stack spans 4.00 stops)",
        }
    ]
    assert not any(p.name.startswith("narrow") for p in (tmp_path / "data" / "gt").iterdir())


def test_all_pairs_skips_a_stack_whose_name_holds_the_pair_mark(tmp_path):
    write_stack(tmp_path / "stacks" / "a@b", THREE)
    write_stack(tmp_path / "stacks" / "c", THREE)
    manifest = make_pairs(
        tmp_path / "stacks",
        tmp_path / "data",
        PairOptions(pick="all-pairs", min_gap=2.0),
        scorer=mean_scorer,
    )
    assert {e["sequence"] for e in manifest["stacks"]} == {"c"}
    assert manifest["skipped"][0]["source"] == "a@b"
    assert "holds '@'" in manifest["skipped"][0]["reason"]


def test_all_pairs_output_is_byte_identical_and_resumes_per_stack(tmp_path, caplog):
    root = tmp_path / "stacks"
    write_stack(root / "s1", FIVE, seed=1)
    write_stack(root / "s2", THREE, seed=2)
    options = PairOptions(pick="all-pairs", min_gap=2.0)
    first, second = tmp_path / "a", tmp_path / "b"
    make_pairs(root, first, options, scorer=mean_scorer)
    make_pairs(root, second, options, scorer=mean_scorer)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file()) == files
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel

    # Resume: a missing file of one of s2's pairs redoes s2 only.
    before = (first / "manifest.json").read_bytes()
    next((first / "over").glob("s2@*.png")).unlink()
    calls = []

    def counting_scorer(stack, image):
        calls.append(stack.shape[0])
        return mean_scorer(stack, image)

    resumed = PairOptions(pick="all-pairs", min_gap=2.0, skip_existing=True)
    make_pairs(root, first, resumed, scorer=counting_scorer)
    assert calls == [3, 3, 3]
    assert (first / "manifest.json").read_bytes() == before
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel

    # Other options make other triplets: an earlier manifest is not reused for them.
    calls.clear()
    wider = PairOptions(pick="all-pairs", min_gap=4.0, skip_existing=True)
    manifest = make_pairs(root, first, wider, scorer=counting_scorer)
    assert calls == [5, 5, 5, 3, 3, 3]
    assert all(e["pair_ev_gap"] >= 3.8 for e in manifest["stacks"])
    # The narrower pairs of the first run are gone: training reads every file in the folders.
    from textmef.data.triplets import find_triplets

    assert [t.name for t in find_triplets(first)] == sorted(e["name"] for e in manifest["stacks"])
    assert "pair files an earlier run with other options left" in caplog.text


def test_all_pairs_triplets_of_a_stack_share_a_side_of_the_split(tmp_path):
    from textmef.data.triplets import find_triplets, sequence_of, split_by_sequence

    root = tmp_path / "stacks"
    for i in range(8):
        write_stack(root / f"s{i}", THREE, seed=i, size=(12, 16))
    out = tmp_path / "data"
    make_pairs(root, out, PairOptions(pick="all-pairs", min_gap=2.0), scorer=mean_scorer)
    triplets = find_triplets(out)
    assert len(triplets) == 8 * 3
    train, val = split_by_sequence(triplets, 0.5)
    assert {sequence_of(t.name) for t in train}.isdisjoint(sequence_of(t.name) for t in val)
    assert len(val) % 3 == 0 and len(train) % 3 == 0


# ---- reference candidates -------------------------------------------------------------------
def test_mertens_paper_is_mertens_with_the_paper_weights(tmp_path):
    from textmef.baselines.mertens import PAPER_WEIGHTS, mertens

    frames = [f.pixels for f in stacks.load_stack(write_stack(tmp_path / "s", THREE))]
    assert PAPER_WEIGHTS == (1.0, 1.0, 1.0)
    assert np.array_equal(stacks.mertens_paper(frames), mertens(frames, (1.0, 1.0, 1.0)))
    assert not np.array_equal(stacks.mertens_paper(frames), stacks.mertens(frames))


def test_best_keeps_mertens_paper_when_it_scores_highest(tmp_path, monkeypatch):
    monkeypatch.setattr(stacks, "mertens", lambda frames: np.full_like(frames[0], 0.2))
    monkeypatch.setattr(stacks, "mertens_paper", lambda frames: np.full_like(frames[0], 0.4))
    monkeypatch.setattr(stacks, "hdr_tonemap", lambda frames, ev: np.full_like(frames[0], 0.6))
    write_stack(tmp_path / "stacks" / "s", THREE)

    def closest_to_middle_grey(stack, image):
        return -abs(float(image.mean()) - 0.4)

    manifest = make_pairs(tmp_path / "stacks", tmp_path / "data", scorer=closest_to_middle_grey)
    reference = manifest["stacks"][0]["reference"]
    assert reference["chosen"] == "mertens-paper"
    assert set(reference["scores"]) == {"mertens", "mertens-paper", "hdr"}
    assert reference["scores"]["mertens-paper"] == pytest.approx(
        -abs(round(0.4 * 255) / 255 - 0.4), abs=1e-6
    )
    gt = io.read_image(tmp_path / "data" / "gt" / "s.png").pixels
    assert gt.mean() == pytest.approx(0.4, abs=1 / 255)


def test_a_tie_keeps_opencv_mertens(tmp_path):
    frames = [f.pixels for f in stacks.load_stack(write_stack(tmp_path / "s", THREE))]
    reference = stacks.pseudo_reference(frames, [0.0, 2.0, 4.0], "best", scorer=lambda s, i: 0.5)
    assert reference.method == "mertens"


def test_reference_mertens_paper_alone(tmp_path):
    frames = [f.pixels for f in stacks.load_stack(write_stack(tmp_path / "s", THREE))]
    reference = stacks.pseudo_reference(
        frames, [0.0, 2.0, 4.0], "mertens-paper", scorer=mean_scorer
    )
    assert reference.method == "mertens-paper"
    assert set(reference.scores) == {"mertens-paper"}
    expected = np.rint(stacks.mertens_paper(frames) * 255) / 255
    np.testing.assert_array_equal(reference.image, expected.astype(np.float32))


# ---- command line ---------------------------------------------------------------------------
def test_cli_all_pairs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(stacks, "mef_ssim_score", mean_scorer)
    write_stack(tmp_path / "stacks" / "s", FIVE, exif=True)
    out = tmp_path / "data"
    args = ["make-pairs", str(tmp_path / "stacks"), "-o", str(out), "--pick", "all-pairs"]
    assert main([*args, "--min-gap", "6", "--reference", "mertens-paper"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 3 triplet(s) from 1 stack(s)" in printed and "mertens-paper 1" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["name"] for e in manifest["stacks"]] == ["s@04-02", "s@04-03", "s@01-03"]
    assert manifest["options"]["min_gap"] == 6.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-gap", "2"], "--min-gap is only used with --pick all-pairs"),
        (["--pick", "all-pairs", "--min-gap", "0"], "minimum gap must be a positive number"),
        (["--pick", "all-pairs", "--min-gap", "-1"], "minimum gap must be a positive number"),
        (["--pick", "all-pairs", "--min-gap", "nan"], "minimum gap must be a positive number"),
        (["--pick", "all-pairs", "--min-gap", "inf"], "minimum gap must be a positive number"),
    ],
)
def test_cli_min_gap_errors(tmp_path, capsys, args, message):
    (tmp_path / "stacks").mkdir()
    assert main(["make-pairs", str(tmp_path / "stacks"), "-o", str(tmp_path / "d"), *args]) == 2
    errors = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("textmef: error:")
    ]
    assert len(errors) == 1 and message in errors[0]


def test_min_gap_is_validated():
    from textmef.errors import InputError

    with pytest.raises(InputError, match="the minimum gap must be a positive number of stops"):
        PairOptions(pick="all-pairs", min_gap=-2.0)
