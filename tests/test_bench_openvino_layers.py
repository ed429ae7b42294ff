"""benchmarks/bench_openvino_layers.py still runs end to end: a tiny generated ONNX network with a depthwise
convolution, profiled in fp32, bf16 and after NNCF int8 quantization, in seconds.

The benchmark runs in a child process: OpenVINO and NNCF loaded into pytest's own process make every later
test that forks DataLoader workers crash (the reason tests/test_deploy.py runs in a pytest of its own)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_openvino_layers.py"


def tiny_onnx(path: Path) -> Path:
    """1x1 conv, 3x3 depthwise conv, 1x1 conv, global pool and softmax: MobileNet's pattern, 16 px input."""
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.standard_normal((8, 3, 1, 1)), "w2": rng.standard_normal((8, 1, 3, 3)),
        "w3": rng.standard_normal((4, 8, 1, 1)),
    }
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Conv", ["b", "w2"], ["c"], group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c", "w3"], ["d"]),
        helper.make_node("GlobalAveragePool", ["d"], ["e"]),
        helper.make_node("Flatten", ["e"], ["f"]),
        helper.make_node("Softmax", ["f"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_bench_openvino_layers_profiles_fp32_bf16_and_int8(tmp_path: Path) -> None:
    model = tiny_onnx(tmp_path / "model.onnx")
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), str(model), "--quantize", "mixed", "--calibration", "4", "--out",
         str(tmp_path / "int8"), "--batch-size", "2", "--rounds", "2"],
        capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    output = result.stdout
    assert "static batch 2, 1 thread, smallest process CPU time" in output
    for label in ("openvino fp32", "openvino bf16", "int8 mixed"):
        assert f"{label}: largest layers" in output
    assert "GroupConvolution" in output and "depthwise kernels" in output
    assert (tmp_path / "int8" / "int8-mixed.xml").is_file()
