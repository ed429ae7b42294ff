"""Batch throughput of one exported model under engine settings beyond `lesionlab bench`'s: OpenVINO's
throughput hint with one stream per thread, a static batch, bf16 with chosen layers kept in fp32, and ONNX
Runtime options, each against ONNX Runtime fp32 as lesionlab runs it, measured in the same run.

For an exported `model.onnx` (its output is probabilities), every configuration runs the same `--images`
images of the run's validation part (`--run`; random images without it) in batches of `--batch-size`. The
configurations alternate for `--rounds` rounds and each keeps its fastest round, so a burst of other work
inflates one round of one configuration, not its figure. The table gives images/s (wall) and process CPU
time per batch as ratios against ONNX Runtime fp32, and the largest probability difference from ONNX
Runtime fp32 over all the images (which equals PyTorch fp32 to about 2e-6, `lesionlab bench`).

Configurations:
- `onnxruntime fp32` (the baseline): lesionlab's session (`ORT_ENABLE_ALL`, `--threads` intra-op threads);
  `..., no spinning`: worker threads sleep instead of spinning between operators; `..., extended
  optimizations`: without the layout optimizations (NCHWc) that `ORT_ENABLE_ALL` adds;
- `openvino fp32|bf16 latency`: lesionlab's OpenVINO predictor (one stream using every thread, dynamic
  batch); `throughput`: `PERFORMANCE_HINT THROUGHPUT` with one stream per thread, each batch split across
  the streams and run asynchronously; `static batch`: the model reshaped to the batch size first;
- `openvino bf16, ... kept fp32`: bf16 with some nodes marked to keep their precision (the
  `disable_fp16_compression` runtime attribute): the depthwise convolutions, the network up to and including
  its third depthwise convolution, or the classifier (every `MatMul` and what follows it).

Image-only models (one input).

    nice -n 19 .venv/bin/python benchmarks/bench_engine_configs.py RUN/export/model.onnx --run RUN --threads 2
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov
import openvino.properties as properties
import openvino.properties.hint as hints

from lesionlab.inference.onnx_backend import session_options
from lesionlab.inference.openvino_backend import OpenVinoPredictor, compile_config
from lesionlab.inference.run_samples import load_batch, split_samples
from lesionlab.tables import Table, format_table

KEEP_PRECISION = "disable_fp16_compression_0"
EARLY_DEPTHWISE = 3

Run = Callable[[np.ndarray], np.ndarray]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("onnx", type=Path, help="exported fp32 model.onnx (`lesionlab export RUN`)")
    parser.add_argument("--run", help="run directory whose validation images to use (default: random images)")
    parser.add_argument("--data", help="dataset of the run's split (default: as trained)")
    parser.add_argument("--images", type=int, default=128, help="images per round (default 128)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="threads (default: all cores)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds, the fastest kept (default 5)")
    return parser.parse_args(argv)


def onnxruntime_run(
    path: Path,
    threads: int,
    options: dict[str, str] | None = None,
    level: ort.GraphOptimizationLevel | None = None,
) -> Run:
    """ONNX Runtime as lesionlab runs it, with extra session config entries or another optimization level."""
    settings = session_options(threads)
    for key, value in (options or {}).items():
        settings.add_session_config_entry(key, value)
    if level is not None:
        settings.graph_optimization_level = level
    session = ort.InferenceSession(str(path), sess_options=settings, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


def openvino_model(path: Path, keep: str | None, batch_size: int | None) -> ov.Model:
    """The model read by OpenVINO, with nodes marked to keep their precision and an optional static batch."""
    model = ov.Core().read_model(path)
    if batch_size is not None:
        shape = model.inputs[0].get_partial_shape()
        shape[0] = batch_size
        model.reshape({model.inputs[0]: shape})
    for node in kept_nodes(model, keep):
        node.get_rt_info()[KEEP_PRECISION] = ""
    return model


def kept_nodes(model: ov.Model, keep: str | None) -> list[ov.Node]:
    """The nodes of `model` that a `keep` choice keeps in fp32, in topological order."""
    ordered = list(model.get_ordered_ops())
    if keep is None:
        return []
    if keep == "depthwise":
        return [node for node in ordered if node.get_type_name() == "GroupConvolution"]
    if keep == "early":
        depthwise = [
            index for index, node in enumerate(ordered) if node.get_type_name() == "GroupConvolution"
        ]
        return ordered[: depthwise[min(EARLY_DEPTHWISE, len(depthwise)) - 1] + 1]
    first = next(index for index, node in enumerate(ordered) if node.get_type_name() == "MatMul")
    return ordered[first:]


def openvino_run(
    path: Path,
    threads: int,
    precision: ov.Type,
    mode: str,
    keep: str | None = None,
    batch_size: int | None = None,
) -> Run:
    """OpenVINO at `precision` in `mode` (`latency`: one stream; `throughput`: one stream per thread, each
    batch split across them)."""
    core = ov.Core()
    model = openvino_model(path, keep, batch_size)
    if mode == "latency":
        config = {**compile_config(threads, "fp32"), hints.inference_precision: precision}
        request = core.compile_model(model, "CPU", config).create_infer_request()
        return lambda batch: np.array(request.infer([batch])[0])
    config = {
        hints.inference_precision: precision,
        hints.performance_mode: hints.PerformanceMode.THROUGHPUT,
        properties.inference_num_threads: threads,
        properties.num_streams: threads,
    }
    compiled = core.compile_model(model, "CPU", config)
    streams = int(compiled.get_property(properties.optimal_number_of_infer_requests))
    queue = ov.AsyncInferQueue(compiled, streams)
    outputs: dict[int, np.ndarray] = {}
    queue.set_callback(
        lambda request, index: outputs.__setitem__(index, np.array(request.get_output_tensor(0).data))
    )

    def run(batch: np.ndarray) -> np.ndarray:
        outputs.clear()
        parts = np.array_split(batch, streams)
        for index, part in enumerate(parts):
            queue.start_async([np.ascontiguousarray(part)], index)
        queue.wait_all()
        return np.concatenate([outputs[index] for index in range(len(parts))])

    return run


def configurations(path: Path, threads: int, batch_size: int) -> dict[str, Callable[[], Run]]:
    """Every configuration by label, built on demand; the first is the baseline."""
    f32, bf16 = ov.Type.f32, ov.Type.bf16
    return {
        "onnxruntime fp32 (lesionlab)": lambda: onnxruntime_run(path, threads),
        "onnxruntime fp32, no spinning": lambda: onnxruntime_run(
            path, threads, {"session.intra_op.allow_spinning": "0"}
        ),
        "onnxruntime fp32, extended optimizations": lambda: onnxruntime_run(
            path, threads, level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        ),
        "openvino fp32 latency (lesionlab)": lambda: openvino_run(path, threads, f32, "latency"),
        "openvino fp32 throughput": lambda: openvino_run(path, threads, f32, "throughput"),
        "openvino fp32 latency, static batch": lambda: openvino_run(
            path, threads, f32, "latency", batch_size=batch_size
        ),
        "openvino bf16 latency (lesionlab)": lambda: openvino_run(path, threads, bf16, "latency"),
        "openvino bf16 throughput": lambda: openvino_run(path, threads, bf16, "throughput"),
        "openvino bf16 latency, static batch": lambda: openvino_run(
            path, threads, bf16, "latency", batch_size=batch_size
        ),
        "openvino bf16, depthwise kept fp32": lambda: openvino_run(
            path, threads, bf16, "latency", "depthwise"
        ),
        "openvino bf16, first 3 blocks kept fp32": lambda: openvino_run(
            path, threads, bf16, "latency", "early"
        ),
        "openvino bf16, classifier kept fp32": lambda: openvino_run(
            path, threads, bf16, "latency", "classifier"
        ),
    }


def time_all(runs: dict[str, Run], batches: list[np.ndarray], rounds: int) -> dict[str, tuple[float, float]]:
    """Per configuration: the fastest round's wall seconds and process CPU seconds over all `batches`,
    the configurations alternating within each round."""
    best = {label: (math.inf, math.inf) for label in runs}
    for run in runs.values():
        run(batches[0])
    for _ in range(rounds):
        for label, run in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            for batch in batches:
                run(batch)
            taken = (time.perf_counter() - wall, time.process_time() - cpu)
            best[label] = min(best[label], taken)
    return best


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    size = ov.Core().read_model(args.onnx).inputs[0].get_partial_shape()[-1].get_length()
    if args.run:
        preprocessing = OpenVinoPredictor(args.onnx, threads=1).preprocessing
        images = load_batch(
            split_samples(args.run, "val", args.data, args.images, 0), preprocessing, "val"
        ).images
    else:
        images = np.random.default_rng(0).standard_normal((args.images, 3, size, size), dtype=np.float32)
    batches = [
        np.ascontiguousarray(images[start : start + args.batch_size])
        for start in range(0, len(images) - args.batch_size + 1, args.batch_size)
    ]
    runs = {
        label: build() for label, build in configurations(args.onnx, args.threads, args.batch_size).items()
    }
    reference = np.concatenate([next(iter(runs.values()))(batch) for batch in batches])
    differences = {
        label: float(np.abs(np.concatenate([run(batch) for batch in batches]) - reference).max())
        for label, run in runs.items()
    }
    seconds = time_all(runs, batches, args.rounds)
    count = len(batches) * args.batch_size
    base_wall, base_cpu = next(iter(seconds.values()))
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"{args.onnx}: {count} {'validation' if args.run else 'random'} images at {size} px in batches of "
        f"{args.batch_size}, {args.threads} threads, fastest of {args.rounds} rounds, load average {load}"
    )
    rows = tuple(
        (
            label,
            f"{count / wall:,.1f}",
            f"{base_wall / wall:.2f}x",
            f"{cpu * 1000 / len(batches):.1f}",
            f"{base_cpu / cpu:.2f}x",
            f"{differences[label]:.1e}",
        )
        for label, (wall, cpu) in seconds.items()
    )
    print(
        format_table(
            Table(
                (
                    "configuration",
                    "img/s",
                    "vs ORT fp32",
                    "CPU ms/batch",
                    "CPU vs ORT fp32",
                    "max |p - p_ORT fp32|",
                ),
                rows,
                numeric_from=1,
            )
        )
    )
    within = [(count / seconds[label][0], label) for label in runs if differences[label] <= 0.01]
    rate, label = max(within)
    print(f"fastest within 0.01 of ONNX Runtime fp32: {label}, {rate * base_wall / count:.2f}x")


if __name__ == "__main__":
    main()
