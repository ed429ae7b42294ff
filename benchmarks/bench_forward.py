"""Forward-only passes in fp32 and under bf16 autocast, with and without BatchNorm folding, eager or on ONNX
Runtime: the stage-1 feature cache, TTA inference, and optionally `lesionlab evaluate --tta` end to end.

These are the passes `precision: auto | bf16` moves to bf16 (see `lesionlab.precision`), that run a
BatchNorm-folded copy of the model (`lesionlab.models.fold`), and whose engine `forward_backend: auto` picks
(`lesionlab.forward_backend`: eager for the feature cache, ONNX Runtime in fp32 for TTA), timed through
lesionlab's own functions on the same N real images, in one process run. The rows of lesionlab's own choice
are marked `(lesionlab)`. The baseline of every row is eager fp32 without folding, each loader batch in one
forward call, the way these passes ran before folding and forward chunks existed: the same code with
`fold_batchnorm` replaced by the identity and `lesionlab.device.CPU_FORWARD_CHUNK` above the batch size.
Every other row runs forward calls of `CPU_FORWARD_CHUNK` images, as lesionlab does on a CPU.
- the stage-1 feature cache: `FeatureCache.build` (pooled backbone features of `--cache-views` augmented
  views of every image, the backbone frozen as in a head-only stage) inside `forward_precision`, as
  `train_stage` runs it;
- `evaluate`-style inference with test-time augmentation: `infer_view_logits` over the 6 default views with
  `InferenceSettings(precision=...)`.
Variants alternate and each keeps its fastest of `--repeats` passes, so a burst of load from other
processes hurts all alike and the first pass's kernel set-up does not count. images/s counts images (a TTA
image is 6 forward passes).

With `--evaluate`, `lesionlab evaluate RUN --tta` on the run's test part (needs `--run`) is timed whole,
eager fp32 unfolded in whole batches (the baseline) against lesionlab as it is (the recipe's
`forward_backend: auto`: ONNX Runtime in fp32), with `--forward-backend torch` (the recipe's
`precision: auto`: a parity check, then bf16 where it passes) and with `--forward-backend torch --precision
fp32` (eager, folded), alternating, its output written to a temporary folder.

Parity on the same images: `lesionlab.precision.check_parity` on the plain (identity) view, the same judgement
applied to the TTA-averaged probabilities, and how far the cached features move. Top-1 agreement is only
meaningful for a trained head: pass `--run RUN` to load a run's chosen model (its input size then becomes the
default `--size`); without it the ImageNet backbone has an untrained head, which decides no image.

    nice -n 19 .venv/bin/python benchmarks/bench_forward.py --n 256 --run runs/default
    nice -n 19 .venv/bin/python benchmarks/bench_forward.py --n 512 --augment dermoscopy --cache-views 2 \
        --run runs/default --evaluate
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from lesionlab.data.cache import DecodedImageCache
from lesionlab.data.dataset import LesionDataset
from lesionlab.data.readers import read_dataset
from lesionlab.data.readers.samples import Sample, compute_fingerprint
from lesionlab.data.transforms import PRESETS, eval_transform, train_transform
from lesionlab.evaluation.evaluate import EvaluationOptions, evaluate_run
from lesionlab.evaluation.inference import InferenceSettings, infer_view_logits
from lesionlab.forward_backend import AUTO, ONNXRUNTIME, TORCH, forward_engine
from lesionlab.models.checkpoint import load_run
from lesionlab.models.fold import fold_batchnorm
from lesionlab.models.freeze import resolve_plan, set_train_mode
from lesionlab.models.pixel_input import PixelInput
from lesionlab.models.registry import IMAGENET_MEAN, IMAGENET_STD, architecture, build_model
from lesionlab.precision import ParityCheck, check_parity, forward_precision, native_bf16, parity_from_logits
from lesionlab.scoring import Scoring
from lesionlab.tables import Table, format_table
from lesionlab.training.features import FeatureCache
from lesionlab.views import DEFAULT_VIEWS

ARCH = "mobilenet_v3_small"
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
Variant = tuple[str, bool, str, bool]  # precision, BatchNorm folded, engine, forward calls in chunks
VARIANTS: tuple[Variant, ...] = (("fp32", False, TORCH, False), ("fp32", False, TORCH, True),
                                 ("fp32", True, TORCH, True), ("fp32", True, ONNXRUNTIME, True),
                                 ("bf16", False, TORCH, True), ("bf16", True, TORCH, True))
BASELINE = VARIANTS[0]
FOLDING_USERS = ("lesionlab.evaluation.inference", "lesionlab.training.features", "lesionlab.precision")
DEFAULT_SIZE = 224
CACHE_SEED = 0
EVALUATIONS: dict[str, tuple[str | None, bool | None, str | None, bool]] = {
    "eager fp32 unfolded": ("fp32", False, TORCH, False),
    "lesionlab": (None, None, None, True),
    "recipe, torch": (None, None, TORCH, True),
    "fp32, torch": ("fp32", None, TORCH, True),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="dataset (default: $LESIONLAB_DATA, then ../shared/data/ham10000)")
    parser.add_argument("--n", type=int, default=256, help="number of images (default 256)")
    parser.add_argument("--size", type=int, help=f"input size (default: the run's, else {DEFAULT_SIZE})")
    parser.add_argument("--run", help="run directory whose chosen model to time (default: ImageNet backbone "
                                      "with an untrained head)")
    parser.add_argument("--batch-size", type=int, default=128,
                        help="batch size (default 128, the recipes' eval_batch_size)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    parser.add_argument("--cache-views", type=int, default=1, help="augmented views in the cache (default 1)")
    parser.add_argument("--augment", default="reference", choices=sorted(PRESETS),
                        help="augmentation of the cached views (default reference)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="passes per precision, the fastest kept (default 3)")
    parser.add_argument("--threads", type=int,
                        help="torch threads (default: PyTorch's, one per core); 1 keeps a busy machine's "
                             "lowest-priority run from two threads waiting on each other")
    parser.add_argument("--pretrained", default="imagenet",
                        help="backbone weights without --run: imagenet (default) or none (the smoke test)")
    parser.add_argument("--evaluate", action="store_true",
                        help="also time `lesionlab evaluate RUN --tta` on the test part (needs --run)")
    args = parser.parse_args(argv)
    if args.evaluate and not args.run:
        parser.error("--evaluate needs --run")
    return args


def variant_name(precision: str, fold: bool, engine: str = TORCH, chunked: bool = True) -> str:
    """A variant's key, e.g. `bf16 folded`, `fp32 folded, onnxruntime` or `fp32 unfolded, whole batches`."""
    on = ", onnxruntime" if engine == ONNXRUNTIME else ""
    whole = "" if chunked else ", whole batches"
    return f"{precision} {'folded' if fold else 'unfolded'}{on}{whole}"


def variant_label(precision: str, fold: bool, engine: str, chunked: bool, features: bool) -> str:
    """A variant's row label, lesionlab's own choice for the precision and kind of pass marked: folded in
    fp32, on the engine `forward_engine` picks under `auto` (eager for features, ONNX Runtime for logits),
    and eager unfolded in bf16."""
    fp32 = precision == "fp32"
    chosen = forward_engine(AUTO, precision, torch.device("cpu"), features=features)
    ours = " (lesionlab)" if fold == fp32 and engine == chosen and chunked else ""
    return f"{variant_name(precision, fold, engine, chunked)}{ours}"


@contextlib.contextmanager
def folding(fold: bool | None) -> Iterator[None]:
    """BatchNorm folding in every forward-only pass always (True), never (False), or as lesionlab chooses
    (None: in fp32 only, `lesionlab.models.fold.fold_for`)."""
    if fold is None:
        yield
        return
    def choice(model: nn.Module, precision: str) -> nn.Module:
        return fold_batchnorm(model) if fold else model

    with contextlib.ExitStack() as stack:
        for module in FOLDING_USERS:
            stack.enter_context(mock.patch(f"{module}.fold_for", choice))
        yield


@contextlib.contextmanager
def chunking(chunked: bool) -> Iterator[None]:
    """Forward calls of `CPU_FORWARD_CHUNK` images as lesionlab makes them (True), or each loader batch in one
    call (False), as before chunks existed."""
    if chunked:
        yield
        return
    with mock.patch("lesionlab.device.CPU_FORWARD_CHUNK", sys.maxsize):
        yield


def spread_sample(samples: list[Sample], count: int) -> list[Sample]:
    """`count` samples spread evenly over the table, so every class is represented."""
    step = max(len(samples) // count, 1)
    return samples[::step][:count]


def fastest(measures: dict[str, Callable[[], object]], repeats: int, progress: tqdm) -> dict[str, float]:
    """Seconds of the fastest of `repeats` passes of each measure, the measures alternating."""
    best = dict.fromkeys(measures, float("inf"))
    for _ in range(repeats):
        for name, measure in measures.items():
            progress.set_postfix_str(name)
            start = time.perf_counter()
            measure()
            best[name] = min(best[name], time.perf_counter() - start)
            progress.update()
    return best


def feature_parity(fp32: torch.Tensor, bf16: torch.Tensor) -> tuple[float, float]:
    """Smallest cosine similarity of a bf16 feature vector to its fp32 one, and the largest difference
    relative to the largest fp32 feature."""
    cosine = nn.functional.cosine_similarity(fp32.flatten(0, 1), bf16.flatten(0, 1), dim=1)
    return float(cosine.min()), float((fp32 - bf16).abs().max() / fp32.abs().max())


def parity_row(name: str, check: ParityCheck) -> tuple[str, ...]:
    """One line of the parity table."""
    return (name, str(check.images), str(check.decided_images), f"{check.top1_agreement:.3f}",
            f"{check.max_probability_difference:.4f}", f"{check.balanced_accuracy_fp32:.3f}",
            f"{check.balanced_accuracy_bf16:.3f}", "yes" if check.passed else "no")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    if not native_bf16(device):
        raise SystemExit("bench_forward: this CPU has no native bf16 (AVX512-BF16 or AMX): nothing to "
                         "compare")
    if args.run:
        model, card = load_run(args.run)
        size, mean, std, label = args.size or card.input_size, card.mean, card.std, f"run {args.run}"
    else:
        model = build_model(ARCH, pretrained=args.pretrained)
        size, mean, std = args.size or DEFAULT_SIZE, IMAGENET_MEAN, IMAGENET_STD
        label = f"{args.pretrained} backbone, untrained head"
    model = model.to(memory_format=torch.channels_last)
    pixels = PixelInput.normalising(model, mean, std)
    samples = spread_sample(read_dataset(args.data).samples, args.n)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="lesionlab-bench-") as cache_root:
        cache = DecodedImageCache(compute_fingerprint(samples), size, cache_root)
        cache.build(samples, workers=2, progress=False)
        train_set = LesionDataset(samples, size, train_transform(args.augment, size, False), cache)
        eval_set = LesionDataset(samples, size, eval_transform(size, False), cache)
        spec = architecture(ARCH)
        head_plan = resolve_plan("head", spec, "frozen")
        features: dict[str, torch.Tensor] = {}
        logits: dict[str, np.ndarray] = {}

        def build_cache(precision: str, fold: bool, engine: str, chunked: bool) -> None:
            set_train_mode(model, spec, head_plan)
            with folding(fold), chunking(chunked), forward_precision(precision, device):
                features[variant_name(precision, fold, engine, chunked)] = FeatureCache.build(
                    pixels, train_set, args.cache_views, args.batch_size, args.workers, CACHE_SEED, device,
                    True, forward_backend=engine).views

        def tta(precision: str, fold: bool, engine: str, chunked: bool) -> None:
            settings = InferenceSettings(device, args.batch_size, args.workers, True, precision, engine)
            name = variant_name(precision, fold, engine, chunked)
            with folding(fold), chunking(chunked):
                logits[name] = infer_view_logits(pixels, eval_set, settings, DEFAULT_VIEWS, f"TTA {name}")

        measures: dict[str, Callable[[], object]] = {}
        for key, run_pass in (("cache", build_cache), ("tta", tta)):
            for variant in VARIANTS:
                measures[f"{key}/{variant_name(*variant)}"] = (
                    lambda run_pass=run_pass, variant=variant: run_pass(*variant))
        evaluation_root = Path(cache_root) / "evaluate"
        if args.evaluate:
            for name, setting in EVALUATIONS.items():
                measures[f"evaluate/{name}"] = (
                    lambda name=name, setting=setting: evaluate_tta(args.run, evaluation_root / name,
                                                                    *setting))
        progress = tqdm(total=len(measures) * args.repeats + 1, desc="bench_forward", unit="pass")
        seconds = fastest(measures, args.repeats, progress)
        progress.set_postfix_str("parity")
        model.eval()
        loader = DataLoader(eval_set, batch_size=args.batch_size, num_workers=args.workers)
        plain = check_parity(pixels, ((images.contiguous(memory_format=torch.channels_last), labels)
                                     for images, labels in loader), device)
        progress.update()
        progress.close()
        evaluated = (evaluation_precision(evaluation_root / "recipe, torch") if args.evaluate else "")
        engine_checks = (evaluation_engine(evaluation_root / "lesionlab") if args.evaluate else "")

    count = len(samples)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"\nMobileNetV3-Small ({label}), {count} images at {size} px, batch {args.batch_size}, "
          f"{args.workers} workers, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, channels_last, "
          f"fastest of {args.repeats} passes, load average {load} (other processes skew every row)\n")
    passes = ((f"stage-1 feature cache, {args.cache_views} view(s) ({args.augment})", "cache",
               count * args.cache_views),
              (f"TTA inference, {len(DEFAULT_VIEWS)} views (infer_view_logits)", "tta", count))
    speed_rows = []
    for name, key, images in passes:
        baseline = seconds[f"{key}/{variant_name(*BASELINE)}"]
        for variant in VARIANTS:
            taken = seconds[f"{key}/{variant_name(*variant)}"]
            label = variant_label(*variant, features=key == "cache")
            speed_rows.append((name, label, f"{images / taken:,.1f}", f"{baseline / taken:.2f}x"))
            name = ""
    if args.evaluate:
        baseline = seconds["evaluate/eager fp32 unfolded"]
        labels = {"eager fp32 unfolded": "eager fp32 unfolded, whole batches",
                  "lesionlab": f"recipe's auto: {engine_checks} (lesionlab)",
                  "recipe, torch": f"--forward-backend torch: {evaluated} (lesionlab)",
                  "fp32, torch": "--forward-backend torch --precision fp32: folded (lesionlab)"}
        name = "evaluate --tta, test part (s)"
        for key, label in labels.items():
            speed_rows.append((name, label, f"{seconds[f'evaluate/{key}']:.1f} s",
                               f"{baseline / seconds[f'evaluate/{key}']:.2f}x"))
            name = ""
    print(format_table(Table(("forward-only pass", "variant", "img/s", "vs baseline"), tuple(speed_rows),
                             numeric_from=2)))

    labels = np.asarray([sample.label for sample in samples])
    fp32_key, bf16_key, bf16_folded_key = (variant_name("fp32", True), variant_name("bf16", False),
                                           variant_name("bf16", True))

    def tta_probabilities(view_logits: np.ndarray) -> np.ndarray:
        return Scoring((None,)).probabilities([view_logits])

    def tta_log(key: str) -> np.ndarray:
        return np.log(tta_probabilities(logits[key]))

    print(f"\nparity, bf16 against fp32 (folded) on the same {count} images "
          f"(lesionlab.precision.check_parity)")
    print(format_table(Table(("predictions", "images", "decided", "top-1 agreement", "max |p diff|",
                              "bal acc fp32", "bal acc bf16", "passes"),
                             (parity_row("plain (identity view), bf16 unfolded", plain),
                              parity_row(f"TTA mean of {len(DEFAULT_VIEWS)} views, bf16 unfolded",
                                         parity_from_logits(tta_log(fp32_key), tta_log(bf16_key), labels)),
                              parity_row(f"TTA mean of {len(DEFAULT_VIEWS)} views, bf16 folded",
                                         parity_from_logits(tta_log(fp32_key),
                                                            tta_log(bf16_folded_key), labels))))))
    unfolded_fp32 = variant_name("fp32", False)
    engine_key = variant_name("fp32", True, ONNXRUNTIME)
    for name, (first, second) in (("folded fp32 against unfolded fp32", (unfolded_fp32, fp32_key)),
                                  ("onnxruntime fp32 against folded fp32", (fp32_key, engine_key)),
                                  ("bf16 unfolded against folded fp32", (fp32_key, bf16_key)),
                                  ("bf16 folded against folded fp32", (fp32_key, bf16_folded_key))):
        cosine, relative = feature_parity(features[first], features[second])
        print(f"cached features, {name}: smallest cosine similarity {cosine:.5f}, largest difference "
              f"{relative:.2e} of the largest feature")
    folded_tta = np.abs(tta_probabilities(logits[fp32_key])
                        - tta_probabilities(logits[variant_name("fp32", False)])).max()
    print(f"TTA probabilities, folded fp32 against unfolded fp32: largest difference {folded_tta:.1e}")
    engine_tta = np.abs(tta_probabilities(logits[engine_key]) - tta_probabilities(logits[fp32_key])).max()
    engine_top1 = (tta_probabilities(logits[engine_key]).argmax(1)
                   == tta_probabilities(logits[fp32_key]).argmax(1)).mean()
    print(f"TTA probabilities, onnxruntime fp32 against eager folded fp32: largest difference "
          f"{engine_tta:.1e}, top-1 agreement {engine_top1:.4f}")


def evaluate_tta(run: str, out: Path, precision: str | None, fold: bool | None, backend: str | None,
                 chunked: bool) -> None:
    """`lesionlab evaluate RUN --tta` on the run's test part, written to `out`; `precision=None` and
    `backend=None` are the recipe's own."""
    options = EvaluationOptions(tta_views=tuple(DEFAULT_VIEWS), out_dir=out, precision=precision,
                                forward_backend=backend)
    with folding(fold), chunking(chunked), contextlib.redirect_stdout(io.StringIO()):
        evaluate_run(run, options)


def evaluation_facts(out: Path) -> dict[str, object]:
    """The `evaluation` section of an evaluation's metrics.json."""
    return dict(json.loads((out / "metrics.json").read_text())["evaluation"])


def evaluation_precision(out: Path) -> str:
    """The precision an evaluation chose, for the table."""
    return str(evaluation_facts(out)["precision"]["precision"])


def evaluation_engine(out: Path) -> str:
    """The engine each pass of an evaluation ran on, e.g. `onnxruntime x2`, for the table."""
    passes = [check["engine"] for check in evaluation_facts(out)["forward_backend"]["passes"]]
    return ", ".join(f"{engine} x{passes.count(engine)}" for engine in dict.fromkeys(passes)) or "torch"

if __name__ == "__main__":
    main()
