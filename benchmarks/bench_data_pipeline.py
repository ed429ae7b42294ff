"""Images per second of the training data pipeline: decoding on the fly versus the decoded-image cache.

Both modes iterate a DataLoader over `LesionDataset` with the `reference` augmentation on the same N real
images, in one process run, so the ratio compares like with like. Each mode runs `--epochs` passes and the
fastest counts (the first pass also warms the page cache). The one-off cache build is timed separately.

    .venv/bin/python benchmarks/bench_data_pipeline.py --n 512 --workers 2
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from lesionlab.data.cache import DecodedImageCache
from lesionlab.data.dataset import LesionDataset
from lesionlab.data.readers import read_dataset
from lesionlab.data.readers.samples import Sample, compute_fingerprint
from lesionlab.data.transforms import train_transform
from lesionlab.tables import Table, format_table

BATCH_SIZE = 50


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", help="dataset (default: $LESIONLAB_DATA, then ../shared/data/ham10000)")
    parser.add_argument("--n", type=int, default=512, help="number of images (default 512)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument(
        "--workers", type=int, default=2, help="DataLoader workers (default 2; 0 = main process)"
    )
    parser.add_argument(
        "--epochs", type=int, default=2, help="passes per mode; the fastest counts (default 2)"
    )
    return parser.parse_args()


def spread_sample(samples: list[Sample], count: int) -> list[Sample]:
    """`count` samples spread evenly over the table, so every class and image folder is represented."""
    step = max(len(samples) // count, 1)
    return samples[::step][:count]


def fastest_epoch_seconds(dataset: LesionDataset, workers: int, epochs: int) -> float:
    """Wall time of the fastest full pass of a DataLoader over `dataset`."""
    loader = DataLoader(dataset, batch_size=BATCH_SIZE, num_workers=workers, persistent_workers=workers > 0)
    best = float("inf")
    for _ in range(epochs):
        start = time.perf_counter()
        for _batch in loader:
            pass
        best = min(best, time.perf_counter() - start)
    return best


def throughput_row(name: str, count: int, seconds: float, baseline_seconds: float) -> tuple[str, ...]:
    return name, f"{seconds:.2f}", f"{count / seconds:,.0f}", f"{baseline_seconds / seconds:.2f}x"


def main() -> None:
    args = parse_args()
    samples = spread_sample(read_dataset(args.data).samples, args.n)
    transform = train_transform("reference", args.size, False)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="lesionlab-bench-cache-") as cache_root:
        cache = DecodedImageCache(compute_fingerprint(samples), args.size, cache_root)
        start = time.perf_counter()
        cache.build(samples, workers=2, progress=False)
        build_seconds = time.perf_counter() - start
        live_seconds = fastest_epoch_seconds(
            LesionDataset(samples, args.size, transform), args.workers, args.epochs
        )
        cached_seconds = fastest_epoch_seconds(
            LesionDataset(samples, args.size, transform, cache), args.workers, args.epochs
        )
    count = len(samples)
    rows = (
        throughput_row("decode on the fly (baseline)", count, live_seconds, live_seconds),
        throughput_row("decoded-image cache", count, cached_seconds, live_seconds),
    )
    print(
        f"{count} images, {args.size}x{args.size}, reference augmentation, batch {BATCH_SIZE}, "
        f"{args.workers} DataLoader workers, fastest of {args.epochs} epochs, torch threads "
        f"{torch.get_num_threads()}"
    )
    print(format_table(Table(("pipeline", "seconds/epoch", "images/s", "speed-up"), rows)))
    build_rate = count / build_seconds
    print(f"\nOne-off cache build (2 decode threads): {build_seconds:.2f} s ({build_rate:,.0f} images/s)")


if __name__ == "__main__":
    main()
