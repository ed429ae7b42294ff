"""`lesionlab data inspect|split|convert` through the real CLI entry point."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from lesionlab.cli import main
from lesionlab.data.readers import read_dataset
from lesionlab.data.split import read_split


def test_inspect_reports_classes_lesions_and_sizes(
    tiny_ham_dataset: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root = tiny_ham_dataset(images_per_class=4, images_per_lesion=2, size=(40, 30))
    assert main(["data", "inspect", str(root)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["akiec"] == ["4", "14.3%", "2"]
    assert rows["total"] == ["28", "100.0%", "14"]
    assert "40x30 (28)" in out
    assert "28 ok, 0 problem(s)" in out


def test_inspect_fails_on_a_corrupt_image_and_names_it(
    tiny_ham_dataset: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root = tiny_ham_dataset(images_per_class=2)
    corrupt = root / "images" / "ISIC_2000001.jpg"
    corrupt.write_bytes(corrupt.read_bytes()[:100])
    (root / "images" / "ISIC_6000000.jpg").unlink()
    assert main(["data", "inspect", str(root)]) != 0
    out = capsys.readouterr().out
    assert f"{corrupt}: cannot decode image" in out
    assert "ISIC_6000000: listed in" in out
    assert "12 ok, 2 problem(s)" in out
    assert main(["data", "inspect", str(root), "--skip-bad"]) == 0


def test_inspect_json_is_machine_readable(
    tiny_ham_dataset: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "inspect", str(tiny_ham_dataset(images_per_class=1)), "--json", "--no-decode"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 7 and report["format"] == "ham10000" and report["decoded"] is False
    assert [row["images"] for row in report["classes"]] == [1] * 7


def test_split_writes_a_readable_file_and_a_summary(
    tiny_ham_dataset: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tiny_ham_dataset(images_per_class=10)
    out = tmp_path / "split.csv"
    assert (
        main(["data", "split", str(root), "--val", "0.2", "--test", "0.2", "--seed", "1", "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "lesions shared between parts: 0" in printed
    split = read_split(out, read_dataset(root))
    assert (split.seed, split.group) == (1, "lesion")
    assert sum(len(samples) for samples in split.parts.values()) == 70


def test_split_by_image_warns_loudly(
    tiny_ham_dataset: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tiny_ham_dataset(images_per_class=4)
    assert main(["data", "split", str(root), "--group", "none", "--out", str(tmp_path / "s.csv")]) == 0
    assert "WARNING: group='none' splits by image" in capsys.readouterr().err


def test_convert_writes_the_reference_layout(tiny_ham_dataset: Callable[..., Path], tmp_path: Path) -> None:
    root = tiny_ham_dataset(images_per_class=1)
    assert (
        main(["data", "convert", str(root), "--to", "prefix-gray", str(tmp_path / "gray"), "--size", "20"])
        == 0
    )
    assert sorted(path.name[0] for path in (tmp_path / "gray").iterdir()) == list("1234567")


def test_user_errors_exit_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "inspect", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such file or folder" in capsys.readouterr().err
