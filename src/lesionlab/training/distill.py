"""Knowledge distillation from finished runs: fixed augmented views, their teacher logits cached, a KD loss.

A student learns from the averaged, tempered probabilities of one or more teacher runs (Hinton et al., 2015),
on exactly the augmented views the teachers saw ("consistent teaching", Beyer et al., 2022). Doing that on a
CPU means running the teachers once, not every epoch, so augmentation becomes a finite set of views:

- View `v` of training image `i` is the recipe's augmentation drawn from a random state seeded by
  (recipe seed, image id, v) (`view_seed`). The crop box, flips, turns and colour jitter depend only on that
  seed and the cached input, so the view is the same at every output size: a progressive-resizing schedule
  shows the student the teacher's view at the epoch's size.
- The teachers' logits of every (view, image) are computed once, batched, in the recipe's forward precision,
  and cached as one safetensors file keyed by the teachers' weight hashes, the views, the sizes, the
  augmentation and the training images (`TeacherCache`). The key is stored inside the file; a cache whose key
  differs (stale) or that does not read back (half-written, corrupt) is rebuilt, never used.
- A metadata teacher reads each training image's own patient fields beside its view (`teacher_fields`), so
  an image-only student learns from what the fields told the teacher; the student itself sees pixels only.
- Each epoch the sampler's draws each get a uniformly drawn view index (`ViewSampler`), and the loss mixes
  the hard-label loss with the KL divergence to the teachers' mean tempered probabilities
  (`DistillationLoss`).

Teachers must have trained on nothing of the student's validation or test parts (`check_teachers`): a
teacher that saw them would carry those labels into the student through its probabilities.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from lesionlab.data.cache import default_cache_root
from lesionlab.data.dataset import ImageTransform, LesionDataset
from lesionlab.data.split import Split
from lesionlab.errors import ConfigError
from lesionlab.io_utils import atomic_write_bytes, file_sha256
from lesionlab.models.checkpoint import BEST_STEM, WEIGHTS_SUFFIX, ModelCard, load_run
from lesionlab.models.pixel_input import PixelInput

log = logging.getLogger(__name__)

TEACHER_CACHE_VERSION = 2
"""2: the key names the patient fields a metadata teacher reads."""
ViewKey = tuple[int, int]
"""(item index in the training set, view index)."""


def view_seed(seed: int, image_id: str, view: int) -> int:
    """The 63-bit seed of one augmented view: fixed by (recipe seed, image, view), nothing else."""
    digest = hashlib.sha256(f"lesionlab/view/{seed}/{image_id}/{view}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class AugmentedViews(Dataset[tuple[torch.Tensor, Any]]):
    """Item `(i, v)`: view `v` of training image `i`, reproducible in any process and at any size.

    The transform is read from the base dataset at call time (progressive resizing swaps it per epoch)
    unless one is given (the teachers' own input size and colour mode). With `teacher_logits`
    (teachers, views, items, classes), an item's target is `(label, its teachers' logits of that view)`.
    """

    def __init__(self, base: LesionDataset, seed: int, transform: ImageTransform | None = None,
                 teacher_logits: torch.Tensor | None = None) -> None:
        self.base = base
        self.seed = seed
        self.transform = transform
        self.teacher_logits = teacher_logits

    def __len__(self) -> int:
        return len(self.base)

    def view(self, index: int, view: int) -> torch.Tensor:
        """The transformed view, drawn under its own seed without disturbing the caller's random state."""
        transform = self.transform or self.base.transform
        image = self.base.pixels(index)
        if transform is None:
            return image
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(view_seed(self.seed, self.base.samples[index].image_id, view))
            return transform(image)

    def __getitem__(self, key: ViewKey) -> tuple[torch.Tensor, Any]:
        index, view = key
        label = self.base.samples[index].label
        image = self.view(index, view)
        if self.teacher_logits is None:
            return image, label
        return image, (label, self.teacher_logits[:, view, index])


class ViewPasses(Dataset[tuple[torch.Tensor, Any]]):
    """Views 0..K-1 of every item, view-major: flat item `j` is view `j // N` of item `j % N`."""

    def __init__(self, views: AugmentedViews, view_count: int) -> None:
        self.views = views
        self.view_count = view_count

    def __len__(self) -> int:
        return len(self.views) * self.view_count

    def __getitem__(self, flat: int) -> tuple[torch.Tensor, Any]:
        return self.views[(flat % len(self.views), flat // len(self.views))]


class ViewSampler(Sampler[ViewKey]):
    """Pairs each draw of an item sampler with a view index drawn uniformly from `view_count`."""

    def __init__(self, items: Sampler[int] | Sequence[int], view_count: int,
                 generator: torch.Generator) -> None:
        self.items = items
        self.view_count = view_count
        self.generator = generator

    def __len__(self) -> int:
        return len(self.items)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[ViewKey]:
        order = [int(index) for index in self.items]
        views = torch.randint(self.view_count, (len(order),), generator=self.generator).tolist()
        return iter(zip(order, views, strict=True))


def mean_teacher_probabilities(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The teachers' mean of softmax(logits / T): `(batch, teachers, classes)` -> `(batch, classes)`."""
    return torch.softmax(teacher_logits.float() / temperature, dim=-1).mean(dim=-2)


class DistillationLoss(nn.Module):
    """`(1 - alpha) * hard(logits, labels) + alpha * T^2 * KL(teachers' tempered mean || student at T)`.

    The T^2 factor keeps the soft term's gradients on the hard term's scale whatever the temperature. The KL
    term reads the student's plain logits, which with logit-adjusted cross-entropy (and teachers trained with
    it) are the class-balanced scores both sides predict.
    """

    def __init__(self, hard: nn.Module, alpha: float, temperature: float) -> None:
        super().__init__()
        self.hard = hard
        self.alpha = alpha
        self.temperature = temperature

    def forward(self, logits: torch.Tensor, targets: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        labels, teacher_logits = targets
        soft = mean_teacher_probabilities(teacher_logits, self.temperature)
        student = torch.log_softmax(logits.float() / self.temperature, dim=-1)
        kd = nn.functional.kl_div(student, soft, reduction="batchmean") * self.temperature ** 2
        return (1.0 - self.alpha) * self.hard(logits, labels) + self.alpha * kd


@dataclass(frozen=True)
class Teacher:
    """One teacher run: its chosen model (behind its normalisation: it takes its views' pixels), its card and
    the sha256 of its weights."""

    run_dir: Path
    model: PixelInput
    card: ModelCard
    weights_sha256: str


def load_teachers(run_dirs: Sequence[str | Path]) -> list[Teacher]:
    """Load each teacher run's chosen model (`best.safetensors`) in eval mode."""
    teachers = []
    for run_dir in run_dirs:
        path = Path(run_dir)
        network, card = load_run(path)
        teachers.append(Teacher(path, PixelInput.normalising(network, card.mean, card.std), card,
                                file_sha256(path / f"{BEST_STEM}{WEIGHTS_SUFFIX}")))
    return teachers


def check_teacher(run_dir: Path, student_split: Split) -> None:
    """Refuse a teacher that trained on other data or on any image of the student's validation or test part.

    A teacher's training part (its `train`, which a release fit extends by its validation part) holds the
    images whose labels it has seen; its probabilities would carry those labels into the student.
    """
    from lesionlab.evaluation.sources import run_data

    _, teacher_split = run_data(run_dir)
    if teacher_split.fingerprint != student_split.fingerprint:
        raise ConfigError(f"teacher {run_dir}: trained on another dataset (fingerprint "
                          f"{teacher_split.fingerprint[:12]}, the student's "
                          f"{student_split.fingerprint[:12]}); a teacher must come from the student's "
                          f"dataset.")
    held_out = {sample.image_id for part in ("val", "test") for sample in student_split.parts.get(part, [])}
    seen = [sample.image_id for sample in teacher_split.parts["train"] if sample.image_id in held_out]
    if seen:
        raise ConfigError(f"teacher {run_dir}: {len(seen)} of the images it trained on (e.g. {seen[0]}) "
                          f"are in the student's validation or test part, and it would pass their labels "
                          f"to the student. Use teachers trained on the student's training part only (the "
                          f"same split, `lesionlab train --split STUDENT_SPLIT`, and not a release fit).")


class TeacherCache:
    """The teachers' logits of every (view, training image), on disk under a key of all they depend on."""

    def __init__(self, key: dict[str, Any], root: Path | None = None) -> None:
        self.key = key
        self.key_json = json.dumps(key, sort_keys=True)
        digest = hashlib.sha256(self.key_json.encode()).hexdigest()
        self.path = (root or default_cache_root()) / "teachers" / f"teacher-{digest[:24]}.safetensors"

    def load(self) -> torch.Tensor | None:
        """The cached logits, or None when absent, half-written, corrupt or made under another key."""
        from safetensors import SafetensorError, safe_open

        if not self.path.is_file():
            return None
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                if metadata.get("key") != self.key_json:
                    log.warning("%s: teacher cache made under another key; rebuilding it", self.path)
                    return None
                logits = handle.get_tensor("logits")
        except (SafetensorError, OSError, ValueError) as error:
            log.warning("%s: unreadable teacher cache (%s); rebuilding it", self.path, error)
            return None
        expected = (len(self.key["teachers"]), self.key["views"], len(self.key["images"]))
        if tuple(logits.shape[:3]) != expected:
            log.warning("%s: teacher cache has shape %s, expected %s; rebuilding it", self.path,
                        tuple(logits.shape), expected)
            return None
        return logits

    def save(self, logits: torch.Tensor) -> Path:
        """Write the logits with the key inside, atomically."""
        from safetensors.torch import save

        return atomic_write_bytes(self.path, save({"logits": logits.contiguous()},
                                                  metadata={"key": self.key_json}))


def teacher_key(teachers: Sequence[Teacher], train_set: LesionDataset, view_count: int, seed: int,
                augment: str, precision: str) -> dict[str, Any]:
    """Everything the cached logits depend on: change any of it and the cache is another one."""
    return {
        "version": TEACHER_CACHE_VERSION,
        "teachers": [{"weights_sha256": teacher.weights_sha256, "arch": teacher.card.arch,
                      "input_size": teacher.card.input_size, "mean": teacher.card.mean,
                      "std": teacher.card.std, "grayscale": teacher.card.grayscale,
                      "metadata": teacher.card.metadata} for teacher in teachers],
        "views": view_count,
        "view_seed": seed,
        "augment": augment,
        "pixels_size": train_set.size,
        "precision": precision,
        "images": [sample.image_id for sample in train_set.samples],
    }


def teacher_fields(teachers: Sequence[Teacher], train_set: LesionDataset) -> list[torch.Tensor | None]:
    """Per teacher, the encoded patient fields of every training image `(items, width)` when it is a
    metadata model, else None.

    A metadata teacher scores a view as it was trained to score it, with the image's own fields (the training
    part's, never another part's), so what it learnt from them reaches an image-only student through its
    probabilities; without them it would teach as if every field were missing.
    """
    from lesionlab.data.metadata import encode

    return [None if teacher.card.metadata is None
            else torch.stack([encode(sample.metadata, teacher.card.metadata["fields"])
                              for sample in train_set.samples])
            for teacher in teachers]


@torch.inference_mode()
def compute_teacher_logits(teachers: Sequence[Teacher], views: Sequence[AugmentedViews], view_count: int,
                           batch_size: int, workers: int, device: torch.device,
                           channels_last: bool) -> torch.Tensor:
    """Logits `(teachers, views, items, classes)`; teachers sharing an input pipeline share one pass.

    `views[t]` renders teacher `t`'s input (its size and colour mode) of each (item, view). A metadata
    teacher reads each training image's own patient fields beside its view (`teacher_fields`).
    """
    from lesionlab.device import forward_in_chunks, to_device

    items = len(views[0])
    fields = teacher_fields(teachers, views[0].base)
    out = torch.empty(len(teachers), view_count, items, teachers[0].card.num_classes)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, teacher in enumerate(teachers):
        card = teacher.card
        pipeline = (card.input_size, card.grayscale)
        groups.setdefault(pipeline, []).append(index)
    for members in groups.values():
        for member in members:
            teachers[member].model.to(device)
            if channels_last:
                teachers[member].model.to(memory_format=torch.channels_last)
        loader = DataLoader(ViewPasses(views[members[0]], view_count), batch_size=batch_size, shuffle=False,
                            num_workers=workers)
        start = 0
        names = ", ".join(teachers[member].run_dir.name for member in members)
        for images, _ in tqdm(loader, desc=f"teacher logits ({names}, {view_count} views)", unit="batch",
                              leave=False):
            inputs = to_device(images, device, channels_last)
            flat = torch.arange(start, start + len(images))
            item, view = flat % items, flat // items
            for member in members:
                extra = [] if fields[member] is None else [fields[member][item].to(device)]
                logits = forward_in_chunks(teachers[member].model, inputs, *extra)
                out[member, view, item] = logits.float().cpu()
            start += len(images)
    return out
