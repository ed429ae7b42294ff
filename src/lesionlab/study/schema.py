"""The study file: its keys, the runs and ensembles it names, and how it is read and checked."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lesionlab.errors import ConfigError
from lesionlab.training.recipe import load_recipe, resolve_config_path, shipped_config_names
from lesionlab.views import DEFAULT_VIEWS

STUDY_KEYS = frozenset(
    {"name", "description", "base", "set", "stages", "split", "evaluate", "runs", "ensembles"}
)
RUN_KEYS = frozenset({"name", "label", "base", "set", "stages", "note"})
ENSEMBLE_KEYS = frozenset({"name", "label", "members"})
EVALUATE_KEYS = frozenset({"tta", "stages_separately", "decisions"})
CLASS_OFFSETS = "class-offsets"
LESION_MEAN = "lesion-mean"
DECISIONS = (CLASS_OFFSETS, LESION_MEAN)
DECISION_LABELS = {CLASS_OFFSETS: "class offsets", LESION_MEAN: "lesion mean"}
DECISION_NOTES = {
    CLASS_OFFSETS: "class offsets fitted on val (its val column is out of fold)",
    LESION_MEAN: "lesion-level: the probabilities of a lesion's images averaged",
}


@dataclass(frozen=True)
class StudyRun:
    """One recipe of a study: a base recipe plus overrides."""

    name: str
    label: str
    base: str
    overrides: tuple[str, ...]
    note: str = ""


@dataclass(frozen=True)
class Ensemble:
    """Finished runs whose test probabilities are averaged."""

    name: str
    label: str
    members: tuple[str, ...]


@dataclass(frozen=True)
class Study:
    """A parsed study file."""

    name: str
    description: str
    split: dict[str, Any]
    stages_separately: bool
    tta: bool
    runs: tuple[StudyRun, ...]
    ensembles: tuple[Ensemble, ...] = field(default=())
    decisions: tuple[str, ...] = field(default=())


def _unknown(keys: set[str], allowed: frozenset[str], where: str) -> None:
    extra = sorted(keys - allowed)
    if extra:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}"
        )


def _one_line(value: Any) -> str:
    """A value as one line of flow-style YAML, so an override is one `--set` word of one printed command.

    A plain scalar is dumped as a document with an explicit end marker (`1\n...`); the marker is dropped, or
    the printed command would carry a line break inside its quotes.
    """
    dumped = yaml.safe_dump(value, default_flow_style=True, width=sys.maxsize)
    return dumped.removesuffix("...\n").strip()


def _overrides(entry: dict[str, Any], where: str) -> list[str]:
    """`set:` as `key=value` strings or a mapping, plus `stages:` as one override of the whole list."""
    raw_set = entry.get("set") or []
    if isinstance(raw_set, dict):
        overrides = [
            f"{key}={_one_line(value)}"
            for key, value in raw_set.items()
        ]
    elif isinstance(raw_set, list) and all(isinstance(item, str) for item in raw_set):
        overrides = list(raw_set)
    else:
        raise ConfigError(f"{where}: 'set' must be a list of key=value strings or a mapping")
    if "stages" in entry:
        overrides.append("stages=" + _one_line(entry["stages"]))
    return overrides


def load_study(path: str | Path) -> Study:
    """Read and check a study file; each run's recipe is resolved here so a typo fails before training."""
    path = resolve_config_path(path)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError as error:
        raise ConfigError(f"{path}: study file not found; pass a path or one of the shipped names: "
                          f"{', '.join(shipped_config_names())}.") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(raw, dict) or not raw.get("runs"):
        raise ConfigError(f"{path}: a study needs a 'runs' list")
    _unknown(set(raw), STUDY_KEYS, str(path))
    shared = _overrides(raw, f"{path}")
    base = str(raw.get("base", "default"))
    runs = []
    for index, entry in enumerate(raw["runs"]):
        where = f"{path}: runs[{index}]"
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"{where}: each run needs a 'name'")
        _unknown(set(entry), RUN_KEYS, where)
        run = StudyRun(
            name=str(entry["name"]),
            label=str(entry.get("label", entry["name"])),
            base=str(entry.get("base", base)),
            overrides=(*shared, *_overrides(entry, where)),
            note=str(entry.get("note", "")),
        )
        load_recipe(run.base, run.overrides)
        runs.append(run)
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: run names must be unique")
    ensembles = []
    for index, entry in enumerate(raw.get("ensembles") or []):
        where = f"{path}: ensembles[{index}]"
        _unknown(set(entry), ENSEMBLE_KEYS, where)
        members = tuple(str(member) for member in entry.get("members", ()))
        if len(members) < 2 or not set(members) <= set(names):
            raise ConfigError(
                f"{where}: 'members' must list at least two of the study's runs ({', '.join(names)})"
            )
        ensembles.append(Ensemble(str(entry["name"]), str(entry.get("label", entry["name"])), members))
    evaluate = raw.get("evaluate") or {}
    _unknown(set(evaluate), EVALUATE_KEYS, f"{path}: evaluate")
    decisions = tuple(str(rule) for rule in evaluate.get("decisions") or ())
    if not set(decisions) <= set(DECISIONS):
        raise ConfigError(
            f"{path}: evaluate.decisions takes {', '.join(DECISIONS)}, not {', '.join(decisions)}"
        )
    if decisions and not ensembles:
        raise ConfigError(f"{path}: evaluate.decisions applies to ensembles; the study lists none")
    return Study(
        name=str(raw.get("name", Path(path).stem)),
        description=str(raw.get("description", "")),
        split={"val": 0.15, "test": 0.15, "seed": 0, "group": "lesion", **(raw.get("split") or {})},
        stages_separately=bool(evaluate.get("stages_separately", False)),
        tta=bool(evaluate.get("tta", False)),
        runs=tuple(runs),
        ensembles=tuple(ensembles),
        decisions=decisions,
    )


def views(study: Study) -> tuple[str, ...] | None:
    """The test-time augmentation views a study evaluates with (None: no TTA)."""
    return DEFAULT_VIEWS if study.tta else None
