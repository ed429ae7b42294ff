"""Which engine runs a fixed model's large forward-only passes: eager PyTorch, ONNX Runtime or OpenVINO.

`lesionlab evaluate` (every test-time view of every image) and a frozen-backbone stage's feature cache run one
fixed network forward over thousands of images. A pass on a graph engine traces the model (BatchNorm folded,
`lesionlab.models.fold`) once into an in-memory ONNX graph with a dynamic batch and runs it with PyTorch's
thread count. `forward_backend: auto` picks per kind of pass, by what benchmarks/bench_forward.py measured on
a 2-core CPU against eager fp32 unfolded:
- logits (`evaluate`, its TTA views and the validation pass its fits use): ONNX Runtime, 1.87x on the TTA
  passes against 1.44x for eager folded. Their loader only reads cached pixels, so the engine has the cores.
- features (a stage's feature cache and the validation features it trains against): eager folded, 1.46x
  against 1.19x on ONNX Runtime, which shares the cores with the loader workers that augment every view.
  Eager for both passes also computes the features the head trains on and the ones it is validated on by
  one and the same arithmetic.
The graph is traced with the TorchScript exporter (`torch.onnx.export(dynamo=False)`): it takes about
1 s of CPU for MobileNetV3-Small, where the dynamo exporter `lesionlab export` uses for deployed files takes
many times longer, a per-pass cost that would eat most of the gain.

Every pass checks its engine before trusting it: the first batch runs both in eager fp32 and in the engine,
and the engine is kept only where its outputs agree (`check_outputs`: for logits, probabilities within
`PROBABILITY_TOLERANCE` and the same top-1 class on every image; for features, within
`RELATIVE_TOLERANCE` of the largest feature). Where they disagree, or the engine is not installed or cannot
take the model, the pass runs eager, and its `EngineCheck` says why; `evaluate` records the checks in
metrics.json, training in the run's log.

Graph engines run fp32 only: a pass that runs in bf16 (`precision: bf16`, or `auto` where a training stage's
parity check chose it) runs eager under autocast. Where `evaluate` runs its passes on an engine, its
`precision: auto` resolves to fp32 without a bf16 check, because the engine's fp32 is faster than eager bf16
on this CPU and exact. The choice is `forward_backend: auto | torch | onnxruntime | openvino` (recipe key;
`lesionlab evaluate --forward-backend`): `auto` is as above (ONNX Runtime only where it is installed);
`openvino` runs the same graph on OpenVINO's CPU plugin in fp32.

OpenVINO loaded in the main process can crash (a segfault) DataLoader worker processes forked after it, and
training forks new workers for every epoch and stage after its first feature cache. So training refuses
`forward_backend: openvino` with loader `workers` (`check_worker_forks`), and an `evaluate` pass on OpenVINO
reads its images in the main process (`loader_workers`).
"""

from __future__ import annotations

import importlib.util
import io
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lesionlab.device import forward_in_chunks
from lesionlab.errors import ConfigError
from lesionlab.scoring import softmax

AUTO = "auto"
TORCH = "torch"
ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
FORWARD_BACKENDS: tuple[str, ...] = (AUTO, TORCH, ONNXRUNTIME, OPENVINO)
GRAPH_ENGINES: tuple[str, ...] = (ONNXRUNTIME, OPENVINO)
ENGINE_MODULES = {ONNXRUNTIME: "onnxruntime", OPENVINO: "openvino"}
PROBABILITY_TOLERANCE = 1e-4
RELATIVE_TOLERANCE = 1e-4
OPSET = 17

GraphRun = Callable[..., torch.Tensor]


def check_backend_choice(choice: str, precision: str) -> None:
    """A `ConfigError` for an unknown backend, or a graph engine asked for together with forced bf16 (graph
    engines run fp32 only)."""
    if choice not in FORWARD_BACKENDS:
        raise ConfigError(f"forward_backend {choice!r}: choose one of {', '.join(FORWARD_BACKENDS)}")
    if choice in GRAPH_ENGINES and precision == "bf16":
        raise ConfigError(
            f"forward_backend {choice} runs fp32 only, and precision is bf16: use "
            f"forward_backend torch for bf16 autocast, or precision auto or fp32"
        )


def check_worker_forks(choice: str, workers: int) -> None:
    """A `ConfigError` for training with OpenVINO passes and DataLoader worker processes (module docstring:
    workers forked after OpenVINO loaded can crash), naming the recipe keys that resolve it."""
    if choice == OPENVINO and workers > 0:
        raise ConfigError(
            f"recipe keys 'forward_backend' and 'workers': forward_backend openvino with workers {workers} "
            f"can crash (segfault) the DataLoader worker processes forked after OpenVINO has loaded; set "
            f"workers=0 to keep OpenVINO, or forward_backend=auto (or onnxruntime) to keep the workers"
        )


def loader_workers(engine: str, workers: int) -> int:
    """The DataLoader workers of a pass on `engine`: none on OpenVINO, whose pass then reads its images in
    the main process, as no worker may fork after OpenVINO has loaded (module docstring)."""
    return 0 if engine == OPENVINO else workers


def forward_engine(choice: str, precision: str, device: torch.device, *, features: bool = False) -> str:
    """The engine of forward-only passes at `precision` (a choice or a resolved precision) on `device`, of
    pooled features (`features=True`) or of logits.

    bf16 always runs eager (autocast), whatever engine is asked for: a training stage whose parity check chose
    bf16 keeps it (a forced bf16 with a graph engine is refused earlier, `check_backend_choice`). So does any
    pass on a GPU, where autocast is the fast path. On a CPU `auto` runs feature passes eager and logits
    passes on ONNX Runtime where it is installed, the faster engine of each (module docstring).
    """
    check_backend_choice(choice, "auto")
    if choice == TORCH or precision == "bf16" or device.type != "cpu":
        if choice in GRAPH_ENGINES and device.type != "cpu":
            raise ConfigError(
                f"forward_backend {choice} runs on a CPU; this pass runs on {device.type}: use "
                f"forward_backend auto or torch"
            )
        return TORCH
    if choice == AUTO:
        if features:
            return TORCH
        return ONNXRUNTIME if importlib.util.find_spec(ENGINE_MODULES[ONNXRUNTIME]) else TORCH
    return choice


@dataclass(frozen=True)
class EngineCheck:
    """How one pass's engine was chosen: what was asked, what ran, and the first batch's agreement."""

    name: str
    asked: str
    engine: str
    images: int
    max_difference: float | None
    """Largest probability difference (logits) or difference relative to the largest feature (features)."""
    top1_agreement: float | None
    setup_seconds: float
    """Tracing, loading and the eager reference batch."""
    fallback: str | None
    """Why the pass ran eager instead of the engine asked for; None where the engine ran."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the tolerances it was judged by."""
        return {
            **asdict(self),
            "probability_tolerance": PROBABILITY_TOLERANCE,
            "relative_tolerance": RELATIVE_TOLERANCE,
        }


def check_outputs(
    expected: torch.Tensor, got: torch.Tensor, logits: bool
) -> tuple[float, float | None, bool]:
    """(largest difference, top-1 agreement, passes) of an engine's outputs against eager fp32's."""
    if got.shape != expected.shape or not torch.isfinite(got).all():
        return float("inf"), None, False
    if not logits:
        scale = float(expected.abs().max()) or 1.0
        difference = float((got - expected).abs().max()) / scale
        return difference, None, difference <= RELATIVE_TOLERANCE
    expected_p = softmax(expected.double().numpy())
    got_p = softmax(got.double().numpy())
    difference = float(np.abs(expected_p - got_p).max())
    agreement = float((expected_p.argmax(axis=1) == got_p.argmax(axis=1)).mean())
    return difference, agreement, difference <= PROBABILITY_TOLERANCE and agreement == 1.0


def onnx_graph(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> bytes:
    """`module` traced at `inputs` into ONNX bytes whose first dimension (inputs and output) is dynamic.

    The example inputs are copied out of inference mode, where tracing cannot record them.
    """
    names = [f"input{index}" for index in range(len(inputs))]
    buffer = io.BytesIO()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        examples = tuple(tensor[:2].clone().contiguous() for tensor in inputs)
        torch.onnx.export(
            module,
            examples,
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=names,
            output_names=["output"],
            dynamic_axes={name: {0: "batch"} for name in [*names, "output"]},
        )
    return buffer.getvalue()


def onnxruntime_run(graph: bytes, threads: int) -> GraphRun:
    """A call running `graph` on ONNX Runtime's CPU provider with `threads` intra-op threads."""
    import onnxruntime as ort

    from lesionlab.inference.onnx_backend import session_options

    session = ort.InferenceSession(
        graph, sess_options=session_options(threads), providers=["CPUExecutionProvider"]
    )
    names = [entry.name for entry in session.get_inputs()]

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        feeds = {
            name: tensor.contiguous().float().numpy() for name, tensor in zip(names, inputs, strict=True)
        }
        return torch.from_numpy(session.run(None, feeds)[0])

    return run


def openvino_run(graph: bytes, threads: int) -> GraphRun:
    """A call running `graph` on OpenVINO's CPU plugin in fp32 with `threads` threads."""
    import openvino as ov

    from lesionlab.inference.openvino_backend import DEVICE, compile_config

    compiled = ov.Core().compile_model(
        ov.convert_model(io.BytesIO(graph)), DEVICE, compile_config(threads, "fp32")
    )
    request = compiled.create_infer_request()

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        request.infer([tensor.contiguous().float().numpy() for tensor in inputs])
        return torch.from_numpy(np.array(request.get_output_tensor(0).data, dtype=np.float32))

    return run


ENGINE_RUNS: dict[str, Callable[[bytes, int], GraphRun]] = {
    ONNXRUNTIME: onnxruntime_run,
    OPENVINO: openvino_run,
}


class EngineForward:
    """`module(*inputs)` for one forward-only pass, on `engine` where its first batch agrees with eager.

    `module` is the eager fp32 model of the pass (BatchNorm folded) and must not change during the pass.
    Inputs are CPU tensors; outputs are fp32 CPU tensors. After the first call, `check` tells what ran.
    """

    def __init__(
        self, module: nn.Module, engine: str, name: str, logits: bool, asked: str | None = None
    ) -> None:
        self.module = module
        self.engine = engine
        self.name = name
        self.logits = logits
        self.asked = asked or engine
        self.check: EngineCheck | None = None
        self._run: GraphRun | None = None

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self._run is not None:
            return forward_in_chunks(self._run, *inputs)
        if self.engine == TORCH or self.check is not None:
            return forward_in_chunks(self.module, *inputs)
        return self._first_batch(inputs)

    def _first_batch(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Build the engine and compare it with eager on this batch; keep it only where they agree."""
        start = time.perf_counter()
        expected = forward_in_chunks(self.module, *inputs).float()
        difference, agreement, fallback = None, None, None
        if importlib.util.find_spec(ENGINE_MODULES[self.engine]) is None:
            fallback = f"{ENGINE_MODULES[self.engine]} is not installed"
        else:
            try:
                run = ENGINE_RUNS[self.engine](onnx_graph(self.module, inputs), torch.get_num_threads())
                got = forward_in_chunks(run, *inputs)
            except Exception as error:  # an optional engine failing is a reason to run eager, not to stop
                fallback = f"{self.engine} could not run this model: {type(error).__name__}: {error}"
            else:
                difference, agreement, passed = check_outputs(expected, got, self.logits)
                if passed:
                    self._run = run
                else:
                    fallback = f"{self.engine} disagreed with eager fp32 on the first batch"
        self.check = EngineCheck(
            self.name,
            self.asked,
            self.engine if fallback is None else TORCH,
            len(expected),
            difference,
            agreement,
            round(time.perf_counter() - start, 3),
            fallback,
        )
        return expected
