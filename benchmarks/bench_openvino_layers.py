"""Where OpenVINO spends a batch, per model precision: why int8 is not faster than fp32 on this CPU.

For an exported `model.onnx` (fp32, and bf16 through `INFERENCE_PRECISION_HINT`) and int8 IRs (given with
`--int8`, or made here by NNCF's plain post-training quantization with `--quantize PRESET...`, calibrated on
the run's training images), this compiles each model for a static batch on one thread with OpenVINO's
per-layer profiling on, times one batch of each model in turn for `--rounds` rounds, and prints:
- the smallest process CPU time per batch and its ratio against fp32. One thread and CPU time, not wall
  time, because other jobs share these cores: a thread that waits for a core accrues no CPU time. In a
  virtual machine the host can still stall a running thread (and caches are shared), so the smallest of the
  alternating rounds is kept;
- how the depthwise convolutions (`GroupConvolution`) execute (the kernel OpenVINO chose names the
  precision: `..._dw_f32` in an int8 model means they run in float, with a conversion on each side), and the
  share of the batch in depthwise convolutions, in the other convolutions and in `Reorder` nodes (layout and
  precision conversions);
- each model's largest (layer type, kernel) rows. Per-layer times are wall times of the nodes, so read them
  as shares of the model's own total.

Image-only models (one input).

    nice -n 19 .venv/bin/python benchmarks/bench_openvino_layers.py RUN/export/model.onnx --run RUN \\
        --quantize mixed performance --out /tmp/int8-presets
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.properties as properties
import openvino.properties.hint as hints

from lesionlab.inference.base import Preprocessing
from lesionlab.inference.openvino_backend import OpenVinoPredictor
from lesionlab.inference.run_samples import load_batch, split_samples

PRESETS = ("mixed", "performance")


@dataclass(frozen=True)
class LayerProfile:
    """One compiled model's CPU time per batch and its per-layer shares."""

    label: str
    cpu_ms: float
    shares: dict[tuple[str, str], float]
    counts: dict[tuple[str, str], int]

    def share(self, layer_type: str) -> float:
        """Share of the profiled time in layers of `layer_type`."""
        return sum(value for (kind, _), value in self.shares.items() if kind == layer_type)

    def kernels(self, layer_type: str) -> str:
        """The kernels OpenVINO chose for `layer_type`, with their node counts."""
        return ", ".join(f"{kernel} x{count}" for (kind, kernel), count in self.counts.items()
                         if kind == layer_type)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("onnx", type=Path, help="an exported fp32 model.onnx (`lesionlab export RUN`)")
    parser.add_argument("--run", default=None,
                        help="the run whose split gives real images (validation for timing, training for "
                             "calibration); without it, seeded random images")
    parser.add_argument("--data", default=None, help="the run's dataset (default: as trained)")
    parser.add_argument("--int8", type=Path, action="append", default=[],
                        help="an int8 OpenVINO IR to profile (repeatable), e.g. RUN/export/model-int8.xml")
    parser.add_argument("--quantize", nargs="*", choices=PRESETS, default=[],
                        help="also quantize the fp32 model here with NNCF (no accuracy control) per preset")
    parser.add_argument("--calibration", type=int, default=100, help="calibration images (default 100)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the --quantize IRs (required "
                                                                "with --quantize)")
    parser.add_argument("--batch-size", type=int, default=32, help="static batch profiled (default 32)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternating rounds of one timed batch per model; each keeps its smallest "
                             "(default 5)")
    parser.add_argument("--top", type=int, default=8, help="largest layer rows per model (default 8)")
    args = parser.parse_args(argv)
    if args.quantize and args.out is None:
        parser.error("--quantize needs --out FOLDER for the int8 files")
    return args


def real_or_random(args: argparse.Namespace, part: str, count: int, preprocessing: Preprocessing | None,
                   size: int) -> np.ndarray:
    """`count` pre-processed images of the run's `part`, or seeded standard-normal images without a run."""
    if preprocessing is None:
        return np.random.default_rng(0).standard_normal((count, 3, size, size), dtype=np.float32)
    return load_batch(split_samples(args.run, part, args.data, count, 0), preprocessing, part).images


def quantize(onnx: Path, preset: str, calibration: np.ndarray, out: Path) -> Path:
    """NNCF post-training int8 of the fp32 model with one preset, no accuracy control, written to `out`; its
    constants folded first, as `lesionlab export --int8` does (`lesionlab.quantize.fold_constants`)."""
    os.environ.setdefault("NNCF_CI", "1")  # NNCF's switch for its usage telemetry: nothing goes online
    import nncf

    from lesionlab.quantize import fold_constants

    folded = fold_constants(ov.Core().read_model(onnx))
    model = nncf.quantize(folded, nncf.Dataset(list(calibration[:, None])),
                          preset=getattr(nncf.QuantizationPreset, preset.upper()),
                          subset_size=len(calibration))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"int8-{preset}.xml"
    ov.save_model(model, path, compress_to_fp16=False)
    return path


def compile_profiled(path: Path, precision: ov.Type, shape: tuple[int, ...]) -> ov.InferRequest:
    """An infer request for `path` compiled for this static shape on one thread, with profiling on."""
    core = ov.Core()
    model = core.read_model(path)
    model.reshape({model.inputs[0]: list(shape)})
    return core.compile_model(model, "CPU", {
        hints.inference_precision: precision, properties.inference_num_threads: 1,
        hints.performance_mode: hints.PerformanceMode.LATENCY, properties.enable_profiling: True,
    }).create_infer_request()


def batch_cpu_ms(request: ov.InferRequest, batch: np.ndarray) -> float:
    """Process CPU milliseconds of one batch."""
    start = time.process_time()
    request.infer([batch])
    return (time.process_time() - start) * 1000.0


def layer_profile(label: str, cpu_ms: float, request: ov.InferRequest) -> LayerProfile:
    """The last batch's executed nodes summed by (layer type, kernel), as shares."""
    seconds: collections.Counter[tuple[str, str]] = collections.Counter()
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for node in request.profiling_info:
        if node.status == node.Status.EXECUTED:
            key = (node.node_type, node.exec_type)
            seconds[key] += node.real_time.total_seconds()
            counts[key] += 1
    total = sum(seconds.values()) or 1.0
    return LayerProfile(label, cpu_ms, {key: value / total for key, value in seconds.items()}, dict(counts))


def profile_all(models: list[tuple[str, Path, ov.Type]], batch: np.ndarray,
                rounds: int) -> list[LayerProfile]:
    """Every model's smallest CPU time per batch over `rounds` rounds that alternate the models (a burst of
    other work then inflates one round of one model, not its figure), and its per-layer shares."""
    requests = [compile_profiled(path, precision, batch.shape) for _, path, precision in models]
    for request in requests:
        request.infer([batch])
    best = [math.inf] * len(requests)
    for _ in range(rounds):
        best = [min(previous, batch_cpu_ms(request, batch))
                for previous, request in zip(best, requests, strict=True)]
    return [layer_profile(label, cpu_ms, request)
            for (label, _, _), cpu_ms, request in zip(models, best, requests, strict=True)]


def summary_table(profiles: list[LayerProfile], batch_size: int) -> str:
    """One row per model: CPU time, ratio against fp32, depthwise kernels and the time shares."""
    base = profiles[0].cpu_ms
    header = (f"{'model':18s} {'CPU ms/batch':>12s} {'img/s/core':>10s} {'vs fp32':>7s} "
              f"{'depthwise %':>11s} {'other conv %':>12s} {'reorder %':>9s}  depthwise kernels")
    lines = [f"static batch {batch_size}, 1 thread, smallest process CPU time per batch (load average "
             f"{', '.join(f'{load:.1f}' for load in os.getloadavg())})", header, "-" * len(header)]
    for row in profiles:
        lines.append(f"{row.label:18s} {row.cpu_ms:12.1f} {batch_size * 1000 / row.cpu_ms:10.0f} "
                     f"{base / row.cpu_ms:6.2f}x {100 * row.share('GroupConvolution'):11.1f} "
                     f"{100 * row.share('Convolution'):12.1f} {100 * row.share('Reorder'):9.1f}  "
                     f"{row.kernels('GroupConvolution')}")
    return "\n".join(lines)


def layer_table(row: LayerProfile, top: int) -> str:
    """A model's largest (layer type, kernel) rows by share."""
    lines = [f"{row.label}: largest layers (share of its profiled time)"]
    for (kind, kernel), share in sorted(row.shares.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"  {kind:18s} {kernel:34s} {100 * share:5.1f}%  nodes {row.counts[(kind, kernel)]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    inputs = ov.Core().read_model(args.onnx).inputs
    if len(inputs) != 1:
        raise SystemExit(f"{args.onnx}: a model with {len(inputs)} inputs; this benchmark profiles "
                         f"image-only models")
    size = inputs[0].get_partial_shape()[-1].get_length()
    preprocessing = None if args.run is None else OpenVinoPredictor(args.onnx, threads=1).preprocessing
    batch = np.ascontiguousarray(real_or_random(args, "val", args.batch_size, preprocessing, size))
    int8 = [(f"openvino int8 ({path.stem})", path) for path in args.int8]
    if args.quantize:
        calibration = real_or_random(args, "train", args.calibration, preprocessing, size)
        int8 += [(f"int8 {preset}", quantize(args.onnx, preset, calibration, args.out))
                 for preset in args.quantize]
    models = [("openvino fp32", args.onnx, ov.Type.f32), ("openvino bf16", args.onnx, ov.Type.bf16),
              *((label, path, ov.Type.f32) for label, path in int8)]
    profiles = profile_all(models, batch, args.rounds)
    print(summary_table(profiles, args.batch_size))
    for row in profiles:
        print(f"\n{layer_table(row, args.top)}")


if __name__ == "__main__":
    main()
