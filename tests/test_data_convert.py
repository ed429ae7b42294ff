"""Converting to the reference's layout writes grayscale squares that read back with the same labels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from lesionlab.data.convert import convert_to_prefix_gray, prefix_file_name
from lesionlab.data.readers import read_dataset
from lesionlab.data.readers.samples import Sample
from lesionlab.errors import DataError


def test_ham_converts_to_prefix_layout_and_reads_back(
    tiny_ham_dataset: Callable[..., Path], tmp_path: Path
) -> None:
    source = read_dataset(tiny_ham_dataset(images_per_class=2))
    result = convert_to_prefix_gray(source, tmp_path / "out", size=24, progress=False)
    assert result.written == len(source) and result.per_class == [2] * 7
    converted = read_dataset(tmp_path / "out")
    assert converted.format == "prefix"
    assert {(s.image_id, s.label) for s in converted.samples} == {
        (s.image_id, s.label) for s in source.samples
    }
    with Image.open(tmp_path / "out" / "5_ISIC_4000001.png") as written:
        assert (written.mode, written.size) == ("L", (24, 24))
    assert not list((tmp_path / "out").glob(".*"))


def test_file_names_use_one_based_digits_and_safe_characters() -> None:
    assert prefix_file_name(Sample("ISIC_1", "x.jpg", 0, None, "ham10000")) == "1_ISIC_1.png"
    assert prefix_file_name(Sample("train/7 a", "x.npz#train/7", 6, None, "medmnist")) == "7_train_7_a.png"


def test_clashing_output_names_are_refused(tmp_path: Path) -> None:
    (tmp_path / "nv").mkdir()
    (tmp_path / "mel").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "nv" / "a b.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "nv" / "a_b.png")
    with pytest.raises(DataError, match="collide as output file names"):
        convert_to_prefix_gray(read_dataset(tmp_path), tmp_path / "out", progress=False)
