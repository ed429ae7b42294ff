"""Where the dataset is: `--data`, then `$LESIONLAB_DATA`, then the shared copy beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

from lesionlab.errors import DataError

DATA_ENV = "LESIONLAB_DATA"

HOW_TO_GET_DATA = (
    "Get HAM10000 from the Harvard Dataverse (doi:10.7910/DVN/DBW86T, https://doi.org/10.7910/DVN/DBW86T) "
    "or the ISIC archive (https://challenge.isic-archive.com/data/#2018). Put HAM10000_metadata.csv and the "
    "image folders (HAM10000_images_part_1/, HAM10000_images_part_2/) in one folder, then pass it with "
    f"--data FOLDER, or `export {DATA_ENV}=FOLDER`, or place it at ../shared/data/ham10000 beside the "
    "lesionlab repository."
)


def repo_root() -> Path | None:
    """The folder holding lesionlab's pyproject.toml, when running from a source checkout."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return None


def default_data_candidates() -> list[Path]:
    """Where the shared HAM10000 copy is looked for when neither --data nor $LESIONLAB_DATA is given."""
    bases = [root for root in (repo_root(), Path.cwd()) if root is not None]
    return [base / ".." / "shared" / "data" / "ham10000" for base in bases]


def resolve_data_path(path: str | os.PathLike[str] | None = None) -> Path:
    """Pick the dataset: the explicit path, then `$LESIONLAB_DATA`, then `../shared/data/ham10000`."""
    if path is not None:
        explicit = Path(path).expanduser()
        if not explicit.exists():
            raise DataError(
                f"{explicit}: no such file or folder; pass --data with a dataset folder or its CSV/NPZ file"
            )
        return explicit.resolve()
    from_env = os.environ.get(DATA_ENV)
    if from_env:
        configured = Path(from_env).expanduser()
        if not configured.exists():
            raise DataError(
                f"${DATA_ENV}={from_env}: no such file or folder; fix or unset {DATA_ENV}. {HOW_TO_GET_DATA}"
            )
        return configured.resolve()
    candidates = default_data_candidates()
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    looked = ", ".join(str(candidate) for candidate in candidates)
    raise DataError(f"no dataset given (--data or ${DATA_ENV}) and none found at {looked}. {HOW_TO_GET_DATA}")
