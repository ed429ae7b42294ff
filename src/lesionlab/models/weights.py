"""Pretrained ImageNet weights, offline: find the file, check its sha256, load it without unpickling.

Nothing here ever downloads. `pretrained` in a recipe is `imagenet` (look for the architecture's known file
in a weights folder or torch hub's cache), `none` (random initialisation), or a path to a state-dict file. A
file is checked against the sha256 prefix carried in its name (torch.hub's `<name>-<hex>.pth` convention) or a
full sha256 given in the recipe, so a corrupted or swapped file fails loudly instead of training from the
wrong start.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lesionlab.errors import WeightsError
from lesionlab.io_utils import file_sha256

log = logging.getLogger(__name__)

WEIGHTS_ENV = "LESIONLAB_WEIGHTS"
REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_SHARED_WEIGHTS = REPO_ROOT.parent / "shared" / "weights"
_HEX_SUFFIX = re.compile(r"-([0-9a-f]{6,64})$")


@dataclass(frozen=True)
class PretrainedWeights:
    """Where one architecture's ImageNet weights come from, described as data (timm's `pretrained_cfg` idea).

    `file_name` is the canonical name (torchvision's download name, or the file a package ships); any
    `<arch>-*.pth` in a weights folder is accepted too, so converted files such as
    `mobilenet_v3_small-imagenet-tfhub-63144c2d.pth` work. `packaged` returns a file installed with a Python
    package.
    """

    arch: str
    file_name: str
    origin: str
    packaged: Callable[[], Path] | None = None
    unavailable_note: str = ""


def search_dirs(weights_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Folders searched for `pretrained: imagenet`, in order: recipe, environment, shared, torch hub."""
    candidates: list[Path] = []
    if weights_dir:
        candidates.append(Path(weights_dir).expanduser())
    if os.environ.get(WEIGHTS_ENV):
        candidates.append(Path(os.environ[WEIGHTS_ENV]).expanduser())
    if DEFAULT_SHARED_WEIGHTS.is_dir():
        candidates.append(DEFAULT_SHARED_WEIGHTS)
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints")
    return candidates


def find_imagenet_file(source: PretrainedWeights, weights_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the first matching weights file, or raise `WeightsError` saying what to put where."""
    folders = search_dirs(weights_dir)
    for folder in folders:
        exact = folder / source.file_name
        if exact.is_file():
            return exact
        matches = sorted(folder.glob(f"{source.arch}-*.pth")) if folder.is_dir() else []
        if matches:
            return matches[0]
    if source.packaged is not None:
        packaged = source.packaged()
        if packaged.is_file():
            return packaged
    looked = "\n".join(f"  - {folder}" for folder in folders)
    note = f"\n{source.unavailable_note}" if source.unavailable_note else ""
    raise WeightsError(
        f"ImageNet weights for {source.arch} not found: need {source.file_name} ({source.origin}) "
        f"or any {source.arch}-*.pth, and nothing is downloaded at run time. Looked in:\n{looked}\n"
        f"Pass the file with `pretrained: /path/to/{source.file_name}` in the recipe "
        f"(or --set pretrained=/path/to/file.pth), put it in a folder named by ${WEIGHTS_ENV}, "
        f"or train from scratch with `pretrained: none`.{note}"
    )


def sha256_prefix_in_name(path: Path) -> str | None:
    """The hex digest prefix torch.hub puts at the end of a file stem (`name-<hex>.pth`), if any."""
    match = _HEX_SUFFIX.search(path.stem)
    return match.group(1) if match else None


def verify_checksum(path: Path, expected_sha256: str | None = None) -> None:
    """Check a weights file against a configured sha256 or the prefix in its name; raise on mismatch."""
    expected = (expected_sha256 or sha256_prefix_in_name(path) or "").lower()
    if not expected:
        log.warning("%s carries no sha256 in its name and none was configured; loading it unverified", path)
        return
    actual = file_sha256(path)
    if not actual.startswith(expected):
        raise WeightsError(
            f"{path}: sha256 {actual[:16]}… does not match the expected {expected[:16]}…; the file is "
            f"corrupt or not the one named. Replace it with an intact copy, or set `weights_sha256` in the "
            f"recipe to the digest of the file you mean to use."
        )


def load_state_dict_file(
    path: str | os.PathLike[str], expected_sha256: str | None = None
) -> dict[str, torch.Tensor]:
    """Verify and load a state-dict file with `weights_only=True` (never unpickles code)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise WeightsError(f"{file}: pretrained weights file does not exist; fix `pretrained:` in the "
                           f"recipe.")
    verify_checksum(file, expected_sha256)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsError(f"{file}: cannot be read as a PyTorch state dict ({error}); replace the file."
                           ) from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{file}: is not a plain state dict of tensors; save one with "
                           f"torch.save(model.state_dict()).")
    return state


def resolve_pretrained(
    source: PretrainedWeights | None,
    arch: str,
    pretrained: str,
    weights_dir: str | os.PathLike[str] | None = None,
) -> Path | None:
    """Turn a recipe's `pretrained` value into a file to load, or None for random initialisation."""
    choice = str(pretrained).strip()
    if choice.lower() == "none":
        return None
    if choice.lower() == "imagenet":
        if source is None:
            raise WeightsError(
                f"{arch} has no ImageNet weights (it is trained from scratch); set `pretrained: none` in the "
                f"recipe."
            )
        return find_imagenet_file(source, weights_dir)
    return Path(choice).expanduser()
