"""`--resume` keeps a run's recipe, and a run started before lesionlab grew a recipe key still resumes: the
key, absent from its config.yaml, compares at its default."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lesionlab.errors import ConfigError
from lesionlab.training.recipe import load_recipe
from lesionlab.training.rundir import RunDirectory
from lesionlab.training.runner import _check_resumable

LATER_KEYS = ("teacher", "distill", "metadata", "precision")
"""Recipe keys added after the first runs were trained; an old config.yaml has none of them."""


def old_run(tmp_path: Path, overrides: tuple[str, ...] = ()) -> RunDirectory:
    """A run folder whose config.yaml was written before the keys of `LATER_KEYS` existed."""
    resolved = load_recipe(None, overrides).to_dict()
    for key in LATER_KEYS:
        resolved.pop(key)
    run = RunDirectory(tmp_path / "old-run")
    run.path.mkdir()
    run.config.write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
    return run


def test_a_config_without_later_keys_resumes_with_its_own_recipe(tmp_path: Path) -> None:
    run = old_run(tmp_path, ("seed=7", "stages.0.epochs=2"))
    _check_resumable(run, load_recipe(run.config))


def test_a_later_key_away_from_its_default_is_still_a_different_recipe(tmp_path: Path) -> None:
    run = old_run(tmp_path)
    with pytest.raises(ConfigError, match=r"config\.yaml: the recipe differs"):
        _check_resumable(run, load_recipe(None, ("precision=bf16",)))


def test_a_changed_key_is_refused(tmp_path: Path) -> None:
    run = old_run(tmp_path, ("seed=7",))
    with pytest.raises(ConfigError, match="a resumed run keeps its recipe"):
        _check_resumable(run, load_recipe(None, ("seed=8",)))


def test_a_config_lesionlab_no_longer_reads_is_named(tmp_path: Path) -> None:
    run = old_run(tmp_path)
    raw = yaml.safe_load(run.config.read_text(encoding="utf-8"))
    run.config.write_text(yaml.safe_dump({**raw, "retired_key": 1}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"config\.yaml: this run's recipe no longer reads.*retired_key"):
        _check_resumable(run, load_recipe(None))
