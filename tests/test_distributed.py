"""Multi-process training rules, without processes: the ranks' slices of one global draw, and a cache that
several processes ensure at once is built once."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lesionlab.data.cache import DecodedImageCache
from lesionlab.data.readers import read_dataset
from lesionlab.errors import ConfigError
from lesionlab.training import distributed
from lesionlab.training.imbalance import make_sampler

REFERENCE_WEIGHTS = [4, 4, 2, 6, 2, 1, 6]


def as_rank(monkeypatch: pytest.MonkeyPatch, rank: int, size: int) -> None:
    """Make this process answer as rank `rank` of `size` (only the split arithmetic depends on it)."""
    monkeypatch.setattr(distributed, "rank", lambda: rank)
    monkeypatch.setattr(distributed, "world_size", lambda: size)


def single_process_batches(labels: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """The batches of indices one process trains on: the weighted sampler through a DataLoader."""
    sampler = make_sampler(labels, REFERENCE_WEIGHTS, torch.Generator().manual_seed(seed))
    assert sampler is not None
    draws = sampler.num_samples
    loader = DataLoader(list(range(len(labels))), batch_size=batch_size, sampler=sampler,
                        drop_last=draws > batch_size)
    return [batch.tolist() for batch in loader]


@pytest.mark.parametrize(("size", "batch_size", "items"),
                         [(2, 16, 300), (4, 16, 300), (3, 12, 41), (2, 64, 20)])
def test_the_ranks_global_draw_is_the_single_process_draw(monkeypatch: pytest.MonkeyPatch, size: int,
                                                          batch_size: int, items: int) -> None:
    labels = list(np.random.default_rng(0).integers(0, 7, size=items))
    expected = single_process_batches(labels, batch_size, seed=123)
    per_rank = []
    for rank in range(size):
        as_rank(monkeypatch, rank, size)
        sampler = make_sampler(labels, REFERENCE_WEIGHTS, torch.Generator().manual_seed(123))
        stream = list(sampler)
        per_rank.append(list(distributed.RankBatches(stream, batch_size, drop_last=len(stream) > batch_size)))
    assert len({len(batches) for batches in per_rank}) == 1, "every rank must take the same number of steps"
    steps = [[index for batches in per_rank for index in batches[step]] for step in range(len(per_rank[0]))]
    assert steps == expected
    assert all(batches[0] for batches in per_rank), "no rank may get an empty batch"


def test_local_rows_partition_in_rank_order(monkeypatch: pytest.MonkeyPatch) -> None:
    as_rank(monkeypatch, 0, 3)
    slices = [distributed.local_rows(10, rank) for rank in range(3)]
    assert [(part.start, part.stop) for part in slices] == [(0, 4), (4, 7), (7, 10)]


def test_a_global_batch_that_does_not_split_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    as_rank(monkeypatch, 0, 4)
    distributed.check_batch_size(48, "stages.0.batch_size")
    with pytest.raises(ConfigError, match=r"stages\.1\.batch_size.*multiple of 4"):
        distributed.check_batch_size(50, "stages.1.batch_size")


def test_alone_every_helper_is_the_identity() -> None:
    assert not distributed.active() and distributed.is_main() and distributed.world_size() == 1
    values = np.arange(5)
    assert distributed.gather_rows(values) is values
    assert distributed.mean_over_ranks(1.5, 4) == (1.5, 4)
    assert distributed.broadcast_json(lambda: {"a": 1}) == {"a": 1}
    assert distributed.rank_seed(7) == 7


def _ensure(root: str, cache_root: str, barrier: multiprocessing.synchronize.Barrier,
            built: multiprocessing.queues.Queue) -> None:
    table = read_dataset(root)
    cache = DecodedImageCache(table.fingerprint, 16, cache_root)
    barrier.wait()
    built.put(cache.ensure(table.samples, workers=1, progress=False))


def test_two_processes_ensuring_one_cache_build_it_once(tiny_ham_dataset: Callable[..., Path],
                                                       tmp_path: Path) -> None:
    root = tiny_ham_dataset(images_per_class=4)
    context = multiprocessing.get_context("spawn")
    barrier, built = context.Barrier(2), context.Queue()
    processes = [context.Process(target=_ensure, args=(str(root), str(tmp_path), barrier, built))
                 for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    assert sorted(built.get(timeout=5) for _ in processes) == [False, True]
    table = read_dataset(root)
    cache = DecodedImageCache(table.fingerprint, 16, tmp_path)
    assert cache.is_ready([sample.image_id for sample in table.samples])
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
