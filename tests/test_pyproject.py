"""pyproject.toml: the licence as an SPDX expression (PEP 639, not the deprecated table), and the tracking
extra that `--tensorboard` / `--mlflow` name in their error, also installed by `dev` for the tests."""

from __future__ import annotations

import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_license_is_an_spdx_string() -> None:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    assert project["license"] == "Apache-2.0"


def test_tracking_extra_is_in_dev_too() -> None:
    extras = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    names = {requirement.split(">")[0] for requirement in extras["tracking"]}
    assert names == {"tensorboard", "mlflow-skinny"}
    assert names <= {requirement.split(">")[0] for requirement in extras["dev"]}
