"""The decoded-image cache: built once, reused, rebuilt when stale or half-written, equal to live decoding."""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lesionlab.data import cache as cache_module
from lesionlab.data.cache import CACHE_ENV, DecodedImageCache, default_cache_root
from lesionlab.data.dataset import LesionDataset
from lesionlab.data.readers import read_dataset
from lesionlab.data.readers.samples import SampleTable
from lesionlab.data.transforms import eval_transform
from lesionlab.errors import DataError

SIZE = 16


@pytest.fixture
def table(tiny_ham_dataset: Callable[..., Path]) -> SampleTable:
    return read_dataset(tiny_ham_dataset(images_per_class=2))


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every image the cache decodes."""
    calls: list[str] = []
    real = cache_module.load_resized_array

    def counting(path: str, size: int) -> np.ndarray:
        calls.append(path)
        return real(path, size)

    monkeypatch.setattr(cache_module, "load_resized_array", counting)
    return calls


def test_second_ensure_is_a_hit(table: SampleTable, tmp_path: Path, decode_calls: list[str]) -> None:
    DecodedImageCache(table.fingerprint, SIZE, tmp_path).ensure(table.samples, progress=False)
    assert len(decode_calls) == len(table)
    reopened = DecodedImageCache(table.fingerprint, SIZE, tmp_path)
    reopened.ensure(table.samples, progress=False)
    assert len(decode_calls) == len(table)
    assert reopened.is_ready([sample.image_id for sample in table.samples])
    assert reopened.get(table.samples[3].image_id).shape == (SIZE, SIZE, 3)


def test_index_of_another_fingerprint_or_size_is_stale(
    table: SampleTable, tmp_path: Path, decode_calls: list[str]
) -> None:
    cache = DecodedImageCache(table.fingerprint, SIZE, tmp_path)
    cache.ensure(table.samples, progress=False)
    index = json.loads(cache.index_path.read_text())
    index["fingerprint"] = "0" * 64
    cache.index_path.write_text(json.dumps(index))
    assert not cache.is_ready()
    DecodedImageCache(table.fingerprint, SIZE, tmp_path).ensure(table.samples, progress=False)
    assert len(decode_calls) == 2 * len(table)
    assert json.loads(cache.index_path.read_text())["fingerprint"] == table.fingerprint
    assert not DecodedImageCache(table.fingerprint, SIZE + 1, tmp_path).is_ready()


def test_half_written_array_is_ignored_and_rebuilt(
    table: SampleTable, tmp_path: Path, decode_calls: list[str]
) -> None:
    cache = DecodedImageCache(table.fingerprint, SIZE, tmp_path)
    cache.ensure(table.samples, progress=False)
    expected = cache.get(table.samples[-1].image_id)
    cache.array_path.write_bytes(cache.array_path.read_bytes()[:500])
    assert not cache.is_ready()
    fresh = DecodedImageCache(table.fingerprint, SIZE, tmp_path)
    fresh.ensure(table.samples, progress=False)
    assert len(decode_calls) == 2 * len(table)
    assert np.array_equal(fresh.get(table.samples[-1].image_id), expected)


def test_failed_build_leaves_no_cache(table: SampleTable, tmp_path: Path) -> None:
    Path(table.samples[5].path).write_bytes(b"broken")
    cache = DecodedImageCache(table.fingerprint, SIZE, tmp_path)
    with pytest.raises(DataError, match=Path(table.samples[5].path).name):
        cache.ensure(table.samples, progress=False)
    assert [path for path in tmp_path.iterdir() if path != cache.lock_path] == [], "only the build lock stays"
    assert not cache.is_ready()


def test_unbuilt_cache_and_unknown_id_are_clear_errors(table: SampleTable, tmp_path: Path) -> None:
    cache = DecodedImageCache(table.fingerprint, SIZE, tmp_path)
    with pytest.raises(DataError, match="missing or stale"):
        cache.get(table.samples[0].image_id)
    cache.ensure(table.samples[:3], progress=False)
    with pytest.raises(DataError, match=f"'{table.samples[4].image_id}' is not in the decoded-image cache"):
        cache.get(table.samples[4].image_id)


def test_cache_pickles_without_its_memmap(table: SampleTable, tmp_path: Path) -> None:
    cache = DecodedImageCache(table.fingerprint, SIZE, tmp_path)
    cache.ensure(table.samples, progress=False)
    first = cache.get(table.samples[0].image_id)
    clone = pickle.loads(pickle.dumps(cache))
    assert clone._pixels is None
    assert np.array_equal(clone.get(table.samples[0].image_id), first)


def test_default_root_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert default_cache_root() == tmp_path
    monkeypatch.delenv(CACHE_ENV)
    assert default_cache_root() == Path.home() / ".cache" / "lesionlab"


def test_dataset_items_match_with_and_without_cache(table: SampleTable, tmp_path: Path) -> None:
    cache = DecodedImageCache(table.fingerprint, SIZE, tmp_path)
    cache.ensure(table.samples, progress=False)
    transform = eval_transform(SIZE, False)
    cached = LesionDataset(table.samples, SIZE, transform, cache=cache)
    live = LesionDataset(table.samples, SIZE, transform)
    for index in (0, 7, len(table) - 1):
        (cached_image, cached_label), (live_image, live_label) = cached[index], live[index]
        assert cached_image.dtype == torch.float32 and cached_image.shape == (3, SIZE, SIZE)
        assert (
            torch.equal(cached_image, live_image) and cached_label == live_label == table.samples[index].label
        )
    raw = LesionDataset(table.samples, SIZE)[2][0]
    assert raw.dtype == torch.uint8 and raw.shape == (3, SIZE, SIZE)


def test_dataset_refuses_a_cache_of_another_size_or_unbuilt(table: SampleTable, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="holds 16px images but the dataset wants 32px"):
        LesionDataset(table.samples, 32, cache=DecodedImageCache(table.fingerprint, SIZE, tmp_path))
    with pytest.raises(DataError, match="missing, stale or lacks"):
        LesionDataset(table.samples, SIZE, cache=DecodedImageCache(table.fingerprint, SIZE, tmp_path))


def test_dataloader_workers_read_the_cache_in_their_own_processes(table: SampleTable, tmp_path: Path) -> None:
    cache = DecodedImageCache(table.fingerprint, SIZE, tmp_path)
    cache.ensure(table.samples, progress=False)
    cache.get(table.samples[0].image_id)
    dataset = LesionDataset(table.samples, SIZE, cache=cache)
    batches = list(DataLoader(dataset, batch_size=4, num_workers=2))
    images = torch.cat([images for images, _ in batches])
    expected = torch.stack([LesionDataset(table.samples, SIZE)[index][0] for index in range(len(table))])
    assert torch.equal(images, expected)


def test_a_full_disk_during_the_build_is_one_message_and_leaves_no_cache(
    tiny_ham_dataset: Callable[..., Path], tmp_path: Path
) -> None:
    """A real `lesionlab train` whose file-size limit (`ulimit -f`, how a full disk refuses a big write) is
    below the cache array's size: exit 2 with the message naming the array, no traceback, no half cache
    (only the build lock), and no half-made run folder."""
    import os
    import resource
    import subprocess
    import sys

    data = tiny_ham_dataset(images_per_class=10, images_per_lesion=1)  # 70 images: a 215 KB array at 32 px
    cache_root, runs = tmp_path / "cache", tmp_path / "runs"
    limit = 64 * 1024

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    recipe = "--set arch=small_cnn --set pretrained=none --set image_size=32 --set workers=0 --set device=cpu"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lesionlab",
            "train",
            "--data",
            str(data),
            "--runs-dir",
            str(runs),
            *recipe.split(),
        ],
        env={**os.environ, CACHE_ENV: str(cache_root)},
        preexec_fn=limit_file_size,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    message = rf"{cache_root}/decoded-\w+-32px-v\d+\.npy: cannot write it \(File too large\); free space"
    assert re.search(message, done.stderr), done.stderr
    assert [path.name for path in cache_root.iterdir() if not path.name.endswith(".lock")] == []
    assert not runs.exists() or list(runs.iterdir()) == []
