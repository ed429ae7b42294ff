"""Fixtures shared by the whole test suite: where the real data is, and small generated datasets."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lesionlab.classes import CLASS_CODES
from lesionlab.data.readers import read_dataset
from lesionlab.data.split import Split, make_split

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT / ".." / "shared"
HAM10000_DIR = SHARED_DIR / "data" / "ham10000"

# One clearly different colour per class (label order), so a model can learn the tiny datasets in a few steps.
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (200, 60, 60), (60, 200, 60), (60, 60, 200), (200, 200, 60),
    (200, 60, 200), (60, 200, 200), (120, 120, 120),
)
HAM_METADATA_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real HAM10000 + ISIC 2018 validation folder (`../shared/data/ham10000`); skips if it is absent."""
    if not HAM10000_DIR.is_dir():
        pytest.skip(f"real data not found at {HAM10000_DIR.resolve()}: ../shared is absent on this machine")
    return HAM10000_DIR.resolve()


def class_image(label: int, rng: np.random.Generator, size: tuple[int, int] = (40, 30)) -> Image.Image:
    """A small RGB image whose colour tells its class, with noise so no two images are equal."""
    width, height = size
    noise = rng.integers(-30, 31, size=(height, width, 3))
    pixels = np.clip(np.asarray(CLASS_COLOURS[label]) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture
def tiny_ham_dataset(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory writing a small HAM10000-layout folder; returns its path.

    `tiny_ham_dataset(images_per_class=6, images_per_lesion=2, size=(40, 30), split_folders=False, seed=0)`
    writes `HAM10000_metadata.csv` and JPEGs in `images/` (or `HAM10000_images_part_1/` and `_part_2/` with
    `split_folders=True`); image ids are `ISIC_<label><index:06d>`, lesions `HAM_<label><index:06d>`. Each
    class has its own colour (plus noise), so a model can learn these images in a few steps.
    """

    def make(images_per_class: int = 6, images_per_lesion: int = 2, size: tuple[int, int] = (40, 30),
             split_folders: bool = False, seed: int = 0) -> Path:
        root = tmp_path_factory.mktemp("tiny_ham")
        rng = np.random.default_rng(seed)
        rows = []
        for label, code in enumerate(CLASS_CODES):
            for index in range(images_per_class):
                image_id = f"ISIC_{label}{index:06d}"
                folder_name = (f"HAM10000_images_part_{1 + index % 2}" if split_folders else "images")
                folder = root / folder_name
                folder.mkdir(exist_ok=True)
                class_image(label, rng, size).save(folder / f"{image_id}.jpg", quality=90)
                lesion_id = f"HAM_{label}{index // images_per_lesion:06d}"
                rows.append((lesion_id, image_id, code, "histo", "50.0", "female", "back"))
        with (root / "HAM10000_metadata.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(HAM_METADATA_COLUMNS)
            writer.writerows(rows)
        return root

    return make


SHARED_WEIGHTS = SHARED_DIR / "weights" / "mobilenet_v3_small-imagenet-tfhub-63144c2d.pth"
TINY_RUN_INPUT_SIZE = 96


@pytest.fixture(scope="session")
def shared_weights_file() -> Path:
    """The shared ImageNet MobileNetV3-Small weights; skips if ../shared lacks them."""
    if not SHARED_WEIGHTS.is_file():
        pytest.skip(f"ImageNet weights not found at {SHARED_WEIGHTS.resolve()}: ../shared is incomplete")
    return SHARED_WEIGHTS.resolve()


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path) -> Path:
    """A run directory as `lesionlab train` leaves it, minus training: `best.{safetensors,json}`, `split.csv`.

    MobileNetV3-Small with the shared ImageNet backbone and an untrained head, input 96x96 to keep tests
    fast; the split is a lesion-grouped 70/15/15 split of the real HAM10000 in `shared_data_dir`.
    Session-scoped: treat it as read-only and write outputs elsewhere.
    """
    import torch

    from lesionlab.data.readers import read_dataset
    from lesionlab.data.split import make_split, write_split
    from lesionlab.models.checkpoint import ModelCard, save_checkpoint
    from lesionlab.models.registry import IMAGENET_MEAN, IMAGENET_STD, architecture, build_model

    if not SHARED_WEIGHTS.is_file():
        pytest.skip(f"ImageNet weights not found at {SHARED_WEIGHTS.resolve()}: ../shared is incomplete")
    run_dir = tmp_path_factory.mktemp("tiny_run")
    write_split(run_dir / "split.csv", make_split(read_dataset(shared_data_dir), val=0.15, test=0.15, seed=0))
    spec = architecture("mobilenet_v3_small")
    torch.manual_seed(0)  # the untrained head, so every session tests the same model
    model = build_model("mobilenet_v3_small", pretrained=str(SHARED_WEIGHTS.resolve()))
    card = ModelCard(arch="mobilenet_v3_small", num_classes=len(CLASS_CODES), classes=list(CLASS_CODES),
                     input_size=TINY_RUN_INPUT_SIZE, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD),
                     grayscale=False, head_hidden=spec.head_hidden, dropout=spec.dropout, stage=1, epoch=1,
                     run_name="tiny-run")
    save_checkpoint(run_dir / "best", model, card)
    return run_dir


@pytest.fixture(scope="session")
def tiny_onnx_file(tmp_path_factory: pytest.TempPathFactory, tiny_run_dir: Path) -> Path:
    """`tiny_run_dir`'s model exported to fp32 ONNX (with lesionlab's metadata), outside the run directory."""
    from lesionlab.export import export_onnx
    from lesionlab.models.checkpoint import load_run

    model, card = load_run(tiny_run_dir)
    return export_onnx(model, card, tmp_path_factory.mktemp("tiny_onnx") / "model.onnx")


@pytest.fixture(scope="session")
def tiny_metadata_run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_run_dir: Path) -> Path:
    """`tiny_run_dir`'s split and backbone behind a metadata branch reading age, sex and site, as
    `lesionlab run --config metadata` saves one (card `metadata` entry included). The branch's weights into
    the head are drawn at random instead of starting at zero, so the fields move the probabilities and
    parity checks with fields mean something. Session-scoped: treat it as read-only."""
    import shutil

    import torch

    from lesionlab.models.checkpoint import load_run, save_checkpoint
    from lesionlab.models.metadata_model import MetadataSpec, with_metadata

    run_dir = tmp_path_factory.mktemp("tiny_metadata") / "run"
    run_dir.mkdir()
    shutil.copy(tiny_run_dir / "split.csv", run_dir / "split.csv")
    image_model, card = load_run(tiny_run_dir)
    spec = MetadataSpec(fields=("age", "sex", "site"), dropout=0.3, hidden=32)
    model = with_metadata(image_model, spec)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        widened = model.classifier.head[0].weight
        widened[:, -spec.hidden:] = torch.randn(widened.shape[0], spec.hidden, generator=generator)
    card.metadata, card.run_name = spec.to_dict(), "tiny-metadata"
    save_checkpoint(run_dir / "best", model, card)
    return run_dir


@pytest.fixture(scope="session")
def calibrated_run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_run_dir: Path) -> Path:
    """`tiny_run_dir` plus a `best.temperature.json` of 2.0 for its weights, as `lesionlab evaluate` leaves
    one; its probabilities differ from the tiny run's, so it also serves as a second ensemble member.
    Session-scoped: copy it before writing into it."""
    import shutil

    from lesionlab.evaluation.calibration import TemperatureFit, save_temperature
    from lesionlab.io_utils import file_sha256

    run_dir = tmp_path_factory.mktemp("calibrated") / "run"
    shutil.copytree(tiny_run_dir, run_dir)
    fit = TemperatureFit(2.0, "val", 100, 1.0, 0.9, file_sha256(run_dir / "best.safetensors"))
    save_temperature(run_dir / "best.temperature.json", fit)
    return run_dir


@pytest.fixture
def tiny_split(tiny_ham_dataset: Callable[..., Path], tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Split]:
    """A tiny generated HAM10000 folder read and split 75/25 (no test part), with its own decoded cache."""
    monkeypatch.setenv("LESIONLAB_CACHE", str(tmp_path / "cache"))
    table = read_dataset(tiny_ham_dataset(images_per_class=8, images_per_lesion=2, size=(32, 32)))
    return table, make_split(table, val=0.25, test=0.0, seed=0)
