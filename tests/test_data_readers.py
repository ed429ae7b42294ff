"""Every dataset layout reads into the same SampleTable; every malformed input fails naming file and row."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lesionlab.classes import CLASS_CODES
from lesionlab.data.imageio import load_rgb
from lesionlab.data.readers import locate, read_dataset
from lesionlab.data.readers.locate import DATA_ENV, resolve_data_path
from lesionlab.data.readers.samples import class_counts
from lesionlab.errors import DataError

ISIC_HEADER = ("image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")


def write_image(path: Path, shade: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 9), (shade, 50, 200 - shade)).save(path)
    return path


def write_csv(path: Path, header: tuple[str, ...], rows: list[tuple[object, ...]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def one_hot_row(image_id: str, code: str) -> tuple[object, ...]:
    return (image_id, *("1.0" if column.lower() == code else "0.0" for column in ISIC_HEADER[1:]))


def write_isic(folder: Path, codes: list[str], image_folder: str = "images", metadata: bool = True) -> Path:
    """ISIC layout: `Task_GroundTruth.csv`, images in `image_folder`, optional `Task_metadata.csv`."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"ISIC_{index:07d}" for index in range(len(codes))]
    for image_id in ids:
        write_image(folder / image_folder / f"{image_id}.jpg")
    ground_truth = write_csv(
        folder / "Task_GroundTruth.csv",
        ISIC_HEADER,
        [one_hot_row(image_id, code) for image_id, code in zip(ids, codes, strict=True)],
    )
    if metadata:
        write_csv(
            folder / "Task_metadata.csv",
            ("image_id", "lesion_id", "dx"),
            [
                (image_id, f"IL_{index // 2}", code)
                for index, (image_id, code) in enumerate(zip(ids, codes, strict=True))
            ],
        )
    return ground_truth


def test_ham_layout_reads_labels_lesions_and_ignores_other_images(
    tiny_ham_dataset: Callable[..., Path],
) -> None:
    root = tiny_ham_dataset(images_per_class=4, images_per_lesion=2)
    write_image(root / "images" / "ISIC_9999999.jpg")
    table = read_dataset(root)
    assert table.format == "ham10000"
    assert len(table) == 28
    assert class_counts(table.samples) == [4] * 7
    assert len({sample.lesion_id for sample in table.samples}) == 14
    first = next(sample for sample in table.samples if sample.image_id == "ISIC_3000001")
    assert (first.code, first.lesion_id, first.source) == ("df", "HAM_3000000", "ham10000")
    assert Path(first.path).is_file()
    assert read_dataset(root / "HAM10000_metadata.csv").fingerprint == table.fingerprint


def test_ham_layout_finds_images_in_both_part_folders(tiny_ham_dataset: Callable[..., Path]) -> None:
    root = tiny_ham_dataset(images_per_class=2, split_folders=True)
    table = read_dataset(root)
    folders = {Path(sample.path).parent.name for sample in table.samples}
    assert folders == {"HAM10000_images_part_1", "HAM10000_images_part_2"}
    assert len(table) == 14


def test_ham_class_codes_are_case_insensitive(tmp_path: Path) -> None:
    write_image(tmp_path / "a.jpg")
    write_csv(tmp_path / "HAM10000_metadata.csv", ("lesion_id", "image_id", "dx"), [("L1", "a", " MEL ")])
    assert read_dataset(tmp_path).samples[0].code == "mel"


def test_unknown_label_names_file_and_row(tmp_path: Path) -> None:
    write_image(tmp_path / "a.jpg")
    write_image(tmp_path / "b.jpg")
    write_csv(
        tmp_path / "HAM10000_metadata.csv",
        ("lesion_id", "image_id", "dx"),
        [("L1", "a", "nv"), ("L2", "b", "scc")],
    )
    with pytest.raises(DataError, match=r"HAM10000_metadata\.csv: row 3 .*unknown class 'scc'"):
        read_dataset(tmp_path)


def test_missing_csv_column_names_file_and_column(tmp_path: Path) -> None:
    write_image(tmp_path / "a.jpg")
    write_csv(tmp_path / "HAM10000_metadata.csv", ("image_id", "dx"), [("a", "nv")])
    with pytest.raises(DataError, match=r"HAM10000_metadata\.csv: missing column\(s\) lesion_id"):
        read_dataset(tmp_path)


def test_missing_image_is_an_error_unless_skipped(tiny_ham_dataset: Callable[..., Path]) -> None:
    root = tiny_ham_dataset(images_per_class=2)
    (root / "images" / "ISIC_5000001.jpg").unlink()
    with pytest.raises(DataError, match=r"1 image\(s\) .* missing:\n  ISIC_5000001: listed in .* row"):
        read_dataset(root)
    table = read_dataset(root, skip_missing=True)
    assert len(table) == 13
    assert len(table.missing) == 1 and table.missing[0].startswith("ISIC_5000001:")


def test_duplicate_image_id_is_an_error(tmp_path: Path) -> None:
    write_image(tmp_path / "a.jpg")
    write_csv(
        tmp_path / "HAM10000_metadata.csv",
        ("lesion_id", "image_id", "dx"),
        [("L1", "a", "nv"), ("L1", "a", "nv")],
    )
    with pytest.raises(DataError, match="row 3: image id 'a' appears twice"):
        read_dataset(tmp_path)


def test_isic_csv_path_finds_images_and_lesion_ids(tmp_path: Path) -> None:
    ground_truth = write_isic(tmp_path, ["nv", "mel", "mel", "bcc"])
    write_image(tmp_path / "images" / "ISIC_8888888.jpg")
    table = read_dataset(ground_truth)
    assert table.format == "isic"
    assert [sample.code for sample in table.samples] == ["nv", "mel", "mel", "bcc"]
    assert [sample.lesion_id for sample in table.samples] == ["IL_0", "IL_0", "IL_1", "IL_1"]
    assert read_dataset(tmp_path).fingerprint == table.fingerprint


@pytest.mark.parametrize("image_folder", [".", "Task_GroundTruth", "Task_Input"])
def test_isic_images_beside_csv_or_in_folder_named_like_it(tmp_path: Path, image_folder: str) -> None:
    ground_truth = write_isic(tmp_path, ["df", "vasc"], image_folder=image_folder, metadata=False)
    table = read_dataset(ground_truth)
    assert [sample.code for sample in table.samples] == ["df", "vasc"]
    assert all(sample.lesion_id is None for sample in table.samples)


def test_isic_row_that_is_not_one_hot_names_the_row(tmp_path: Path) -> None:
    ground_truth = write_isic(tmp_path, ["nv", "nv"], metadata=False)
    rows = list(csv.reader(ground_truth.open()))
    rows[2][1] = "1.0"
    write_csv(ground_truth, tuple(rows[0]), [tuple(row) for row in rows[1:]])
    with pytest.raises(
        DataError, match=r"Task_GroundTruth\.csv: row 3 \(image ISIC_0000001\): expected exactly one 1"
    ):
        read_dataset(ground_truth)


def test_isic_missing_class_column_is_named(tmp_path: Path) -> None:
    write_image(tmp_path / "ISIC_1.jpg")
    ground_truth = write_csv(
        tmp_path / "gt.csv",
        ("image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF"),
        [("ISIC_1", 1, 0, 0, 0, 0, 0)],
    )
    with pytest.raises(DataError, match=r"gt\.csv: missing column\(s\) vasc"):
        read_dataset(ground_truth, fmt="isic")


def test_prefix_layout_reads_class_digit(tmp_path: Path) -> None:
    for name in ("1_abc_12.png", "7_x.png", "5_ISIC_1.png"):
        write_image(tmp_path / name)
    table = read_dataset(tmp_path)
    assert table.format == "prefix"
    assert {sample.image_id: sample.code for sample in table.samples} == {
        "abc_12": "akiec",
        "x": "vasc",
        "ISIC_1": "mel",
    }


def test_prefix_file_without_class_digit_is_named(tmp_path: Path) -> None:
    write_image(tmp_path / "1_a.png")
    write_image(tmp_path / "8_b.png")
    with pytest.raises(DataError, match=r"8_b\.png: file name does not start with a class digit"):
        read_dataset(tmp_path, fmt="prefix")


def test_class_folders_are_case_insensitive(tmp_path: Path) -> None:
    write_image(tmp_path / "AKIEC" / "a.jpg")
    write_image(tmp_path / "Nv" / "b.png")
    write_image(tmp_path / "nv" / ".hidden.png")
    table = read_dataset(tmp_path)
    assert table.format == "folders"
    assert sorted((sample.image_id, sample.code) for sample in table.samples) == [("a", "akiec"), ("b", "nv")]


def test_unknown_class_folder_is_named(tmp_path: Path) -> None:
    write_image(tmp_path / "nv" / "a.jpg")
    write_image(tmp_path / "scc" / "b.jpg")
    with pytest.raises(DataError, match=r"scc: folder name: unknown class 'scc'"):
        read_dataset(tmp_path)


@pytest.mark.parametrize(("image_shape", "label_shape"), [((28, 28), (-1, 1)), ((64, 64, 3), (-1,))])
def test_medmnist_keeps_its_parts_and_decodes(
    tmp_path: Path, image_shape: tuple[int, ...], label_shape: tuple[int, ...]
) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for part, count in (("train", 5), ("val", 2), ("test", 3)):
        arrays[f"{part}_images"] = rng.integers(0, 256, size=(count, *image_shape), dtype=np.uint8)
        arrays[f"{part}_labels"] = (np.arange(count) % 7).reshape(label_shape)
    archive = tmp_path / "dermamnist.npz"
    np.savez(archive, **arrays)
    table = read_dataset(tmp_path)
    assert table.format == "medmnist"
    assert [sample.part for sample in table.samples] == ["train"] * 5 + ["val"] * 2 + ["test"] * 3
    sample = table.samples[6]
    assert (sample.image_id, sample.path, sample.code) == ("val_1", f"{archive}#val/1", "bcc")
    image = load_rgb(sample.path)
    assert image.mode == "RGB" and image.size == (image_shape[1], image_shape[0])
    expected = arrays["val_images"][1]
    assert np.array_equal(np.asarray(image)[..., 0], expected if expected.ndim == 2 else expected[..., 0])


def test_medmnist_bad_label_is_named(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", train_images=np.zeros((2, 28, 28), np.uint8), train_labels=np.array([0, 9]))
    with pytest.raises(DataError, match=r"d\.npz: 'train_labels'\[1\] = 9 is not a class label"):
        read_dataset(tmp_path / "d.npz")


def test_format_override_and_unknown_layout(tmp_path: Path) -> None:
    write_image(tmp_path / "1_a.png")
    assert read_dataset(tmp_path, fmt="PREFIX").format == "prefix"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no dataset layout recognised"):
        read_dataset(empty)
    with pytest.raises(DataError, match="unknown dataset format 'nifti'"):
        read_dataset(tmp_path, fmt="nifti")


def test_resolve_data_path_prefers_explicit_then_env_then_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    explicit, from_env, shared = (tmp_path / name for name in ("explicit", "env", "shared"))
    for folder in (explicit, from_env, shared):
        folder.mkdir()
    monkeypatch.setattr(locate, "default_data_candidates", lambda: [shared])
    monkeypatch.setenv(DATA_ENV, str(from_env))
    assert resolve_data_path(explicit) == explicit.resolve()
    assert resolve_data_path() == from_env.resolve()
    monkeypatch.delenv(DATA_ENV)
    assert resolve_data_path() == shared.resolve()


def test_resolve_data_path_explains_how_to_get_ham10000(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setattr(locate, "default_data_candidates", lambda: [tmp_path / "nowhere"])
    with pytest.raises(DataError, match=r"doi:10\.7910/DVN/DBW86T.*--data FOLDER.*LESIONLAB_DATA"):
        resolve_data_path()
    with pytest.raises(DataError, match="no such file or folder"):
        resolve_data_path(tmp_path / "missing")


def test_fingerprint_changes_with_labels(tiny_ham_dataset: Callable[..., Path]) -> None:
    root = tiny_ham_dataset(images_per_class=2)
    before = read_dataset(root).fingerprint
    metadata = root / "HAM10000_metadata.csv"
    metadata.write_text(metadata.read_text().replace(f",{CLASS_CODES[0]},", f",{CLASS_CODES[1]},", 1))
    assert read_dataset(root).fingerprint != before
