"""Studies: several recipes trained on one shared split, each evaluated on its test part, in one table.

A study file (YAML) names a base recipe, overrides shared by every run, the split, and a list of runs, each
with its own overrides; optional ensembles average the test probabilities of finished runs. The study folder
holds `split.csv` (made once, so every run sees the same images), `budget.json`, one run directory per run,
`study.json` (the budget and the rows), `study.csv`, `study.md` and `study.png`. A finished run is skipped, an
interrupted one resumed, so rerunning the same command after an interruption finishes the study; a rerun under
another budget is refused rather than mixed into the old folder.

The package's modules, one job each: `schema` (the study file), `budget`, `orchestration` (split, train,
resume), `collect` (runs trained as separate jobs), `scoring` (the rows) and `output` (the files).
"""

from __future__ import annotations

from lesionlab.evaluation.reuse import current_evaluation
from lesionlab.study.budget import Budget, run_recipe
from lesionlab.study.collect import collect_study, prepare_jobs
from lesionlab.study.orchestration import run_study
from lesionlab.study.output import study_table
from lesionlab.study.schema import Study, load_study

__all__ = ["Budget", "Study", "collect_study", "current_evaluation", "load_study", "prepare_jobs",
           "run_recipe", "run_study", "study_table"]
