"""`model.json`: the model a user deploys as one small file instead of a line of matching flags.

It names the members (run directories or exported model files) by path, relative to the file's own folder so
the folder can move, and by the sha256 of their weights; the test-time augmentation views; each member's
temperature as it was when the file was written; the class offsets, also by path and sha256; and the
malignancy threshold fitted on validation for exactly this scoring, with the sensitivity it was fitted for
(written by a study and by `lesionlab evaluate MODEL.json`; without one, an ensemble or a model with class
offsets flags malignant at the fallback 0.5 and a single run keeps its own fitted threshold). Loading
checks every one of these and refuses, naming the file and the member, a member that is missing, whose
weights changed, or whose fitted temperature changed, so a `model.json` always scores as it did when it was
written. The file is versioned (`format`, `version`); this module imports no torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from lesionlab.errors import CheckpointError, ConfigError
from lesionlab.inference.backends import ONNX_SUFFIX, OPENVINO_SUFFIX, checkpoint_weights_path
from lesionlab.io_utils import atomic_write_json, file_sha256
from lesionlab.malignancy import ThresholdFit

MODEL_FILE_SUFFIX = ".json"
MODEL_FILE_NAME = "model.json"
"""The name `lesionlab run` and `lesionlab study` give the model file they write."""
FORMAT = "lesionlab-model"
VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 files carry no malignancy threshold


@dataclass(frozen=True)
class FileRef:
    """A file the model depends on: its path (as written, relative to the model file's folder) and sha256."""

    path: str
    sha256: str


@dataclass(frozen=True)
class Member:
    """One member: where it is, the digest of its weights, and the temperature it applied (None: none)."""

    ref: FileRef
    temperature: float | None


@dataclass(frozen=True)
class ModelFile:
    """A parsed `model.json`."""

    members: tuple[Member, ...]
    views: tuple[str, ...]
    class_offsets: FileRef | None = None
    malignancy: ThresholdFit | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON document, `format` and `version` first."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "members": [{"path": member.ref.path, "sha256": member.ref.sha256,
                         "temperature": member.temperature} for member in self.members],
            "views": list(self.views),
            "class_offsets": (None if self.class_offsets is None else
                              {"path": self.class_offsets.path, "sha256": self.class_offsets.sha256}),
            "malignancy_threshold": None if self.malignancy is None else asdict(self.malignancy),
        }


def is_model_file(path: str | os.PathLike[str]) -> bool:
    """Whether a model path names a `model.json` rather than a run directory or an exported model."""
    return Path(path).suffix.lower() == MODEL_FILE_SUFFIX


def weights_files(member: Path) -> tuple[Path, ...]:
    """The files whose bytes a member's digest covers: a run's best weights, an .onnx file, or an OpenVINO
    IR's graph and weights."""
    suffix = member.suffix.lower()
    if suffix == ONNX_SUFFIX:
        return (member,)
    if suffix == OPENVINO_SUFFIX:
        return (member, member.with_suffix(".bin"))
    return (checkpoint_weights_path(member),)


def _relative(path: Path, folder: Path) -> str:
    """`path` relative to `folder` where it lies below it, else absolute, in POSIX form."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(folder.resolve()).as_posix()
    except ValueError:
        return os.path.relpath(resolved, folder.resolve()).replace(os.sep, "/")


def write_model_file(path: str | os.PathLike[str],
                     members: Sequence[tuple[str | os.PathLike[str], float | None]], views: Sequence[str],
                     class_offsets: str | os.PathLike[str] | None = None,
                     malignancy: ThresholdFit | None = None) -> Path:
    """Write `model.json` for these (member path, temperature) pairs, views, class-offsets file and the
    malignancy threshold fitted for this scoring (None: none fitted)."""
    target = Path(path)
    if not is_model_file(target):
        raise ConfigError(f"{target}: a model file must end in {MODEL_FILE_SUFFIX}")
    folder = target.parent
    refs = tuple(Member(FileRef(_relative(Path(member), folder), file_sha256(*weights_files(Path(member)))),
                        temperature) for member, temperature in members)
    offsets = None
    if class_offsets is not None:
        from lesionlab.class_offsets import class_offsets_file

        offsets_path = class_offsets_file(class_offsets)
        offsets = FileRef(_relative(offsets_path, folder), file_sha256(offsets_path))
    return atomic_write_json(target, ModelFile(refs, tuple(views), offsets, malignancy).to_dict())


def _ref(entry: Any, where: str) -> FileRef:
    """A `{path, sha256}` entry, checked."""
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or \
            not isinstance(entry.get("sha256"), str):
        raise ConfigError(f"{where}: needs 'path' and 'sha256' strings")
    return FileRef(entry["path"], entry["sha256"])


def read_model_file(path: str | os.PathLike[str]) -> ModelFile:
    """Parse and check a `model.json`; anything malformed is an error naming the file."""
    source = Path(path)
    try:
        raw = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise CheckpointError(f"{source}: model file not found; write one with `Model.save` "
                              f"(lesionlab.load(...).save(PATH)).") from error
    except json.JSONDecodeError as error:
        raise ConfigError(f"{source}: not valid JSON ({error}); the model file is damaged.") from error
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ConfigError(f"{source}: not a lesionlab model file (its 'format' is not {FORMAT!r}).")
    if raw.get("version") not in READABLE_VERSIONS:
        raise ConfigError(f"{source}: model file version {raw.get('version')!r}; this lesionlab reads "
                          f"versions {', '.join(map(str, READABLE_VERSIONS))}. Write it again with this "
                          f"version.")
    entries = raw.get("members")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source}: 'members' must list at least one model")
    members = []
    for index, entry in enumerate(entries):
        temperature = entry.get("temperature") if isinstance(entry, dict) else None
        members.append(Member(_ref(entry, f"{source}: members[{index}]"),
                              None if temperature is None else float(temperature)))
    views = raw.get("views")
    if not isinstance(views, list) or not all(isinstance(view, str) for view in views):
        raise ConfigError(f"{source}: 'views' must be a list of view names")
    offsets = raw.get("class_offsets")
    return ModelFile(tuple(members), tuple(views),
                     None if offsets is None else _ref(offsets, f"{source}: class_offsets"),
                     _threshold(raw.get("malignancy_threshold"), source))


def _threshold(entry: Any, source: Path) -> ThresholdFit | None:
    """The recorded malignancy threshold, checked; None where the file has none."""
    if entry is None:
        return None
    try:
        fit = ThresholdFit(**entry)
    except TypeError as error:
        raise ConfigError(f"{source}: 'malignancy_threshold' is not a threshold fit ({error}); write the "
                          f"model file again.") from error
    if not 0.0 <= fit.threshold <= 1.0:
        raise ConfigError(f"{source}: 'malignancy_threshold' {fit.threshold} lies outside 0..1")
    return fit


def record_threshold(path: str | os.PathLike[str], fit: ThresholdFit) -> Path:
    """Put the malignancy threshold fitted for a model file's scoring into it, keeping everything else."""
    source = Path(path)
    parsed = read_model_file(source)
    return atomic_write_json(source, replace(parsed, malignancy=fit).to_dict())


def checked_path(model_file: Path, ref: FileRef, files: Any) -> Path:
    """The member or offsets path `ref` names, resolved against the model file's folder, once it exists and
    its digest matches; `files` maps the path to the files its digest covers."""
    path = Path(os.path.normpath(model_file.parent / ref.path))
    if not path.exists():
        raise CheckpointError(f"{model_file}: {ref.path} is missing (looked for {path}); restore it or write "
                              f"the model file again.")
    if file_sha256(*files(path)) != ref.sha256:
        raise CheckpointError(f"{model_file}: {ref.path} has changed since the model file was written (its "
                              f"sha256 differs); write the model file again for the new weights.")
    return path


@dataclass(frozen=True)
class ResolvedModel:
    """A checked `model.json`: its members' and offsets' paths on this machine, with what it recorded."""

    source: Path
    members: tuple[Path, ...]
    temperatures: tuple[float | None, ...]
    views: tuple[str, ...]
    class_offsets: Path | None
    malignancy: ThresholdFit | None = None


def resolve_model_file(path: str | os.PathLike[str]) -> ResolvedModel:
    """Read a `model.json`; check that every member and the offsets file exist with the recorded digests."""
    source = Path(path)
    parsed = read_model_file(source)
    members = tuple(checked_path(source, member.ref, weights_files) for member in parsed.members)
    offsets = (None if parsed.class_offsets is None else
               checked_path(source, parsed.class_offsets, lambda offsets_path: (offsets_path,)))
    return ResolvedModel(source, members, tuple(member.temperature for member in parsed.members),
                         parsed.views, offsets, parsed.malignancy)


def member_runs(model: ResolvedModel, verb: str) -> tuple[Path, ...]:
    """The members of a checked `model.json` as run directories, for the verbs that work on a run's files
    (`export`, `bench`); a member that is a checkpoint or an exported file is refused, naming both files."""
    for member in model.members:
        if not member.is_dir():
            raise ConfigError(f"{model.source}: {verb} works on run directories, and {member} is not one; "
                              f"{verb} that member's run directory instead.")
    return model.members
