"""Splits keep every lesion in one part, keep class shares, repeat byte for byte, and refuse foreign data."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lesionlab.data.readers import read_dataset
from lesionlab.data.readers.samples import Sample, SampleTable, class_counts
from lesionlab.data.split import PARTS, make_split, read_split, shared_lesions, write_split
from lesionlab.errors import ConfigError, DataError

HAM_LIKE_SHARES = (0.033, 0.051, 0.110, 0.011, 0.111, 0.670, 0.014)


def synthetic_table(images: int = 3000, seed: int = 1) -> SampleTable:
    """A HAM10000-shaped table (class shares, 1..4 images per lesion) with no files behind it."""
    rng = np.random.default_rng(seed)
    samples: list[Sample] = []
    lesion = 0
    while len(samples) < images:
        label = int(rng.choice(7, p=np.asarray(HAM_LIKE_SHARES) / sum(HAM_LIKE_SHARES)))
        for _ in range(int(rng.integers(1, 5))):
            samples.append(
                Sample(f"img{len(samples):05d}", f"/none/{len(samples)}.jpg", label, f"L{lesion}", "test")
            )
        lesion += 1
    return SampleTable(samples, Path("/none"), "ham10000", "f" * 64)


def max_share_gap(split_samples: list[Sample], all_samples: list[Sample]) -> float:
    part_shares = np.asarray(class_counts(split_samples)) / len(split_samples)
    whole_shares = np.asarray(class_counts(all_samples)) / len(all_samples)
    return float(np.abs(part_shares - whole_shares).max())


def test_lesions_never_cross_parts_and_shares_stay_within_two_points() -> None:
    table = synthetic_table()
    split = make_split(table, val=0.15, test=0.15, seed=0)
    assert shared_lesions(split) == set()
    assert sum(len(samples) for samples in split.parts.values()) == len(table)
    for part in PARTS:
        assert max_share_gap(split.parts[part], table.samples) < 0.02, part
    assert abs(len(split.parts["test"]) / len(table) - 0.15) < 0.01


def test_same_seed_gives_identical_file_and_other_seed_differs(tmp_path: Path) -> None:
    table = synthetic_table(images=600)
    write_split(tmp_path / "a.csv", make_split(table, 0.2, 0.1, seed=3))
    write_split(tmp_path / "b.csv", make_split(table, 0.2, 0.1, seed=3))
    write_split(tmp_path / "c.csv", make_split(table, 0.2, 0.1, seed=4))
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert (tmp_path / "a.csv").read_bytes() != (tmp_path / "c.csv").read_bytes()
    assert (
        (tmp_path / "a.csv")
        .read_text()
        .startswith(
            f"# lesionlab-split v2 fingerprint={'f' * 64} seed=3 "
            "group=lesion\nimage_id,label,class,lesion_id,part\n"
        )
    )


def test_group_none_splits_by_image_and_warns() -> None:
    table = synthetic_table(images=600)
    with pytest.warns(UserWarning, match="leak|optimistic"):
        split = make_split(table, 0.15, 0.15, seed=0, group="none")
    assert split.group == "none"
    assert shared_lesions(split), "an image-level split of multi-image lesions should share some lesions"


def test_zero_test_fraction_leaves_test_empty() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split = make_split(synthetic_table(images=300), val=0.2, test=0.0, seed=0)
    assert split.parts["test"] == [] and split.parts["val"]


@pytest.mark.parametrize(("val", "test"), [(0.5, 0.5), (-0.1, 0.2)])
def test_impossible_fractions_are_refused(val: float, test: float) -> None:
    with pytest.raises(ConfigError, match="leave a training part"):
        make_split(synthetic_table(images=50), val, test, seed=0)


def test_dataset_with_its_own_parts_keeps_them() -> None:
    samples = [
        Sample(f"{part}_{index}", f"/d.npz#{part}/{index}", index % 7, None, "medmnist", part)
        for part in PARTS
        for index in range(4)
    ]
    split = make_split(SampleTable(samples, Path("/"), "medmnist", "a" * 64), 0.15, 0.15, seed=0)
    assert split.group == "dataset"
    assert {part: [sample.image_id for sample in rows] for part, rows in split.parts.items()} == {
        part: [f"{part}_{index}" for index in range(4)] for part in PARTS
    }


def test_round_trip_through_the_file(tiny_ham_dataset: Callable[..., Path], tmp_path: Path) -> None:
    table = read_dataset(tiny_ham_dataset(images_per_class=6))
    split = make_split(table, 0.2, 0.2, seed=0)
    write_split(tmp_path / "split.csv", split)
    again = read_split(tmp_path / "split.csv", table)
    assert (again.fingerprint, again.seed, again.group) == (table.fingerprint, 0, "lesion")
    assert {part: {s.image_id for s in rows} for part, rows in again.parts.items()} == {
        part: {s.image_id for s in rows} for part, rows in split.parts.items()
    }


def test_reading_against_other_data_names_the_fingerprints(
    tiny_ham_dataset: Callable[..., Path], tmp_path: Path
) -> None:
    first = read_dataset(tiny_ham_dataset(images_per_class=3, seed=0))
    other = read_dataset(tiny_ham_dataset(images_per_class=4, seed=1))
    write_split(tmp_path / "split.csv", make_split(first, 0.2, 0.2, seed=0))
    with pytest.raises(
        DataError, match=rf"split\.csv: made for a dataset with fingerprint {first.fingerprint[:16]}"
    ):
        read_split(tmp_path / "split.csv", other)


def test_reading_with_missing_image_files_lists_them(
    tiny_ham_dataset: Callable[..., Path], tmp_path: Path
) -> None:
    table = read_dataset(tiny_ham_dataset(images_per_class=3))
    write_split(tmp_path / "split.csv", make_split(table, 0.2, 0.2, seed=0))
    gone = Path(table.samples[0].path)
    gone.unlink()
    with pytest.raises(DataError, match=rf"1 image file\(s\) of this split are missing:\n  .*{gone.name}"):
        read_split(tmp_path / "split.csv", table)


def test_file_that_is_not_a_split_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("image_id,part\na,train\n")
    with pytest.raises(DataError, match=r"x\.csv: not a lesionlab split file"):
        read_split(tmp_path / "x.csv", synthetic_table(images=10))
