"""Patient metadata (age, sex, anatomical site): one vocabulary over HAM10000 and ISIC, and its encoding.

HAM10000 names sites `back`, `trunk`, `face`, ... while the ISIC archive names them `posterior torso`,
`head/neck`, ...; both are mapped onto the shared `SITES` (the table in docs/metadata.md), so a model
trained on one source reads the other. A missing or unknown value is a value of its own: the encoding has a
slot for it, and metadata dropout in training (`MetadataDropout`) replaces fields with exactly that encoding,
so a model stays sound when fields are absent at prediction time.

Encoding of the chosen fields, in `FIELDS` order:
- `age`: `(age / AGE_SCALE, missing flag)`; a missing age is `(0, 1)`.
- `sex`: one-hot over `female, male, missing`.
- `site`: one-hot over `SITES` then `missing`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lesionlab.errors import ConfigError, DataError

if TYPE_CHECKING:  # torch is imported only to encode, so ONNX and OpenVINO predictors run without it
    import torch

FIELDS: tuple[str, ...] = ("age", "sex", "site")
AGE_SCALE = 100.0
SEXES: tuple[str, ...] = ("female", "male")
SITES: tuple[str, ...] = (
    "head/neck", "anterior torso", "posterior torso", "lateral torso", "torso (unspecified)",
    "upper extremity", "lower extremity", "palms/soles", "oral/genital",
)
MISSING_WORDS = frozenset({"", "unknown", "nan", "na", "n/a", "none", "missing"})

# Every site name either source uses (lower case), onto the shared vocabulary. HAM10000 `hand` and `foot` do
# not say dorsal or palmar/plantar, so they go to their extremity; HAM10000 `acral` is palms/soles.
SITE_MAP: dict[str, str] = {
    **{site: site for site in SITES},
    "torso": "torso (unspecified)",
    "back": "posterior torso",
    "trunk": "torso (unspecified)",
    "abdomen": "anterior torso",
    "chest": "anterior torso",
    "face": "head/neck",
    "scalp": "head/neck",
    "ear": "head/neck",
    "neck": "head/neck",
    "hand": "upper extremity",
    "foot": "lower extremity",
    "acral": "palms/soles",
    "genital": "oral/genital",
}

# Column names of each field, first match wins: HAM10000's, then the ISIC archive's.
AGE_COLUMNS: tuple[str, ...] = ("age", "age_approx")
SEX_COLUMNS: tuple[str, ...] = ("sex",)
SITE_COLUMNS: tuple[str, ...] = ("localization", "anatom_site_general", "anatom_site_general_challenge")


@dataclass(frozen=True)
class PatientMetadata:
    """One image's patient fields in the shared vocabulary; None is missing."""

    age: float | None = None
    sex: str | None = None
    site: str | None = None


def parse_age(value: str | float | None, where: str) -> float | None:
    """An age in years, or None when missing; a non-number or an impossible age is a DataError."""
    if value is None or (isinstance(value, str) and value.strip().lower() in MISSING_WORDS):
        return None
    try:
        age = float(value)
    except ValueError:
        raise DataError(f"{where}: age '{value}' is not a number of years (leave it empty when "
                        "unknown)") from None
    if math.isnan(age):
        return None
    if not 0 <= age <= 120:
        raise DataError(f"{where}: age {age:g} is outside 0..120 years")
    return age


def parse_sex(value: str | None, where: str) -> str | None:
    """`female`/`male`, or None when missing; anything else is a DataError."""
    word = (value or "").strip().lower()
    if word in MISSING_WORDS:
        return None
    if word not in SEXES:
        raise DataError(f"{where}: sex '{value}' is not one of {', '.join(SEXES)} (leave it empty when "
                        "unknown)")
    return word


def parse_site(value: str | None, where: str) -> str | None:
    """The shared-vocabulary site of a HAM10000 or ISIC site name, or None when missing."""
    word = " ".join((value or "").strip().lower().replace("_", " ").split())
    if word in MISSING_WORDS:
        return None
    if word not in SITE_MAP:
        raise DataError(f"{where}: anatomical site '{value}' is not known; use one of "
                        f"{', '.join(sorted(SITE_MAP))} (leave it empty when unknown)")
    return SITE_MAP[word]


def parse_patient(age: str | float | None, sex: str | None, site: str | None,
                  prefix: str = "") -> PatientMetadata:
    """One patient's fields as a person gives them (a flag, a form field, a keyword), each parsed as the
    dataset readers parse them; a bad value is a DataError naming the field as `prefix + name`."""
    return PatientMetadata(age=parse_age(age, f"{prefix}age"), sex=parse_sex(sex, f"{prefix}sex"),
                           site=parse_site(site, f"{prefix}site"))


def given_patient(age: str | float | None, sex: str | None, site: str | None,
                  prefix: str = "") -> PatientMetadata | None:
    """`parse_patient` of the fields a person gave, or None when they gave none (the image alone)."""
    if age is None and sex is None and site is None:
        return None
    return parse_patient(age, sex, site, prefix)


def metadata_from_row(row: Mapping[str, str], where: str) -> PatientMetadata | None:
    """The patient fields of a CSV row (lower-case columns); None when the CSV has none of their columns."""
    age_column = next((name for name in AGE_COLUMNS if name in row), None)
    sex_column = next((name for name in SEX_COLUMNS if name in row), None)
    site_column = next((name for name in SITE_COLUMNS if name in row), None)
    if age_column is None and sex_column is None and site_column is None:
        return None
    return PatientMetadata(
        age=parse_age(row[age_column], where) if age_column else None,
        sex=parse_sex(row[sex_column], where) if sex_column else None,
        site=parse_site(row[site_column], where) if site_column else None,
    )


def read_metadata_csv(path: Path) -> dict[Path, PatientMetadata]:
    """Images and their patient fields from a CSV: an `image` column (a path, relative to the CSV's folder
    unless absolute) plus any of the age, sex and site columns (HAM10000 or ISIC names)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = [(reader.line_num, {(key or "").strip().lower(): (value or "").strip()
                                       for key, value in row.items()}) for row in reader]
            header = [name.strip().lower() for name in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read the metadata CSV ({error})") from None
    if "image" not in header:
        raise DataError(f"{path}: no 'image' column; expected image,age,sex,site (found: "
                        f"{', '.join(header) or 'none'})")
    images: dict[Path, PatientMetadata] = {}
    for line, row in rows:
        where = f"{path}: row {line}"
        if not row["image"]:
            raise DataError(f"{where}: empty image path")
        image = Path(row["image"])
        images[image if image.is_absolute() else path.parent / image] = (
            metadata_from_row(row, where) or PatientMetadata())
    return images


def field_widths(fields: Sequence[str]) -> list[int]:
    """How many numbers each field's encoding takes."""
    widths = {"age": 2, "sex": len(SEXES) + 1, "site": len(SITES) + 1}
    return [widths[name] for name in fields]


def check_fields(fields: Sequence[str], where: str) -> tuple[str, ...]:
    """The fields as a tuple, each known and listed once."""
    unknown = [name for name in fields if name not in FIELDS]
    if unknown or not fields or len(set(fields)) != len(fields):
        raise ConfigError(f"{where}: metadata fields must be a non-empty list without repeats from "
                          f"{', '.join(FIELDS)}; got {list(fields)}")
    return tuple(fields)


def _one_hot(value: str | None, choices: Sequence[str]) -> list[float]:
    index = len(choices) if value is None else choices.index(value)
    return [1.0 if slot == index else 0.0 for slot in range(len(choices) + 1)]


def missing_encoding(fields: Sequence[str]) -> torch.Tensor:
    """The encoding of a record with every field missing."""
    return encode(PatientMetadata(), fields)


def encoded_values(metadata: PatientMetadata | None, fields: Sequence[str]) -> list[float]:
    """The numbers of the chosen fields (module docstring), as plain floats so exported models encode
    without torch; None encodes every field as missing. `encoding_layout` names each number."""
    record = metadata or PatientMetadata()
    parts: list[float] = []
    for name in fields:
        if name == "age":
            parts += [0.0, 1.0] if record.age is None else [record.age / AGE_SCALE, 0.0]
        elif name == "sex":
            parts += _one_hot(record.sex, SEXES)
        else:
            parts += _one_hot(record.site, SITES)
    return parts


def encode(metadata: PatientMetadata | None, fields: Sequence[str]) -> torch.Tensor:
    """`encoded_values` as a float32 tensor, for training and the PyTorch model."""
    import torch

    return torch.tensor(encoded_values(metadata, fields), dtype=torch.float32)


def encoding_layout(fields: Sequence[str]) -> list[str]:
    """What each number of `encoded_values` means, in order (`age / 100`, `sex=female`, ..., `site missing`):
    an exported model records it, so a program without lesionlab can encode its inputs."""
    names: list[str] = []
    for name in fields:
        if name == "age":
            names += [f"age / {AGE_SCALE:g}", "age missing"]
        else:
            choices = SEXES if name == "sex" else SITES
            names += [*(f"{name}={choice}" for choice in choices), f"{name} missing"]
    return names


def fields_given(metadata: PatientMetadata) -> dict[str, float | str]:
    """The fields of a record that are not missing, by name, in `FIELDS` order."""
    values = {"age": metadata.age, "sex": metadata.sex, "site": metadata.site}
    return {name: value for name, value in values.items() if value is not None}
