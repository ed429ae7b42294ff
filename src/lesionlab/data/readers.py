"""Read a skin-lesion dataset, in whichever layout it arrived, into one `SampleTable`.

Five layouts are understood, detected from the path (or forced with `fmt`):
- `ham10000`: `HAM10000_metadata.csv` (`lesion_id,image_id,dx,...`) plus image folders
  (`HAM10000_images_part_1/`, `..._part_2/`, `images/`, or the CSV's own folder). Only the rows of the CSV are
  read, so other images in the same folder (e.g. the ISIC validation set) are ignored.
- `isic`: a one-hot ground-truth CSV (`image,MEL,NV,BCC,AKIEC,BKL,DF,VASC`) with images beside it (same
  folder, `images/`, a folder named like the CSV, or the challenge's `..._Input` folder), and lesion ids from
  the matching `..._metadata.csv` when present.
- `prefix`: the reference's flat folder, class digit 1..7 leading each file name (`1_abc_12.png` is akiec).
- `folders`: one sub-folder per class code (`akiec/`, `BCC/`, ...).
- `medmnist`: a DermaMNIST `.npz` (`train_images`, `train_labels`, `val_*`, `test_*`), keeping its own split.

Every reader returns the same `Sample` rows, so nothing downstream knows or cares where the data came from.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lesionlab.classes import CLASS_CODES, NUM_CLASSES, class_index, is_known_code
from lesionlab.data.imageio import npz_member_path, parse_npz_member
from lesionlab.data.metadata import PatientMetadata, metadata_from_row
from lesionlab.errors import DataError

FORMATS: tuple[str, ...] = ("ham10000", "isic", "prefix", "folders", "medmnist")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
DATA_ENV = "LESIONLAB_DATA"
HAM_METADATA_NAME = "ham10000_metadata.csv"
MEDMNIST_PARTS: tuple[str, ...] = ("train", "val", "test")
MISSING_SHOWN = 10
_PREFIX_NAME = re.compile(r"^(?P<digit>[1-7])_(?P<image_id>.+)$")
_HAM_COLUMNS = ("lesion_id", "image_id", "dx")
_ISIC_COLUMNS = ("image", *CLASS_CODES)
_HAM_EXPECTED = "a HAM10000 metadata CSV (lesion_id,image_id,dx,...)"
_ISIC_EXPECTED = "an ISIC one-hot ground-truth CSV (image,MEL,NV,BCC,AKIEC,BKL,DF,VASC)"

HOW_TO_GET_DATA = (
    "Get HAM10000 from the Harvard Dataverse (doi:10.7910/DVN/DBW86T, https://doi.org/10.7910/DVN/DBW86T) "
    "or the ISIC archive (https://challenge.isic-archive.com/data/#2018). Put HAM10000_metadata.csv and the "
    "image folders (HAM10000_images_part_1/, HAM10000_images_part_2/) in one folder, then pass it with "
    f"--data FOLDER, or `export {DATA_ENV}=FOLDER`, or place it at ../shared/data/ham10000 beside the "
    "lesionlab repository."
)


@dataclass(frozen=True)
class Sample:
    """One labelled image; `path` is a file, or `archive.npz#part/index` for MedMNIST.

    `metadata` holds the patient fields (age, sex, site) where the layout carries them (HAM10000, ISIC with
    its metadata CSV), else None.
    """

    image_id: str
    path: str
    label: int
    lesion_id: str | None
    source: str
    part: str | None = None
    metadata: PatientMetadata | None = None

    @property
    def code(self) -> str:
        """The class code (`akiec` ... `vasc`) of this sample's label."""
        return CLASS_CODES[self.label]


@dataclass
class SampleTable:
    """All samples of one dataset, where they came from, and a fingerprint that changes when the data does.

    `missing` lists rows whose image file is absent (`file: reason`); it is only non-empty when the table was
    read with `skip_missing=True`, otherwise such rows are an error.
    """

    samples: list[Sample]
    root: Path
    format: str
    fingerprint: str
    missing: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        """Every sample's label, in table order (for class weights and samplers)."""
        return [sample.label for sample in self.samples]


ReaderResult = tuple[list[Sample], list[str]]


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


def read_dataset(
    path: str | os.PathLike[str] | None = None, fmt: str | None = None, *, skip_missing: bool = False
) -> SampleTable:
    """Read a dataset in any supported layout; `fmt` overrides detection.

    A row whose image file is missing is an error naming it, unless `skip_missing` is set: then the row is
    left out and listed in `SampleTable.missing` (so `lesionlab data inspect` can report every problem).
    """
    location = resolve_data_path(path)
    layout = (fmt or detect_format(location)).lower()
    if layout not in _READERS:
        raise DataError(f"unknown dataset format '{fmt}'; choose one of {', '.join(FORMATS)}")
    samples, missing = _READERS[layout](location)
    if missing and not skip_missing:
        shown = "\n  ".join(missing[:MISSING_SHOWN])
        more = f"\n  ... and {len(missing) - MISSING_SHOWN} more" if len(missing) > MISSING_SHOWN else ""
        raise DataError(
            f"{len(missing)} image(s) listed in the dataset at {location} are missing:\n  {shown}{more}\n"
            "Restore them, or run `lesionlab data inspect` to list every problem."
        )
    if not samples:
        raise DataError(f"{location}: no images found in the {layout} layout")
    root = location if location.is_dir() else location.parent
    return SampleTable(samples, root, layout, compute_fingerprint(samples), missing)


def compute_fingerprint(samples: Iterable[Sample]) -> str:
    """sha256 over the sorted `(image_id, label, lesion_id, file size)` rows: cheap, stable, data-bound."""
    archive_sizes: dict[str, int] = {}
    digest = hashlib.sha256()
    for sample in sorted(samples, key=lambda row: row.image_id):
        member = parse_npz_member(sample.path)
        if member is None:
            size = os.stat(sample.path).st_size
        else:
            archive = member[0]
            size = archive_sizes.setdefault(archive, os.stat(archive).st_size)
        digest.update(f"{sample.image_id}\t{sample.label}\t{sample.lesion_id or ''}\t{size}\n".encode())
    return digest.hexdigest()


def detect_format(path: Path) -> str:
    """Recognise the layout of a dataset folder or file; raise DataError listing the layouts if none fits."""
    if path.is_file():
        return _detect_file_format(path)
    csv_files = _visible_files(path, {".csv"})
    if any(csv_file.name.lower() == HAM_METADATA_NAME for csv_file in csv_files):
        return "ham10000"
    headers = [_csv_header(csv_file) for csv_file in csv_files]
    if any(_is_one_hot_header(header) for header in headers):
        return "isic"
    if any(_is_metadata_header(header) for header in headers):
        return "ham10000"
    if _visible_files(path, {".npz"}):
        return "medmnist"
    if any(is_known_code(folder.name) for folder in _visible_folders(path)):
        return "folders"
    if any(_PREFIX_NAME.match(image.stem) for image in _visible_files(path, IMAGE_SUFFIXES)):
        return "prefix"
    raise DataError(
        f"{path}: no dataset layout recognised. lesionlab reads: HAM10000 (HAM10000_metadata.csv + image "
        "folders), ISIC (one-hot ground-truth CSV + images), prefix (files named <digit 1..7>_<id>.png), "
        "folders (one sub-folder per class code: akiec/, bcc/, ...), MedMNIST (.npz). Point at such a "
        f"folder or file, or pass --format. {HOW_TO_GET_DATA}"
    )


def _detect_file_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "medmnist"
    if suffix == ".csv":
        header = _csv_header(path)
        if _is_one_hot_header(header):
            return "isic"
        if "image_id" in header or "dx" in header:
            return "ham10000"
        raise DataError(
            f"{path}: not a dataset CSV: expected {_HAM_EXPECTED} or {_ISIC_EXPECTED}; "
            f"found columns: {', '.join(header) or 'none'}"
        )
    raise DataError(
        f"{path}: cannot read a dataset from a '{suffix}' file; point at a dataset folder, a CSV "
        "(HAM10000 metadata or ISIC ground truth) or a MedMNIST .npz"
    )


def _visible_files(folder: Path, suffixes: Iterable[str]) -> list[Path]:
    """Files in a folder with one of the suffixes, sorted, hidden files (e.g. macOS `._x.jpg`) left out."""
    wanted = frozenset(suffixes)
    return sorted(
        entry
        for entry in folder.iterdir()
        if not entry.name.startswith(".") and entry.suffix.lower() in wanted and entry.is_file()
    )


def _visible_folders(folder: Path) -> list[Path]:
    return sorted(entry for entry in folder.iterdir() if not entry.name.startswith(".") and entry.is_dir())


def _csv_header(path: Path) -> list[str]:
    """The lower-cased column names of a CSV (first line only)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            first = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read CSV header ({error})") from None
    return [name.strip().lower() for name in first]


def _is_one_hot_header(header: Sequence[str]) -> bool:
    return "image" in header and all(code in header for code in CLASS_CODES)


def _is_metadata_header(header: Sequence[str]) -> bool:
    return "image_id" in header and "dx" in header


def _read_csv_rows(path: Path, required: Sequence[str], expected: str) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV as (line number, {lower-case column: stripped value}); a missing column is an error."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip().lower() for name in reader.fieldnames or []]
            absent = [column for column in required if column not in header]
            if absent:
                raise DataError(
                    f"{path}: missing column(s) {', '.join(absent)}; expected {expected}; "
                    f"found columns: {', '.join(header) or 'none'}"
                )
            return [
                (
                    reader.line_num,
                    {
                        key.strip().lower(): (value or "").strip()
                        for key, value in row.items()
                        if key is not None
                    },
                )
                for row in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read CSV ({error})") from None


def _index_images(folders: Iterable[Path]) -> dict[str, Path]:
    """Map image file stem to path over several folders; the first folder holding a stem wins."""
    index: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda item: item.name):
                stem, suffix = os.path.splitext(entry.name)
                if not entry.name.startswith(".") and suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
                    index.setdefault(stem, Path(entry.path))
    return index


def _label_of_code(code: str, where: str) -> int:
    try:
        return class_index(code)
    except KeyError:
        raise DataError(
            f"{where}: unknown class '{code}'; expected one of {', '.join(CLASS_CODES)} (case-insensitive)"
        ) from None


def _check_new_id(image_id: str, seen: set[str], where: str) -> None:
    if not image_id:
        raise DataError(f"{where}: empty image id")
    if image_id in seen:
        raise DataError(f"{where}: image id '{image_id}' appears twice; each image must be listed once")
    seen.add(image_id)


def _missing_message(image_id: str, csv_path: Path, line: int, folders: Sequence[Path]) -> str:
    searched = ", ".join(str(folder) for folder in folders if folder.is_dir()) or "no existing image folder"
    return f"{image_id}: listed in {csv_path} row {line} but no file {image_id}.* found (searched {searched})"


def _find_csv(folder: Path, accepts: Callable[[list[str]], bool], expected: str) -> Path:
    """The one CSV in a folder whose header fits; ask for the file itself when there are none or several."""
    matches = [csv_file for csv_file in _visible_files(folder, {".csv"}) if accepts(_csv_header(csv_file))]
    if len(matches) != 1:
        found = ", ".join(match.name for match in matches) or "none"
        raise DataError(
            f"{folder}: expected exactly one {expected}, found {found}; point at the CSV file itself"
        )
    return matches[0]


def _read_ham10000(path: Path) -> ReaderResult:
    if path.is_file():
        metadata = path
    else:
        named = [
            csv_file
            for csv_file in _visible_files(path, {".csv"})
            if csv_file.name.lower() == HAM_METADATA_NAME
        ]
        metadata = named[0] if named else _find_csv(path, _is_metadata_header, _HAM_EXPECTED)
    folder = metadata.parent
    image_folders = [
        entry
        for entry in _visible_folders(folder)
        if entry.name.lower().startswith("ham10000_images") or entry.name.lower() == "images"
    ]
    image_folders.append(folder)
    images = _index_images(image_folders)
    samples: list[Sample] = []
    missing: list[str] = []
    seen: set[str] = set()
    for line, row in _read_csv_rows(metadata, _HAM_COLUMNS, _HAM_EXPECTED):
        where = f"{metadata}: row {line}"
        image_id = row["image_id"]
        _check_new_id(image_id, seen, where)
        label = _label_of_code(row["dx"], f"{where} (image {image_id}), column dx")
        image = images.get(image_id)
        if image is None:
            missing.append(_missing_message(image_id, metadata, line, image_folders))
            continue
        samples.append(Sample(image_id, str(image), label, row["lesion_id"] or None, "ham10000",
                              metadata=metadata_from_row(row, f"{where} (image {image_id})")))
    return samples, missing


def _isic_image_folders(ground_truth: Path) -> list[Path]:
    """Where ISIC images may sit: beside the CSV, in `images/`, in a folder named like the CSV, or in the
    challenge's sibling folder sharing the CSV's prefix (`ISIC2018_Task3_Validation_Input/` for
    `ISIC2018_Task3_Validation_GroundTruth.csv`)."""
    folder = ground_truth.parent
    candidates = [folder, folder / "images", folder / ground_truth.stem]
    stem = ground_truth.stem.lower()
    prefix = stem.split("groundtruth")[0] if "groundtruth" in stem else ""
    if prefix:
        for base in (folder, folder.parent):
            candidates.extend(
                entry
                for entry in _visible_folders(base)
                if entry.name.lower().startswith(prefix) and entry not in candidates
            )
    return [candidate for candidate in candidates if candidate.is_dir()]


def _isic_metadata(ground_truth: Path) -> dict[str, tuple[str | None, PatientMetadata | None]]:
    """Lesion id and patient fields per image from the metadata CSV named like the ground truth
    (`..._GroundTruth` -> `..._metadata`)."""
    stem = ground_truth.stem.lower()
    if "groundtruth" not in stem:
        return {}
    wanted = stem.replace("groundtruth", "metadata") + ".csv"
    matches = [
        csv_file
        for csv_file in _visible_files(ground_truth.parent, {".csv"})
        if csv_file.name.lower() == wanted
    ]
    if not matches:
        return {}
    metadata = matches[0]
    image_column = "image" if "image" in _csv_header(metadata) else "image_id"
    rows = _read_csv_rows(
        metadata, (image_column, "lesion_id"), "an ISIC metadata CSV (image_id,lesion_id,...)"
    )
    return {
        row[image_column]: (row["lesion_id"] or None, metadata_from_row(row, f"{metadata}: row {line}"))
        for line, row in rows
        if row[image_column]
    }


def _one_hot_label(row: dict[str, str], where: str) -> int:
    values: list[float] = []
    for code in CLASS_CODES:
        try:
            values.append(float(row[code]))
        except ValueError:
            raise DataError(f"{where}, column {code.upper()}: '{row[code]}' is not a number") from None
    hot = [index for index, value in enumerate(values) if value == 1.0]
    if len(hot) != 1 or any(value not in (0.0, 1.0) for value in values):
        raise DataError(
            f"{where}: expected exactly one 1 (others 0) over MEL, NV, BCC, AKIEC, BKL, DF, VASC, found "
            f"{', '.join(row[code] for code in CLASS_CODES)} (in akiec..vasc order); lesionlab knows "
            "only the 7 HAM10000 classes"
        )
    return hot[0]


def _read_isic(path: Path) -> ReaderResult:
    ground_truth = path if path.is_file() else _find_csv(path, _is_one_hot_header, _ISIC_EXPECTED)
    rows = _read_csv_rows(ground_truth, _ISIC_COLUMNS, _ISIC_EXPECTED)
    image_folders = _isic_image_folders(ground_truth)
    images = _index_images(image_folders)
    extras = _isic_metadata(ground_truth)
    samples: list[Sample] = []
    missing: list[str] = []
    seen: set[str] = set()
    for line, row in rows:
        image_id = row["image"]
        where = f"{ground_truth}: row {line} (image {image_id})"
        _check_new_id(image_id, seen, where)
        label = _one_hot_label(row, where)
        image = images.get(image_id)
        if image is None:
            missing.append(_missing_message(image_id, ground_truth, line, image_folders))
            continue
        lesion_id, metadata = extras.get(image_id, (None, None))
        samples.append(Sample(image_id, str(image), label, lesion_id, "isic", metadata=metadata))
    return samples, missing


def _require_folder(path: Path, layout: str) -> None:
    if not path.is_dir():
        raise DataError(f"{path}: the {layout} layout is a folder of images; point at the folder, not a file")


def _read_prefix(path: Path) -> ReaderResult:
    _require_folder(path, "prefix")
    samples: list[Sample] = []
    seen: set[str] = set()
    for image in _visible_files(path, IMAGE_SUFFIXES):
        match = _PREFIX_NAME.match(image.stem)
        if match is None:
            raise DataError(
                f"{image}: file name does not start with a class digit 1..7 and '_' (e.g. 1_abc_12.png "
                "is akiec); rename or remove the file, or pass --format for another layout"
            )
        _check_new_id(match["image_id"], seen, str(image))
        samples.append(Sample(match["image_id"], str(image), int(match["digit"]) - 1, None, "prefix"))
    return samples, []


def _read_folders(path: Path) -> ReaderResult:
    _require_folder(path, "folders")
    samples: list[Sample] = []
    seen: set[str] = set()
    class_folders = _visible_folders(path)
    if not class_folders:
        raise DataError(
            f"{path}: no class sub-folders; expected one per class code: {', '.join(CLASS_CODES)}"
        )
    for folder in class_folders:
        label = _label_of_code(folder.name, f"{folder}: folder name")
        for image in _visible_files(folder, IMAGE_SUFFIXES):
            _check_new_id(image.stem, seen, str(image))
            samples.append(Sample(image.stem, str(image), label, None, "folders"))
    return samples, []


def _npz_array_shape(archive: Path, key: str) -> tuple[int, ...]:
    """Read an array's shape from its `.npy` header inside the archive, without loading the pixels."""
    with zipfile.ZipFile(archive) as bundle, bundle.open(f"{key}.npy") as member:
        major, _ = np.lib.format.read_magic(member)
        read_header = (
            np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        )
        shape, _, _ = read_header(member)
    return tuple(shape)


def _medmnist_labels(archive: Path, arrays: np.lib.npyio.NpzFile, part: str) -> np.ndarray:
    key = f"{part}_labels"
    if key not in arrays.files:
        raise DataError(f"{archive}: has '{part}_images' but no '{key}' array")
    labels = arrays[key]
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{archive}: '{key}' must hold one integer class per image, got shape {labels.shape} "
            f"dtype {labels.dtype}"
        )
    out_of_range = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if out_of_range.size:
        first = int(out_of_range[0])
        raise DataError(
            f"{archive}: '{key}'[{first}] = {labels[first]} is not a class label 0..{NUM_CLASSES - 1}"
        )
    shape = _npz_array_shape(archive, f"{part}_images")
    grayscale = len(shape) == 3
    colour = len(shape) == 4 and shape[3] in (1, 3)
    if not (grayscale or colour) or shape[0] != len(labels):
        raise DataError(
            f"{archive}: '{part}_images' has shape {shape}; expected (N, H, W) or (N, H, W, 3) with "
            f"N = {len(labels)} labels"
        )
    return labels


def _read_medmnist(path: Path) -> ReaderResult:
    if path.is_file():
        archive = path
    else:
        archives = _visible_files(path, {".npz"})
        if len(archives) != 1:
            raise DataError(
                f"{path}: expected exactly one MedMNIST .npz file, found "
                f"{', '.join(a.name for a in archives) or 'none'}; point at the .npz file itself"
            )
        archive = archives[0]
    samples: list[Sample] = []
    try:
        with np.load(archive) as arrays:
            parts = [part for part in MEDMNIST_PARTS if f"{part}_images" in arrays.files]
            if not parts:
                raise DataError(
                    f"{archive}: no train_images/val_images/test_images arrays; found keys "
                    f"{', '.join(arrays.files) or 'none'}"
                )
            for part in parts:
                labels = _medmnist_labels(archive, arrays, part)
                samples.extend(
                    Sample(
                        f"{part}_{index}",
                        npz_member_path(archive, part, index),
                        int(label),
                        None,
                        "medmnist",
                        part,
                    )
                    for index, label in enumerate(labels.tolist())
                )
    except (OSError, ValueError, zipfile.BadZipFile, KeyError) as error:
        raise DataError(f"{archive}: cannot read as a MedMNIST .npz ({error})") from None
    return samples, []


_READERS: dict[str, Callable[[Path], ReaderResult]] = {
    "ham10000": _read_ham10000,
    "isic": _read_isic,
    "prefix": _read_prefix,
    "folders": _read_folders,
    "medmnist": _read_medmnist,
}


def class_counts(samples: Iterable[Sample]) -> list[int]:
    """Images per class, in label order 0..6."""
    counts = Counter(sample.label for sample in samples)
    return [counts.get(label, 0) for label in range(NUM_CLASSES)]
