"""A split's order is part of the split: the file keeps each part's order, so every session trains alike.

The seeded sampler draws positions in a part, so the same images in another order are other draws. These
tests pin the contract that makes a fresh run, a resumed one and a rerun from `split.csv` identical.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lesionlab.data.readers import read_dataset
from lesionlab.data.readers.samples import SampleTable
from lesionlab.data.split import PARTS, Split, make_split, read_split, write_split


def image_ids(split: Split) -> dict[str, list[str]]:
    return {part: [sample.image_id for sample in split.parts[part]] for part in PARTS}


def shuffled_table(tiny_ham_dataset: Callable[..., Path]) -> SampleTable:
    """A dataset whose own order is not image-id order (as HAM10000's CSV and class folders are not)."""
    table = read_dataset(tiny_ham_dataset(images_per_class=6, images_per_lesion=1))
    samples = sorted(table.samples, key=lambda sample: sample.image_id[::-1])
    assert [s.image_id for s in samples] != sorted(s.image_id for s in samples)
    return SampleTable(samples, table.root, table.format, table.fingerprint)


def test_the_file_gives_back_the_order_it_was_written_in(tiny_ham_dataset: Callable[..., Path],
                                                         tmp_path: Path) -> None:
    table = shuffled_table(tiny_ham_dataset)
    made = make_split(table, val=0.2, test=0.2, seed=0)
    write_split(tmp_path / "split.csv", made)
    assert image_ids(read_split(tmp_path / "split.csv", table)) == image_ids(made)


def test_a_version_1_file_reads_back_in_the_dataset_order_its_run_trained_on(
        tiny_ham_dataset: Callable[..., Path], tmp_path: Path) -> None:
    """Version 1 wrote rows sorted by image id, while its runs trained on `make_split`'s (dataset) order."""
    table = shuffled_table(tiny_ham_dataset)
    made = make_split(table, val=0.2, test=0.2, seed=0)
    lines = [f"# lesionlab-split v1 fingerprint={table.fingerprint} seed=0 group=lesion",
             "image_id,label,class,lesion_id,part"]
    for part in PARTS:
        for sample in sorted(made.parts[part], key=lambda row: row.image_id):
            lines.append(f"{sample.image_id},{sample.label},{sample.code},{sample.lesion_id},{part}")
    (tmp_path / "v1.csv").write_text("\n".join(lines) + "\n")
    assert image_ids(read_split(tmp_path / "v1.csv", table)) == image_ids(made)


def test_the_file_does_not_depend_on_how_the_dataset_lists_its_images(
        tiny_ham_dataset: Callable[..., Path], tmp_path: Path) -> None:
    """Read against the same data listed in another order, the file still gives its own order."""
    table = shuffled_table(tiny_ham_dataset)
    write_split(tmp_path / "split.csv", make_split(table, val=0.2, test=0.2, seed=0))
    relisted = SampleTable(list(reversed(table.samples)), table.root, table.format, table.fingerprint)
    assert image_ids(read_split(tmp_path / "split.csv", relisted)) == image_ids(
        read_split(tmp_path / "split.csv", table))
