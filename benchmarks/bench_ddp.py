"""Training throughput of one process against N DDP processes (torchrun), measured in one run.

Each row is a real `lesionlab train` of one fine-tune stage (every layer trains, BatchNorm `train`) on the
same lesion-grouped subset of real images, the same recipe and the same global batch; only the process
count differs. On a CPU each process gets its share of the cores (gloo); on a GPU node each gets one GPU
(NCCL), so the same script measures both. Images/s is the training part of the last epoch as history.csv
records it (all ranks' images over rank 0's time), so the first epoch's warm-up is left out. Run from the
repository root:

    nice -n 19 .venv/bin/python benchmarks/bench_ddp.py --subset 400 --processes 2
    .venv/bin/python benchmarks/bench_ddp.py --arch mobilenet_v3_small --size 224 --processes 8 --batch 256
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from lesionlab.tables import Table, format_table

REPO_ROOT = Path(__file__).resolve().parents[1]


def train(processes: int, runs: Path, args: argparse.Namespace, env: dict[str, str]) -> float:
    """Train on `processes` processes; return the last epoch's training images per second."""
    name = f"p{processes}"
    stage = (f"[{{trainable: all, bn: train, epochs: {args.epochs}, batch_size: {args.batch}, "
             f"eval_batch_size: 64, lr: 0.001, optimizer: adamw, feature_cache: null}}]")
    lesionlab = ["-m", "lesionlab", "train", "--data", args.data, "--subset", str(args.subset),
                 "--runs-dir", str(runs), "--name", name, "--set", f"arch={args.arch}",
                 "--set", f"pretrained={args.pretrained}", "--set", f"image_size={args.size}",
                 "--set", f"workers={args.workers}", "--set", f"device={args.device}",
                 "--set", f"stages={stage}"]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                 str(processes)] if processes > 1 else [sys.executable])
    done = subprocess.run([*launcher, *lesionlab], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{processes} process(es) failed:\n{done.stderr[-3000:]}")
    with (runs / name / "history.csv").open(newline="") as handle:
        return float(list(csv.DictReader(handle))[-1]["images_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO_ROOT / ".." / "shared" / "data" / "ham10000"))
    parser.add_argument("--subset", type=int, default=400)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32, help="the global batch (every row)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "LESIONLAB_CACHE": os.environ.get("LESIONLAB_CACHE", f"{scratch}/cache")}
        rows, baseline = [], None
        for processes in (1, args.processes):
            speed = train(processes, Path(scratch) / "runs", args, env)
            baseline = baseline or speed
            rows.append((f"{processes} process(es)", f"{speed:.0f}", f"{speed / baseline:.2f}x"))
    print(f"{args.arch} at {args.size} px, {args.subset} images, global batch {args.batch}, "
          f"{os.cpu_count()} CPU core(s)")
    print(format_table(Table(("processes", "train images/s", "ratio"), tuple(rows))))


if __name__ == "__main__":
    main()
