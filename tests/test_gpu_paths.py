"""What training does differently on CUDA, checked without a GPU: each rank's device from LOCAL_RANK, bf16
autocast for the training forward, pinned memory and non-blocking copies, and cudnn.benchmark unless the
recipe is deterministic."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import Dataset

from lesionlab.device import to_device
from lesionlab.errors import ConfigError
from lesionlab.precision import training_forward
from lesionlab.training import distributed
from lesionlab.training.batches import StageData, image_batches, targets_to_device, val_loader
from lesionlab.training.recipe import load_recipe
from lesionlab.training.runner import torch_settings

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


class Labelled(Dataset):
    """Two images of each class, as plain tensors (the loaders under test only need labels and items)."""

    labels = list(range(7)) * 2

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.zeros(3, 4, 4), self.labels[index]


def stage_data(device: torch.device) -> StageData:
    return StageData(train_set=Labelled(), val_set=Labelled(), workers=0, device=device,  # type: ignore[arg-type]
                     channels_last=False, augment=lambda size: None)  # type: ignore[arg-type,return-value]


def launched_as(monkeypatch: pytest.MonkeyPatch, local_rank: int, gpus: int) -> None:
    for name, value in (("RANK", local_rank), ("WORLD_SIZE", 2), ("LOCAL_RANK", local_rank)):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)


def test_each_rank_trains_on_the_gpu_of_its_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    launched_as(monkeypatch, 1, gpus=2)
    assert distributed.rank_device(CUDA) == torch.device("cuda", 1)
    assert distributed.rank_device(CPU) == CPU


def test_more_processes_than_gpus_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    launched_as(monkeypatch, 1, gpus=1)
    with pytest.raises(ConfigError, match=r"LOCAL_RANK 1: this node has 1 CUDA .*--nproc-per-node"):
        distributed.rank_device(CUDA)


def test_alone_the_device_is_the_recipes() -> None:
    assert distributed.rank_device(CUDA) == CUDA


def test_the_training_forward_runs_under_bf16_autocast_on_cuda_only() -> None:
    def forward(inputs: torch.Tensor) -> torch.Tensor:
        return inputs

    assert training_forward(forward, "bf16", CUDA) is not forward
    assert training_forward(forward, "fp32", CUDA) is forward
    assert training_forward(forward, "bf16", CPU) is forward


@pytest.mark.parametrize(("device", "pinned"), [(CUDA, True), (CPU, False)])
def test_loaders_pin_memory_for_a_gpu(device: torch.device, pinned: bool) -> None:
    stage = load_recipe(None).stages[-1]
    assert image_batches(stage_data(device), stage, epoch_seed=0).pin_memory is pinned
    assert val_loader(stage_data(device), stage).pin_memory is pinned


def test_batches_are_copied_without_blocking(monkeypatch: pytest.MonkeyPatch) -> None:
    copies: list[dict[str, Any]] = []
    real_to = torch.Tensor.to

    def recording_to(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        copies.append(kwargs)
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    to_device((torch.zeros(2, 3, 4, 4), torch.zeros(2, 5)), CPU, channels_last=False)
    targets_to_device((torch.zeros(2), torch.zeros(2, 7)), CPU)
    assert len(copies) == 4 and all(kwargs.get("non_blocking") for kwargs in copies)


@pytest.mark.parametrize("deterministic", [False, True])
def test_cudnn_picks_the_fastest_kernels_unless_deterministic(deterministic: bool) -> None:
    before = torch.backends.cudnn.benchmark
    recipe = load_recipe(None, (f"deterministic={str(deterministic).lower()}",))
    with torch_settings(recipe):
        assert torch.backends.cudnn.benchmark is not deterministic
    assert torch.backends.cudnn.benchmark == before
