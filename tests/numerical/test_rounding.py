"""Learned rounding (quant/rounding.py): the integers it learns are the ones the Q/DQ graph carries, no layer
reconstructs worse than nearest rounding on its calibration inputs, nodes kept float get their FP32 weights back,
and the scheme option enters the candidate search."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from nanoify.cli import main
from nanoify.config import QuantizeConfig, TimingConfig
from nanoify.errors import ConfigError
from nanoify.quant.ops import weight_nodes
from nanoify.quant.rounding import MIN_ITERATIONS, Layer, grid, learn_layer, nearest, round_graph, weight_layers
from nanoify.quant.run import quantize
from nanoify.quant.schemes import QuantPlan, StaticQDQ, apply_plan
from nanoify.quant.steps import calibrate, prepare, units_of
from nanoify.quant.targets import get_target

FAST = TimingConfig(latency_rows=8, throughput_rows=32, rounds=1)


def _inits(path):
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


@pytest.fixture(scope="module")
def learned(tmp_path_factory, tiny_cnn_export, tiny_images):
    tmp = tmp_path_factory.mktemp("learned")
    src = prepare(tiny_cnn_export, tmp, get_target("cpu"))
    calib = src.task.calib_set(str(tiny_images), 64)
    feeds = [f for _, f in src.task.batches(calib, 16)]
    nodes = weight_nodes(src.graphs["plain"])
    rep = round_graph(src.plain, tmp / "learned.onnx", nodes, feeds, 8, iters=200)
    ranges, _ = calibrate(src, calib, ("minmax",), ("weights",), True, None, False)
    return src, tmp, rep, ranges


def test_no_layer_reconstructs_worse_than_nearest_and_some_learn(learned):
    src, tmp, rep, _ = learned
    layers, _ = weight_layers(src.graphs["plain"], weight_nodes(src.graphs["plain"]))
    assert len(rep["layers"]) == len(layers) > 0 and rep["skipped"] == {}
    for r in rep["layers"]:
        assert min(r["learned_error"], r["nearest_error"]) <= r["nearest_error"]
        assert r["used"] == (r["learned_error"] < r["nearest_error"]) and (r["changed"] > 0) <= r["used"]
    assert any(r["used"] and r["changed"] > 0 for r in rep["layers"])  # rounding, not only ranges, moved


def test_the_qdq_graph_carries_the_learned_integers(learned, tmp_path):
    """The Q/DQ writer's own rounding of the snapped weights gives back exactly the learned integers, with
    the same per-channel scale nearest rounding would use."""
    src, tmp, rep, ranges = learned
    plain, snapped = _inits(src.plain), _inits(tmp / "learned.onnx")
    sources = {**src.sources, "learned-w8": tmp / "learned.onnx"}
    scheme = StaticQDQ("minmax", "cpu", "weights", 8, rounding="learned")
    assert scheme.graph == "learned-w8" and scheme.name == "static-minmax-adaround"
    plan = QuantPlan.uniform(scheme, units_of(src, scheme))
    apply_plan(plan, sources, tmp_path / "q.onnx", {"minmax": ranges["minmax"]})
    q = onnx.load(str(tmp_path / "q.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    layers, _ = weight_layers(src.graphs["plain"], weight_nodes(src.graphs["plain"]))
    dq_of = {n.input[0]: n for n in q.graph.node if n.op_type == "DequantizeLinear"}
    checked = 0
    for layer in layers:
        qname = next(k for k in dq_of if k.startswith(layer.w) and inits.get(k) is not None
                     and inits[k].dtype == np.int8)
        scale_written = inits[dq_of[qname].input[1]]
        scale, qmax = grid(plain[layer.w], layer.axis, 8)
        np.testing.assert_allclose(scale_written, scale.reshape(-1), rtol=1e-6)  # the grid nearest would use
        want = np.round(snapped[layer.w] / scale)
        np.testing.assert_array_equal(inits[qname], want.astype(np.int8))
        checked += int((want != nearest(plain[layer.w], scale, qmax)).any())
    assert checked > 0  # at least one layer's integers differ from nearest rounding, and survived the writer


def test_a_node_kept_float_gets_its_fp32_weights_back(learned, tmp_path):
    src, tmp, _, ranges = learned
    scheme = StaticQDQ("minmax", "cpu", "weights", 8, rounding="learned")
    units = units_of(src, scheme)
    keep = units[0]
    apply_plan(QuantPlan.uniform(scheme, units).keep_float([keep]), {**src.sources, "learned-w8": tmp /
                                                                        "learned.onnx"}, tmp_path / "m.onnx", ranges)
    node = next(n for n in onnx.load(str(tmp_path / "m.onnx")).graph.node if n.name == keep)
    np.testing.assert_array_equal(_inits(tmp_path / "m.onnx")[node.input[1]], _inits(src.plain)[node.input[1]])


def test_learned_rounding_enters_the_search_for_cnns_and_is_reported(tmp_path, tiny_cnn_export, tiny_images):
    man = quantize(tiny_cnn_export, tmp_path / "q", calib=str(tiny_images), progress=False,
                   config=QuantizeConfig(budget=5.0, methods=("minmax",), timing=FAST, cpu_engine="onnxruntime"))
    names = [c["name"] for c in man["candidates"]]
    assert any(n.endswith("-adaround") for n in names) and any("all-ops" in n and "adaround" in n for n in names)
    (key, rep), = man["learned_rounding"].items()
    assert key.startswith("learned-w") and rep["layers"]
    man = quantize(tiny_cnn_export, tmp_path / "n", calib=str(tiny_images), progress=False,
                   config=QuantizeConfig(budget=5.0, methods=("minmax",), timing=FAST, cpu_engine="onnxruntime",
                                         rounding=("nearest",)))
    assert not any("adaround" in c["name"] for c in man["candidates"]) and "learned_rounding" not in man
    with pytest.raises(ConfigError, match="--rounding"):
        QuantizeConfig(rounding=("stochastic",))


def test_the_learning_shrinks_to_its_time_share():
    """Iterations fit the seconds a layer has (timed on its first iterations), down to the floor — forced with
    a share no iteration fits; with time to spare the full count runs."""
    rng = np.random.default_rng(0)
    layer = Layer("fc", "Gemm", "x", "w", 0, {"transB": 1})
    w, x = rng.normal(size=(8, 16)).astype(np.float32), rng.normal(size=(64, 16)).astype(np.float32)
    assert learn_layer(layer, x, w, 8, iters=1000, seconds=1e-9)[1]["iterations"] == MIN_ITERATIONS
    assert learn_layer(layer, x, w, 8, iters=150, seconds=600.0)[1]["iterations"] == 150


def test_a_bad_rounding_on_the_command_line_is_one_line(tmp_path, tiny_cnn_export, tiny_images, capsys):
    assert main(["quantize", str(tiny_cnn_export), "--calib", str(tiny_images), "--rounding", "nearest,stochastic",
                 "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--rounding must name nearest and/or learned" in err[0] and not (tmp_path / "q").exists()
