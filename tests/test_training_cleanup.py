"""A new run that fails on bad data removes what it created, and nothing else; a resumable run is kept."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lesionlab.data.readers import read_dataset
from lesionlab.data.readers.samples import SampleTable
from lesionlab.data.split import Split, make_split, write_split
from lesionlab.errors import DataError
from lesionlab.training.recipe import Recipe, load_recipe
from lesionlab.training.rundir import RunDirectory
from lesionlab.training.runner import train_run


def recipe() -> Recipe:
    return load_recipe(None, ["arch=small_cnn", "pretrained=none", "image_size=32", "workers=0",
                              "channels_last=false", "device=cpu"])


@pytest.fixture
def bad_data(tiny_ham_dataset: Callable[..., Path], tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> tuple[SampleTable, Split, Path]:
    """A tiny dataset whose first image is an empty file, and its split."""
    monkeypatch.setenv("LESIONLAB_CACHE", str(tmp_path / "cache"))
    root = tiny_ham_dataset(images_per_class=4, images_per_lesion=1, size=(32, 32))
    empty = sorted((root / "images").glob("*.jpg"))[0]
    empty.write_bytes(b"")
    table = read_dataset(root)
    return table, make_split(table, val=0.25, test=0.0, seed=0), empty


def test_a_new_run_that_fails_on_bad_data_leaves_no_folder(bad_data: tuple[SampleTable, Split, Path],
                                                           tmp_path: Path) -> None:
    table, split, empty = bad_data
    run_dir = tmp_path / "runs" / "bad"
    with pytest.raises(DataError, match=f"{empty.name}.*empty file"):
        train_run(recipe(), table, split, run_dir)
    assert not run_dir.exists()
    assert (tmp_path / "runs").is_dir(), "only the run's own folder goes"


def test_a_folder_the_run_did_not_create_keeps_everything_else(bad_data: tuple[SampleTable, Split, Path],
                                                               tmp_path: Path) -> None:
    table, split, _ = bad_data
    run_dir = tmp_path / "runs" / "given"
    run_dir.mkdir(parents=True)
    (run_dir / "notes.txt").write_text("mine\n")
    with pytest.raises(DataError):
        train_run(recipe(), table, split, run_dir)
    assert sorted(path.name for path in run_dir.iterdir()) == ["notes.txt"]


def test_a_resumed_run_that_fails_is_never_removed(bad_data: tuple[SampleTable, Split, Path],
                                                   tmp_path: Path) -> None:
    table, split, _ = bad_data
    run = RunDirectory(tmp_path / "runs" / "resumable")
    run.path.mkdir(parents=True)
    run.config.write_text(recipe().to_yaml())
    write_split(run.split, split)
    run.run_json.write_text('{"sessions": []}\n')
    run.state_tensors.write_bytes(b"committed state")
    before = sorted(path.name for path in run.path.iterdir())
    with pytest.raises(DataError):
        train_run(recipe(), table, split, run.path, resume=True)
    assert set(before) <= {path.name for path in run.path.iterdir()}
    assert run.state_tensors.read_bytes() == b"committed state"


def test_remove_new_run_never_touches_a_committed_run(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    run.state_tensors.write_bytes(b"committed state")
    run.remove_new_run(created_folder=True)
    assert run.state_tensors.is_file()
