"""One training run over N processes under `torchrun` (DistributedDataParallel); nothing at all when alone.

`torchrun --nproc-per-node N -m lesionlab train ...` starts N copies of the command with RANK, WORLD_SIZE,
LOCAL_RANK and LOCAL_WORLD_SIZE set. `setup` joins them into one process group (NCCL on CUDA, gloo on the
CPU, chosen from the training device); without those variables it does nothing and every helper here is the
identity, so a single process trains exactly as before. The rules a multi-process run follows:

- The recipe's `batch_size` is the global batch. Every epoch all ranks make the same single-process draw
  (the weighted sampler seeded by (seed, stage, epoch)) and each trains on its contiguous slice of every
  global batch (`local_rows`), so the global sample stream is the single-process one and DDP's gradient
  average is the gradient of the whole batch (exact for unweighted losses). Scheduler steps per epoch, and
  so resuming under another process count, do not depend on N.
- Rank 0 alone writes: the run directory, checkpoints, history, logs, caches; it alone prints and shows
  progress bars. The others wait on a barrier where they need what it wrote (`main_first`).
- BatchNorm statistics stay per rank while training (or synchronised with `sync_bn: true`); before
  validation every rank takes rank 0's buffers, the weights rank 0 saves. Validation is split across the
  ranks and its predictions gathered, so every rank scores the same model on the whole validation part and
  takes the same selection decision.
- A stage's feature cache is built once, on rank 0, and broadcast.
- A collective that waits longer than `LESIONLAB_DIST_TIMEOUT` seconds (default 1800) fails with an error
  instead of hanging; a rank that dies closes its connections, which fails the others' next collective at
  once (`torchrun` then stops the rest and names the failed rank).

Everything sent between ranks is tensors (JSON as bytes for small records); nothing is pickled.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Subset

from lesionlab.errors import ConfigError, LesionlabError

T = TypeVar("T")
TIMEOUT_ENV = "LESIONLAB_DIST_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 1800
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")

_wrapped: list[tuple[tuple[int, tuple[int, ...]], DistributedDataParallel]] = []


class PeerLostError(LesionlabError):
    """A collective with the other processes of a run failed: one of them stopped, or it timed out."""


def launched() -> bool:
    """Whether torchrun (or any launcher setting its variables) started this process as one of several."""
    return all(name in os.environ for name in LAUNCH_VARIABLES) and int(os.environ["WORLD_SIZE"]) > 1


def active() -> bool:
    """Whether this process trains in a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 when alone)."""
    return dist.get_rank() if active() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """How many processes train this run (1 when alone)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process is rank 0: the one that writes files and prints."""
    return rank() == 0


def timeout_seconds() -> int:
    """How long a collective may wait for the other ranks before it fails (`LESIONLAB_DIST_TIMEOUT`)."""
    raw = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_SECONDS))
    try:
        seconds = int(raw)
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: give the collective timeout in seconds, a positive number")
    return seconds


def rank_device(device: torch.device) -> torch.device:
    """The device this rank trains on: `cuda:LOCAL_RANK` on a GPU node, else `device` unchanged."""
    if device.type == "cuda" and launched():
        local = int(os.environ["LOCAL_RANK"])
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local}: this node has {torch.cuda.device_count()} CUDA "
                              f"device(s); start at most that many processes per node (--nproc-per-node).")
        return torch.device("cuda", local)
    return device


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group (once per process) and return this rank's training device.

    Also gives each rank its share of the node's cores as threads (torchrun sets OMP_NUM_THREADS=1; a
    recipe's `threads` still overrides), and silences stdout on every rank but 0 (whose progress bars
    `show_progress` turns off).
    """
    if not launched():
        return device
    device = rank_device(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=timeout_seconds()),
                                device_id=device if device.type == "cuda" else None)
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local_size))
        if not is_main():
            sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (kept for the process's life)
    return device


def show_progress() -> bool:
    """Whether this process shows progress bars (rank 0 alone)."""
    return is_main()


def barrier() -> None:
    """Wait until every rank arrives (nothing when alone)."""
    if active():
        with collective("barrier"):
            dist.barrier()


@contextmanager
def collective(what: str, failures: tuple[type[BaseException], ...] = (RuntimeError,)) -> Iterator[None]:
    """Turn a failed collective into a clear error naming this rank and what it waited for.

    Around one collective any RuntimeError is its failure (gloo raises plain ones); around a whole run
    (`failures=()`) only torch.distributed's own errors, so that a bug stays a bug.
    """
    try:
        yield
    except (dist.DistError, *failures) as error:
        raise PeerLostError(
            f"rank {rank()} of {world_size()}: {what} with the other processes failed ({error}). Another "
            f"process of this run stopped (see its own error above; torchrun names the failed rank) or took "
            f"longer than {TIMEOUT_ENV}={timeout_seconds()} s. The run keeps its last completed epoch; "
            f"continue it with `--resume`."
        ) from error


@contextmanager
def main_first() -> Iterator[None]:
    """Run the body on rank 0 first, then on the others: rank 0 builds what they then find ready."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def _collective_device() -> torch.device:
    """Where tensors must be for the backend's collectives (NCCL: this rank's GPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_json(make: Callable[[], T]) -> T:
    """`make()` on rank 0, its JSON-able result sent to every rank (the others do not call `make`)."""
    if not active():
        return make()
    device = _collective_device()
    payload = json.dumps(make()).encode() if is_main() else b""
    length = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    with collective("sending a record from rank 0"):
        dist.broadcast(length, src=0)
        data = (torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device) if is_main()
                else torch.empty(int(length.item()), dtype=torch.uint8, device=device))
        dist.broadcast(data, src=0)
    return json.loads(bytes(data.cpu().numpy().tobytes()).decode())


def broadcast_tensor(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """Rank 0's tensor (or None) on every rank, on the CPU; the others pass None."""
    if not active():
        return tensor
    header = broadcast_json(lambda: None if tensor is None else
                            {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")})
    if header is None:
        return None
    device = _collective_device()
    data = (tensor.contiguous().to(device) if is_main()
            else torch.empty(header["shape"], dtype=getattr(torch, header["dtype"]), device=device))
    with collective("receiving a tensor from rank 0"):
        dist.broadcast(data, src=0)
    return data.cpu()


def local_rows(count: int, of_rank: int | None = None) -> slice:
    """The contiguous part of `count` rows that a rank takes: as even as possible, lower ranks first."""
    size = world_size()
    index = rank() if of_rank is None else of_rank
    base, extra = divmod(count, size)
    start = index * base + min(index, extra)
    return slice(start, start + base + (1 if index < extra else 0))


def check_batch_size(batch_size: int, key: str) -> None:
    """A global batch must split evenly over the ranks, so every rank steps on the same share."""
    size = world_size()
    if batch_size % size:
        nearest = max(size, batch_size // size * size)
        raise ConfigError(f"recipe key {key!r}: the global batch of {batch_size} does not split over {size} "
                          f"processes; use a multiple of {size} (e.g. --set {key}={nearest}).")


class RankBatches:
    """A batch sampler: this rank's slice of every global batch of one global draw (`stream`).

    `drop_last` drops a partial last global batch, exactly as the single-process DataLoader would.
    """

    def __init__(self, stream: Sequence[int], batch_size: int, drop_last: bool) -> None:
        self.stream = [int(index) for index in stream]
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __len__(self) -> int:
        full, rest = divmod(len(self.stream), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch = self.stream[start:start + self.batch_size]
            yield batch[local_rows(len(batch))]


def local_part(value: Any) -> Any:
    """This rank's rows of a global batch: a tensor, or a tuple/list of them (labels with teacher logits)."""
    if isinstance(value, (tuple, list)):
        return type(value)(local_part(item) for item in value)
    return value[local_rows(len(value))]


def local_batches(batches: Iterator[T]) -> Iterator[T]:
    """This rank's part of every global batch (cached features: cheap to slice after the global draw)."""
    if not active():
        yield from batches
        return
    for batch in batches:
        yield local_part(batch)


def local_subset(dataset: Dataset) -> Dataset:
    """This rank's contiguous part of a dataset (validation is split across ranks, then gathered)."""
    if not active():
        return dataset
    rows = local_rows(len(dataset))  # type: ignore[arg-type]
    return Subset(dataset, range(rows.start, rows.stop))


def rank_seed(seed: int) -> int:
    """A per-rank variant of a seed for augmentation and dropout (rank 0 keeps the seed itself)."""
    return (seed + rank()) % 2**63


class _StepForward(nn.Module):
    """The model as a module whose forward is the stage's training forward (whole model, frozen prefix,
    or head on cached features), so one DDP wrapper serves every way a stage trains."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.function: Callable[[torch.Tensor], torch.Tensor] = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.function(inputs)


def synchronised(model: nn.Module,
                 forward: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """`forward` run through DistributedDataParallel over `model` (`forward` itself when alone).

    DDP averages the gradients of the parameters that require them when it is built, so it is rebuilt when
    that set changes (a new stage); the earlier wrapper is released first, its gradient hooks with it.
    """
    if not active():
        return forward
    trainable = tuple(id(parameter) for parameter in model.parameters() if parameter.requires_grad)
    key = (id(model), trainable)
    if not _wrapped or _wrapped[0][0] != key:
        _wrapped.clear()
        gc.collect()
        device = next(model.parameters()).device
        wrapper = DistributedDataParallel(_StepForward(model),
                                          device_ids=[device.index] if device.type == "cuda" else None)
        _wrapped.append((key, wrapper))
    wrapper = _wrapped[0][1]
    wrapper.module.function = forward
    return wrapper


def sync_batchnorm(model: nn.Module, enabled: bool) -> nn.Module:
    """BatchNorm synchronised across ranks when `sync_bn: true` (a multi-process run only)."""
    if not (enabled and active()):
        return model
    if next(model.parameters()).device.type != "cuda":
        raise ConfigError("recipe key 'sync_bn': synchronised BatchNorm needs CUDA devices (PyTorch's "
                          "SyncBatchNorm); on a CPU set sync_bn=false (BatchNorm per process).")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def sync_buffers(*modules: nn.Module | None) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics, a weight average's count)."""
    if not active():
        return
    with collective("sharing rank 0's BatchNorm statistics"):
        for module in modules:
            if module is not None:
                for buffer in module.buffers():
                    dist.broadcast(buffer.data, src=0)


def mean_over_ranks(mean: float, count: int) -> tuple[float, int]:
    """The global mean and count of per-rank (mean, count) pairs, e.g. an epoch's training loss."""
    if not active():
        return mean, count
    totals = torch.tensor([mean * count, float(count)], dtype=torch.float64, device=_collective_device())
    with collective("summing the epoch's training loss"):
        dist.all_reduce(totals)
    total, seen = totals.tolist()
    return total / max(seen, 1.0), int(seen)


def gather_rows(values: np.ndarray) -> np.ndarray:
    """Every rank's rows of a split array (validation labels, predictions), concatenated in rank order."""
    if not active():
        return values
    device = _collective_device()
    tensor = torch.as_tensor(np.ascontiguousarray(values)).to(device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size())]
    with collective("gathering validation predictions"):
        dist.all_gather(sizes, torch.tensor([len(tensor)], dtype=torch.int64, device=device))
        longest = int(max(size.item() for size in sizes))
        padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=device)
        padded[:len(tensor)] = tensor
        parts = [torch.empty_like(padded) for _ in range(world_size())]
        dist.all_gather(parts, padded)
    return torch.cat([part[:int(size.item())] for part, size in zip(parts, sizes, strict=True)]).cpu().numpy()


def gather_evaluation(loss: float, truth: np.ndarray,
                      predictions: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The whole validation part's mean loss, labels and predictions from every rank's part."""
    if not active():
        return loss, truth, predictions
    mean_loss, _ = mean_over_ranks(loss, len(truth))
    return mean_loss, gather_rows(truth), gather_rows(predictions)

