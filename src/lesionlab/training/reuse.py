"""Run folders that a multi-run command (`lesionlab study`, `lesionlab cv`) trains into and reruns: each is
trained when new, resumed when an earlier attempt stopped, and skipped when finished, but only after its
recipe and split are checked to be the ones the command would give it. Otherwise a finished run copied in,
or left by another study file or fold count, would be compared on something other than its table states.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lesionlab.data.readers.samples import SampleTable
from lesionlab.data.split import Split, read_split
from lesionlab.errors import ConfigError
from lesionlab.run_json import RUN_JSON, read_run_json
from lesionlab.training.recipe import Recipe, load_recipe
from lesionlab.training.rundir import RunDirectory
from lesionlab.training.runner import train_run

log = logging.getLogger("lesionlab.training")


def run_status(run_dir: Path) -> str | None:
    """The run's recorded status (`finished`, `stopped`, ...), or None when it was never started."""
    return read_run_json(run_dir).get("status") if (run_dir / RUN_JSON).is_file() else None


def check_run_matches(run_dir: Path, name: str, recipe: Recipe, table: SampleTable, split: Split,
                      how: str) -> None:
    """A finished run belongs where it lies only with the recipe and the split it is meant to have; `how`
    says how to train it with them, for the error."""
    trained = load_recipe(RunDirectory(run_dir).config).to_dict()
    expected = recipe.to_dict()
    differing = [key for key in expected if trained.get(key) != expected[key]]
    if differing:
        raise ConfigError(f"{run_dir}/config.yaml: run {name} was trained with another recipe than the "
                          f"one given here ({', '.join(differing)} differ); {how}, or move the folder away "
                          f"to retrain it.")
    member = read_split(RunDirectory(run_dir).split, table)
    for part, samples in split.parts.items():
        if {sample.image_id for sample in member.parts.get(part, [])} != {s.image_id for s in samples}:
            raise ConfigError(f"{run_dir}/split.csv: run {name} was trained on another split than the one "
                              f"given here ({part} part differs); {how}, or move the folder away to "
                              f"retrain it.")


def train_or_reuse(name: str, recipe: Recipe, table: SampleTable, split: Split, run_dir: Path,
                   how: str) -> None:
    """Train a run unless it finished before; continue it where an earlier attempt stopped.

    A finished run is kept only after `check_run_matches` accepts its recipe and split. Any run with a
    run.json is resumed, also one stopped before its first epoch ended: resuming such a run starts it from
    its first epoch in its own folder, where starting it as new would refuse the folder.
    """
    status = run_status(run_dir)
    if status == "finished":
        check_run_matches(run_dir, name, recipe, table, split, how)
        log.info("%s: already trained, skipped", name)
        return
    train_run(recipe, table, split, run_dir, resume=status is not None)
