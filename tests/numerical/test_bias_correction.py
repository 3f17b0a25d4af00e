"""Bias correction (quant/bias_correction.py): with the weights on the INT8 grid, each corrected layer's mean
output over the calibration rows equals the FP32 layer's (convolution with a bias, grouped convolution without
one, Gemm); a node kept float gets its FP32 bias back; the twins enter the search and the report; and
``--require-int8`` turns "no INT8 model wins" into one line with nothing written."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from nanoify.cli import main
from nanoify.config import QuantizeConfig, TimingConfig
from nanoify.quant.bias_correction import correct_graph
from nanoify.quant.choose import not_int8_win
from nanoify.quant.rounding import grid, nearest
from nanoify.quant.run import quantize
from nanoify.quant.schemes import StaticQDQ, restore_weights
from nanoify.runtime.ort import ort_session

FAST = TimingConfig(latency_rows=8, throughput_rows=32, rounds=1)
BITS = 8


def _biased_weights(rng, shape, axis=0):
    """Weights whose nearest rounding errs the same way everywhere: each is (integer + 0.45) steps of its
    channel's grid, except one per channel at the grid's end (so the scale is exactly that step)."""
    w = (rng.integers(-100, 100, size=shape) + 0.45).astype(np.float32)
    w = np.moveaxis(w, axis, 0)
    w.reshape(w.shape[0], -1)[:, 0] = 127.0
    step = rng.uniform(0.001, 0.01, size=(w.shape[0],) + (1,) * (w.ndim - 1)).astype(np.float32)
    return np.moveaxis(w * step, 0, axis)


@pytest.fixture()
def graph(tmp_path):
    """x (N,4,8,8) → Conv 3×3 with bias → y1; x → grouped Conv 1×1 without bias → y2; v (N,16) → Gemm → y3."""
    rng = np.random.default_rng(0)
    inits = {"w1": _biased_weights(rng, (6, 4, 3, 3)), "b1": rng.normal(size=6).astype(np.float32),
             "w2": _biased_weights(rng, (8, 2, 1, 1)), "w3": _biased_weights(rng, (5, 16)),
             "b3": rng.normal(size=5).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["y1"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "w2"], ["y2"], name="grouped", group=2),
             helper.make_node("Gemm", ["v", "w3", "b3"], ["y3"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8]),
                                       helper.make_tensor_value_info("v", TensorProto.FLOAT, ["n", 16])],
                          [helper.make_tensor_value_info(y, TensorProto.FLOAT, None) for y in ("y1", "y2", "y3")],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "fp32.onnx"
    onnx.save(model, str(path))
    feeds = [{"x": rng.uniform(1.0, 3.0, size=(16, 4, 8, 8)).astype(np.float32),  # inputs far from zero mean
              "v": rng.uniform(1.0, 3.0, size=(16, 16)).astype(np.float32)} for _ in range(4)]
    return path, feeds


AXES = {"w1": 0, "w2": 0, "w3": 0}  # every weight's output channels are its first axis (Gemm transB=1)


def _on_grid(path, dst, axes=AXES):
    """The graph with its weights rounded to nearest on the Q/DQ writer's grid (what an INT8 engine computes)."""
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.name in axes:
            w = numpy_helper.to_array(init)
            scale, qmax = grid(w, axes[init.name], BITS)
            init.CopyFrom(numpy_helper.from_array((nearest(w, scale, qmax) * scale).astype(np.float32), init.name))
    onnx.save(model, str(dst))
    return dst


def _channel_means(path, feeds):
    sess = ort_session(path)
    outs = [sess.run(None, f) for f in feeds]
    return [np.concatenate([o[i] for o in outs]).mean(axis=(0, 2, 3) if i < 2 else 0) for i in range(3)]


def test_corrected_biases_cancel_the_mean_output_shift_of_rounded_weights(graph, tmp_path):
    path, feeds = graph
    rep = correct_graph(path, tmp_path / "bc.onnx", path, ["conv", "grouped", "fc"], iter(feeds), BITS)
    assert [r["node"] for r in rep["layers"]] == ["conv", "grouped", "fc"] and rep["skipped"] == {}
    fp32 = _channel_means(path, feeds)
    plain = _channel_means(_on_grid(path, tmp_path / "g0.onnx"), feeds)
    fixed = _channel_means(_on_grid(tmp_path / "bc.onnx", tmp_path / "g1.onnx"), feeds)
    for name, want, before, after in zip(("conv", "grouped", "fc"), fp32, plain, fixed, strict=True):
        shift = np.abs(before - want).max()
        assert shift > 1e-3, name  # the weights were made to round one way: a real shift to correct
        assert np.abs(after - want).max() <= 1e-3 * shift + 1e-6, name  # exact up to float error
    grouped = next(n for n in onnx.load(str(tmp_path / "bc.onnx")).graph.node if n.name == "grouped")
    assert len(grouped.input) == 3  # the bias-free layer got a bias to carry its correction


def test_a_node_kept_float_gets_its_fp32_bias_back_and_loses_an_added_one(graph, tmp_path):
    path, feeds = graph
    correct_graph(path, tmp_path / "bc.onnx", path, ["conv", "grouped", "fc"], iter(feeds), BITS)
    restore_weights(tmp_path / "bc.onnx", path, ["conv", "grouped"])
    model = onnx.load(str(tmp_path / "bc.onnx"))
    nodes = {n.name: n for n in model.graph.node}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    orig = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    assert list(nodes["grouped"].input) == ["x", "w2"]
    np.testing.assert_array_equal(inits["b1"], orig["b1"])
    assert not np.array_equal(inits["b3"], orig["b3"])  # the Gemm was not restored: still corrected
    np.testing.assert_allclose(ort_session(tmp_path / "bc.onnx").run(["y2"], feeds[0])[0],
                               ort_session(path).run(["y2"], feeds[0])[0], rtol=1e-6)


def test_bias_corrected_twins_enter_the_search_and_the_report(tmp_path, tiny_cnn_export, tiny_images):
    man = quantize(tiny_cnn_export, tmp_path / "q", calib=str(tiny_images), progress=False,
                   config=QuantizeConfig(budget=5.0, methods=("minmax", "mse"), timing=FAST,
                                         cpu_engine="onnxruntime", rounding=("nearest",)))
    names = [c["name"] for c in man["candidates"]]
    twins = [n for n in names if n.endswith("-bc")]
    assert len(twins) == 2 and all(t[:-3] in names for t in twins)  # one per scope: weights, all ops
    assert any("all-ops" in t for t in twins)
    (key, rep), = man["bias_correction"].items()
    assert key.startswith("nearest-w") and key.endswith("-bc") and rep["layers"]
    assert "Bias correction" in (tmp_path / "q" / "report.md").read_text()
    man = quantize(tiny_cnn_export, tmp_path / "n", calib=str(tiny_images), progress=False,
                   config=QuantizeConfig(budget=5.0, methods=("minmax",), timing=FAST, cpu_engine="onnxruntime",
                                         rounding=("nearest",), bias_correction=False))
    assert not any(c["name"].endswith("-bc") for c in man["candidates"]) and "bias_correction" not in man
    assert StaticQDQ("mse", bias_correct=True, rounding="learned").graph == "learned-w8-bc"


def test_require_int8_names_why_no_int8_model_won():
    ref = {"latency_ms_p50": 10.0, "throughput": 100.0, "file_mb": 4.0}
    fast = {"name": "static-mse", "meets_budget": True, "latency_ms_p50": 5.0, "throughput": 200.0, "file_mb": 1.0,
            "scheme": {"type": "StaticQDQ"}}
    assert not_int8_win(fast, ref, "balanced", True) is None
    assert "kept the float model" in not_int8_win({**fast, "scheme": {"type": "Float"}}, ref, "balanced", True)
    assert "no candidate met the budget" in not_int8_win({**fast, "meets_budget": False}, ref, "balanced", True)
    slow = {**fast, "latency_ms_p50": 20.0, "throughput": 50.0}
    assert "0.50× FP32's speed" in not_int8_win(slow, ref, "balanced", True)
    assert not_int8_win(slow, ref, "size", True) is None and not_int8_win(slow, ref, "balanced", False) is None


def test_require_int8_fails_in_one_line_and_writes_nothing(tmp_path, tiny_cnn_export, tiny_images, capsys,
                                                           monkeypatch):
    """Forced: the chooser's pick is reported as no INT8 win, whatever this CPU measured."""
    monkeypatch.setattr("nanoify.quant.run.not_int8_win", lambda *a: "the chooser kept the float model (forced)")
    out = tmp_path / "q"
    out.mkdir()
    (out / "keep.txt").write_text("previous")
    assert main(["quantize", str(tiny_cnn_export), "--calib", str(tiny_images), "--methods", "minmax",
                 "--rounding", "nearest", "--bias-correction", "off", "--cpu-engine", "onnxruntime",
                 "--require-int8", "--rounds", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--require-int8: the chooser kept the float model (forced)" in err[0]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
