"""What each backbone costs on this CPU: training steps and forward passes per second, as ratios to
MobileNetV3-Small measured in the same run.

Every compute-bound choice of a recipe (which architecture, which input size, how many epochs fit in a
budget) rests on these ratios, so they are measured, not taken from FLOP counts: on a 2-core CPU the
depthwise convolutions, squeeze-excitation blocks and hard-swish activations of MobileNetV3 are bound by
memory traffic rather than arithmetic, and FLOPs mispredict their cost.

Each architecture is built as lesionlab trains it (`lesionlab.models.registry.build_model` with its reference
head, channels_last) and timed on random input batches, so the figures isolate the network from the data
pipeline (`bench_training.py` times that). A training step is forward, cross-entropy, backward and an AdamW
step in fp32, every layer trainable; a forward pass runs in eval mode under `torch.inference_mode`, in fp32
and, where the CPU has native bf16, under bf16 autocast. The architectures alternate within every repeat and
each keeps its fastest repeat, so a burst of load from other processes hurts all alike.

    nice -n 19 .venv/bin/python benchmarks/bench_architectures.py --sizes 192 224
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from torch import nn

from lesionlab.classes import NUM_CLASSES
from lesionlab.models.registry import ARCHITECTURES, build_model
from lesionlab.precision import native_bf16
from lesionlab.tables import Table, format_table

BASELINE = "mobilenet_v3_small"
DEFAULT_ARCHS = ("mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_lite0")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=list(DEFAULT_ARCHS), choices=sorted(ARCHITECTURES),
                        help=f"architectures to time; {BASELINE} is always included as the baseline")
    parser.add_argument("--sizes", nargs="+", type=int, default=[224], help="input sizes (default 224)")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size (default 32)")
    parser.add_argument("--eval-batch-size", type=int, default=128, help="forward batch size (default 128)")
    parser.add_argument("--steps", type=int, default=4, help="timed batches per repeat (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats, the fastest kept (default 3)")
    parser.add_argument("--threads", type=int, help="torch threads (default: PyTorch's, one per core)")
    args = parser.parse_args(argv)
    args.archs = [BASELINE, *(arch for arch in dict.fromkeys(args.archs) if arch != BASELINE)]
    return args


def training_step(model: nn.Module, batch: torch.Tensor) -> Callable[[], None]:
    """One fp32 training step of every layer on `batch`."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    labels = torch.arange(len(batch)) % NUM_CLASSES

    def step() -> None:
        model.train()
        loss = nn.functional.cross_entropy(model(batch), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def forward_pass(model: nn.Module, batch: torch.Tensor, bf16: bool) -> Callable[[], None]:
    """One eval-mode forward pass of `batch`, under bf16 autocast if asked."""
    def forward() -> None:
        model.eval()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
        with torch.inference_mode(), autocast:
            model(batch)

    return forward


def images_per_second(measures: dict[str, tuple[Callable[[], None], int]], steps: int,
                      repeats: int) -> dict[str, float]:
    """The best images/s of each measure over `repeats` alternating repeats of `steps` calls (one warm-up
    call first, so kernel set-up does not count)."""
    best = dict.fromkeys(measures, 0.0)
    for run, _ in measures.values():
        run()
    for _ in range(repeats):
        for name, (run, images) in measures.items():
            start = time.perf_counter()
            for _ in range(steps):
                run()
            best[name] = max(best[name], steps * images / (time.perf_counter() - start))
    return best


def random_batch(count: int, size: int) -> torch.Tensor:
    """A normalised-looking input batch in channels_last, as lesionlab feeds its models on CPU."""
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(count, 3, size, size, generator=generator)
    return batch.contiguous(memory_format=torch.channels_last)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bf16 = native_bf16(torch.device("cpu"))
    models = {arch: build_model(arch, pretrained="none").to(memory_format=torch.channels_last)
              for arch in args.archs}
    params = {arch: sum(p.numel() for p in model.parameters()) for arch, model in models.items()}
    rows: list[tuple[str, ...]] = []
    for size in args.sizes:
        train_batch = random_batch(args.batch_size, size)
        eval_batch = random_batch(args.eval_batch_size, size)
        measures: dict[str, tuple[Callable[[], None], int]] = {}
        for arch, model in models.items():
            measures[f"{arch} train"] = (training_step(model, train_batch), args.batch_size)
            measures[f"{arch} fp32"] = (forward_pass(model, eval_batch, False), args.eval_batch_size)
            if bf16:
                measures[f"{arch} bf16"] = (forward_pass(model, eval_batch, True), args.eval_batch_size)
        speed = images_per_second(measures, args.steps, args.repeats)
        for arch in args.archs:
            cells = [arch, str(size), f"{params[arch] / 1e6:.2f}M"]
            for kind in ("train", "fp32", "bf16"):
                key = f"{arch} {kind}"
                if key in speed:
                    ratio = speed[key] / speed[f"{BASELINE} {kind}"]
                    cells += [f"{speed[key]:.1f}", f"{ratio:.2f}"]
                else:
                    cells += ["–", "–"]
            rows.append(tuple(cells))
    headers = ("architecture", "size", "params", "train img/s", "x Small", "fp32 fwd img/s", "x Small",
               "bf16 fwd img/s", "x Small")
    print(f"threads {torch.get_num_threads()}, train batch {args.batch_size}, forward batch "
          f"{args.eval_batch_size}, fastest of {args.repeats} x {args.steps} batches; load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    print(format_table(Table(headers, tuple(rows), numeric_from=1)))


if __name__ == "__main__":
    main()
