"""Triplet data: the split by sequence and whole-image samples of ``TripletCrops``."""

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from textmef import io
from textmef.data.triplets import (
    Triplet,
    TripletCrops,
    dihedral,
    find_triplets,
    sequence_of,
    split_by_sequence,
)
from textmef.errors import InputError

SIZE = (30, 45)  # (H, W): not square, so whole samples are padded on one side


def write_triplets(root: Path, names: list[str], size: tuple[int, int] = SIZE) -> Path:
    """``under/ over/ gt/`` with one random triplet per name; a stack's pairs share its gt."""
    rng = np.random.default_rng(0)
    for kind in ("under", "over", "gt"):
        (root / kind).mkdir(parents=True, exist_ok=True)
    references: dict[str, np.ndarray] = {}
    for name in names:
        scene = rng.random((*size, 3)).astype(np.float32)
        io.write_image(root / "under" / f"{name}.png", scene * 0.3, 8)
        io.write_image(root / "over" / f"{name}.png", np.clip(scene * 1.8, 0, 1), 8)
        gt = references.setdefault(sequence_of(name), scene * 0.8)
        io.write_image(root / "gt" / f"{name}.png", gt, 8)
    return root


def old_split(names: list[str], val_fraction: float) -> set[str]:
    """The validation names of the split before sequences existed: a hash of the name."""
    return {
        n
        for n in names
        if int(hashlib.sha256(n.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < val_fraction
    }


@pytest.mark.parametrize(
    ("name", "sequence"),
    [
        ("hdrps_Foo@02-07", "hdrps_Foo"),
        ("hdrps_Foo", "hdrps_Foo"),
        ("a@b@c", "a"),
        ("s00", "s00"),
    ],
)
def test_sequence_of(name, sequence):
    assert sequence_of(name) == sequence


def test_names_without_a_pair_mark_split_exactly_as_before(tmp_path):
    names = [f"group_scene{i:03d}" for i in range(200)]
    train, val = split_by_sequence([Triplet(n, tmp_path, tmp_path, None) for n in names], 0.3)
    assert {t.name for t in val} == old_split(names, 0.3)
    assert [t.name for t in train] == [n for n in names if n not in old_split(names, 0.3)]


def test_the_pairs_of_a_stack_stay_on_one_side_of_the_split(tmp_path):
    stacks = [f"stack{i:02d}" for i in range(40)]
    pairs = [f"{s}@{u:02d}-{o:02d}" for s in stacks for u, o in ((1, 3), (1, 4), (2, 4))]
    items = [Triplet(n, tmp_path, tmp_path, None) for n in pairs]
    train, val = split_by_sequence(items, 0.3)
    train_sequences = {sequence_of(t.name) for t in train}
    val_sequences = {sequence_of(t.name) for t in val}
    assert train_sequences.isdisjoint(val_sequences)
    assert train_sequences | val_sequences == set(stacks)
    assert val and train
    # A stack lands where its bare name would: all-pairs and extremes data split alike.
    assert val_sequences == old_split(stacks, 0.3)
    assert len(val) == 3 * len(val_sequences)


def test_pairs_read_from_a_folder_split_by_sequence(tmp_path):
    names = [f"s{i}@{u}-{o}" for i in range(12) for u, o in (("01", "03"), ("02", "03"))]
    triplets = find_triplets(write_triplets(tmp_path, names))
    train, val = split_by_sequence(triplets, 0.4)
    assert {sequence_of(t.name) for t in train}.isdisjoint(sequence_of(t.name) for t in val)


# ---- TripletCrops ---------------------------------------------------------------------------
def expected_whole(path: Path, crop: int) -> torch.Tensor:
    """The whole image as a sample: area-shrunk to a longer side of ``crop``, edge-padded."""
    pixels = io.read_image(path).pixels
    h, w = pixels.shape[:2]
    size = (round(w * crop / max(h, w)), round(h * crop / max(h, w)))
    small = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    padded = np.pad(small, ((0, crop - size[1]), (0, crop - size[0]), (0, 0)), mode="edge")
    return torch.from_numpy(padded).permute(2, 0, 1)


@pytest.fixture(scope="module")
def pair_data(tmp_path_factory):
    names = ["a@01-03", "a@01-04", "a@02-04", "b@01-03", "c"]
    return find_triplets(write_triplets(tmp_path_factory.mktemp("pairs"), names))


def test_whole_samples_are_the_shrunk_and_padded_triplet(pair_data):
    crop = 16
    crops = TripletCrops(pair_data, crop=crop, augment=False, whole_fraction=1.0).load()
    for position in range(7):
        sample = crops[position]
        triplet = pair_data[crops.sequence_at(position)]
        for image, path in zip(sample, (triplet.under, triplet.over, triplet.gt)):
            assert image.shape == (3, crop, crop) and image.dtype == torch.float32
            # Kept as 16-bit integers: within half a level of 1/65535 of the float resize.
            torch.testing.assert_close(image, expected_whole(path, crop), atol=1e-5, rtol=0)
        # The short side is padded with the last row: 45 x 30 shrinks to 16 x 11.
        assert torch.equal(sample[0][:, 11:, :], sample[0][:, 10:11, :].expand(3, 5, crop))


def test_whole_samples_are_flipped_and_rotated_like_crops(pair_data):
    plain = TripletCrops(pair_data, crop=16, augment=False, seed=4, whole_fraction=1.0).load()
    augmented = TripletCrops(pair_data, crop=16, augment=True, seed=4, whole_fraction=1.0).load()
    views = set()
    for position in range(24):
        unturned, turned = plain[position], augmented[position]
        matching = [
            v
            for v in range(8)
            if all(torch.equal(dihedral(a, v), b) for a, b in zip(unturned, turned))
        ]
        assert matching, position
        views.add(matching[0])
    assert len(views) > 2


def test_whole_fraction_mixes_whole_samples_and_unchanged_crops(pair_data):
    crop = 8
    mixed = TripletCrops(pair_data, crop=crop, seed=2, whole_fraction=0.5).load()
    only_crops = TripletCrops(pair_data, crop=crop, seed=2).load()
    only_wholes = TripletCrops(pair_data, crop=crop, seed=2, whole_fraction=1.0).load()
    whole = 0
    for position in range(80):
        sample = mixed[position]
        crop_sample, whole_sample = only_crops[position], only_wholes[position]
        if all(torch.equal(a, b) for a, b in zip(sample, whole_sample)):
            whole += 1
        else:
            # Not whole: exactly the crop a run without whole samples takes there.
            assert all(torch.equal(a, b) for a, b in zip(sample, crop_sample)), position
    assert 25 <= whole <= 55  # about half of 80


def test_whole_samples_are_reproducible_without_loading_first(pair_data):
    a = TripletCrops(pair_data, crop=16, seed=1, whole_fraction=0.3).load()
    b = TripletCrops(pair_data, crop=16, seed=1, whole_fraction=0.3)  # loads on first access
    for position in (0, 5, 17, 33):
        for x, y in zip(a[position], b[position]):
            assert torch.equal(x, y)


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")])
def test_whole_fraction_must_be_a_share(pair_data, fraction):
    with pytest.raises(ValueError, match="whole_fraction must be in"):
        TripletCrops(pair_data, crop=16, whole_fraction=fraction)


def test_identical_files_are_kept_in_memory_once(pair_data):
    crops = TripletCrops(pair_data, crop=16, whole_fraction=0.5).load()
    assert crops._images is not None
    by_name = {t.name: images for t, images in zip(pair_data, crops._images)}
    # The three pairs of stack "a" share its reference; other stacks have their own.
    assert by_name["a@01-03"][2] is by_name["a@01-04"][2] is by_name["a@02-04"][2]
    assert by_name["a@01-03"][2] is not by_name["b@01-03"][2]
    assert by_name["a@01-03"][0] is not by_name["a@01-04"][0]


def test_a_triplet_mixing_sizes_or_without_reference_is_refused(tmp_path):
    root = write_triplets(tmp_path / "d", ["s"])
    io.write_image(root / "gt" / "s.png", np.zeros((20, 20, 3), np.float32), 8)
    with pytest.raises(InputError, match="mixes image sizes"):
        TripletCrops(find_triplets(root), crop=8).load()
    bare = Triplet("t", root / "under" / "s.png", root / "over" / "s.png", None)
    with pytest.raises(InputError, match="has no reference"):
        TripletCrops([bare], crop=8).load()


def test_sampling_by_sequence_visits_every_sequence_once_per_epoch(tmp_path):
    names = [f"big@{i:02d}-{j:02d}" for i in range(4) for j in range(4, 8)] + ["one@00-05"]
    names += ["two@00-05", "two@01-05"]
    triplets = find_triplets(write_triplets(tmp_path, names))
    dataset = TripletCrops(triplets, 8, seed=3, by_sequence=True)
    for epoch in range(3):
        seen = [dataset.sequence_at(epoch * 3 + k) for k in range(3)]
        assert sorted(sequence_of(triplets[i].name) for i in seen) == ["big", "one", "two"]
    # Over many epochs every pair of the big stack turns up, each about equally often.
    picks = [dataset.sequence_at(p) for p in range(3 * 400)]
    big = [i for i in picks if triplets[i].name.startswith("big")]
    counts = np.bincount(big, minlength=16)[:16]
    assert len(big) == 400 and counts.min() >= 10


def test_sampling_by_triplet_stays_the_default(tmp_path):
    names = ["big@00-05", "big@01-05", "big@02-05", "one@00-05"]
    triplets = find_triplets(write_triplets(tmp_path, names))
    plain = TripletCrops(triplets, 8, seed=3)
    assert sorted(plain.sequence_at(p) for p in range(4)) == [0, 1, 2, 3]
