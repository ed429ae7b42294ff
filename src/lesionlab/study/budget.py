"""A study's budget: what it was shrunk to so it fits a machine, and the recipe keys it overrides in every
run, applied to each recipe and recorded so a resumed study never mixes budgets."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lesionlab.errors import ConfigError
from lesionlab.io_utils import atomic_write_json
from lesionlab.study.schema import StudyRun
from lesionlab.training.recipe import Recipe, load_recipe, scale_epochs


@dataclass(frozen=True)
class Budget:
    """What a study was shrunk to so it fits a machine, and the `--set` overrides it gives every run (e.g. to
    rerun an older study with a key the default has since gained switched off): stated in every table it
    produces."""

    image_size: int | None = None
    epochs_scale: float = 1.0
    subset: int | None = None
    overrides: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = [
            f"image size {self.image_size} px" if self.image_size else "each recipe's image size",
            f"epochs x{self.epochs_scale:g}",
            f"subset of about {self.subset} images" if self.subset else "the whole dataset",
        ]
        if self.overrides:
            parts.append("every run with " + ", ".join(self.overrides))
        return ", ".join(parts)


def run_overrides(run: StudyRun, budget: Budget) -> list[str]:
    """The `--set` overrides that make a run's recipe from its base, in the order they apply: the study's
    overrides first (as if the base recipe had been edited), then the run's own `set`, which therefore wins
    where both name a key, then the budget's image size."""
    size = [f"image_size={budget.image_size}"] if budget.image_size else []
    return [*budget.overrides, *run.overrides, *size]


def run_recipe(run: StudyRun, budget: Budget) -> Recipe:
    """The run's recipe with the study's budget applied."""
    recipe = load_recipe(run.base, run_overrides(run, budget))
    return scale_epochs(recipe, budget.epochs_scale) if budget.epochs_scale != 1.0 else recipe


def recorded_budget(folder: Path) -> Budget | None:
    """The budget a study folder was started with (`budget.json`, else the finished `study.json`)."""
    for name, key in (("budget.json", None), ("study.json", "budget")):
        path = folder / name
        if path.is_file():
            record = json.loads(path.read_text(encoding="utf-8"))
            fields = record[key] if key else record
            # JSON gives the overrides back as a list; as a tuple, equal budgets compare equal
            return Budget(**{**fields, "overrides": tuple(fields.get("overrides", ()))})
    return None


def check_budget(folder: Path, budget: Budget) -> None:
    """Refuse to resume a study folder under another budget: its split and finished runs belong to the old
    one, and mixing them would publish a table whose rows were trained differently from what it states."""
    recorded = recorded_budget(folder)
    if recorded is not None and recorded != budget:
        raise ConfigError(
            f"{folder} was started with budget ({recorded.describe()}), not ({budget.describe()}); rerun "
            f"with the same options to resume it, or pass --runs-dir another folder for the new budget."
        )
    atomic_write_json(folder / "budget.json", budget.__dict__)
