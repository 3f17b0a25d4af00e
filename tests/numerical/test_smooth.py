"""SmoothQuant (quant/smooth.py): GEMMs reading one tensor are grouped (query, key and value share a vector), the
smoothed graph computes what the plain one computes, an activation with one outlier channel loses far less to
per-tensor INT8 once smoothed, a GEMM kept float keeps its smoothed weights, and the twins enter the search and
the report for a transformer (not for a CNN unless asked)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from nanoify.config import DataConfig, QuantizeConfig, TimingConfig
from nanoify.errors import ConfigError
from nanoify.quant.calibrate import Range
from nanoify.quant.qdq import quantize_static_qdq
from nanoify.quant.run import quantize
from nanoify.quant.schemes import QuantPlan, StaticQDQ, apply_plan, smoothed_graph
from nanoify.quant.smooth import (
    ALPHAS,
    channel_stats,
    group_error,
    smooth_graph,
    smooth_groups,
    smoothed_name,
    smoothing_scales,
)
from nanoify.runtime.ort import ort_session

FAST = TimingConfig(latency_rows=8, throughput_rows=32, rounds=1)
K = 16


@pytest.fixture()
def graph(tmp_path):
    """x (N,K) → Relu → h; h → MatMul wq, MatMul wk (one group); h → Add (a residual reader, left unchanged);
    x → MatMul wo (its own group). Channel 3 of x is 100× the others: the outlier SmoothQuant is for."""
    rng = np.random.default_rng(0)
    inits = {"wq": rng.normal(size=(K, 8)).astype(np.float32), "wk": rng.normal(size=(K, 8)).astype(np.float32),
             "wo": rng.normal(size=(K, 4)).astype(np.float32)}
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="relu"),
             helper.make_node("MatMul", ["h", "wq"], ["q"], name="query"),
             helper.make_node("MatMul", ["h", "wk"], ["k"], name="key"),
             helper.make_node("Add", ["h", "h"], ["r"], name="residual"),
             helper.make_node("MatMul", ["x", "wo"], ["o"], name="out")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", K])],
                          [helper.make_tensor_value_info(y, TensorProto.FLOAT, None) for y in ("q", "k", "r", "o")],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "fp32.onnx"
    onnx.save(model, str(path))
    scale = np.ones(K, np.float32)
    scale[3] = 100.0
    feeds = [{"x": (np.abs(rng.normal(size=(32, K))) * scale).astype(np.float32)} for _ in range(4)]
    return path, feeds


def _run(path, feeds):
    sess = ort_session(path)
    outs = [sess.run(None, f) for f in feeds]
    return [np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))]


def test_gemms_reading_one_tensor_share_a_group_and_the_smoothed_graph_computes_the_same(graph, tmp_path):
    path, feeds = graph
    groups = {g.x: g for g in smooth_groups(onnx.load(str(path)))}
    assert set(groups) == {"h", "x"} and groups["h"].nodes == ("query", "key") and groups["x"].nodes == ("out",)
    amax = channel_stats(path, ["h", "x"], iter(feeds))[0]
    np.testing.assert_allclose(amax["x"], np.abs(np.concatenate([f["x"] for f in feeds])).max(axis=0), rtol=1e-6)
    info = smooth_graph(path, tmp_path / "s.onnx", amax, 0.5)
    assert info["groups"] == 2 and info["gemms"] == 3 and info["tensors"] == [smoothed_name("h", 0.5),
                                                                              smoothed_name("x", 0.5)]
    assert info["channel_spread_after"] < info["channel_spread_before"] / 5  # the outlier channel tamed
    for a, b in zip(_run(path, feeds), _run(tmp_path / "s.onnx", feeds), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(a).max())  # the same function in float
    model = onnx.load(str(tmp_path / "s.onnx"))
    readers = {n.name: list(n.input) for n in model.graph.node}
    assert readers["query"][0] == readers["key"][0] == smoothed_name("h", 0.5) and readers["residual"] == ["h", "h"]


def test_smoothing_scales_follow_the_formula_and_leave_dead_channels_alone():
    s = smoothing_scales(np.array([4.0, 0.0, 1e6]), np.array([1.0, 2.0, 1e-6]), 0.5)
    assert s[0] == pytest.approx(2.0) and s[1] == 1.0 and s[2] == 100.0  # clipped at the top


def _int8_error(src, ranges, tmp_path, name):
    dst = tmp_path / f"{name}.q.onnx"
    quantize_static_qdq(src, dst, ranges, "cpu", scope="weights", weight_bits=8)
    return dst


def test_an_outlier_channel_costs_far_less_once_smoothed(graph, tmp_path):
    """Per-tensor INT8 of x spends its range on channel 3: the other channels round to a few levels. Smoothed,
    the query/key/out outputs of the INT8 graph are at least twice as close to FP32."""
    path, feeds = graph
    ref = _run(path, feeds)
    amax = channel_stats(path, ["h", "x"], iter(feeds))[0]
    smooth_graph(path, tmp_path / "s.onnx", amax, 0.5)
    plain_r = {t: Range(float(amax[t].max()), True) for t in ("h", "x")}
    smooth_amax = channel_stats(tmp_path / "s.onnx", [smoothed_name(t, 0.5) for t in ("h", "x")], iter(feeds))[0]
    smooth_r = {t: Range(float(a.max()), True) for t, a in smooth_amax.items()}
    plain_q = _run(_int8_error(path, plain_r, tmp_path, "plain"), feeds)
    smooth_q = _run(_int8_error(tmp_path / "s.onnx", smooth_r, tmp_path, "smooth"), feeds)
    for i in (0, 1, 3):  # q, k, o (r is not a GEMM)
        err_plain = np.abs(plain_q[i] - ref[i]).mean()
        err_smooth = np.abs(smooth_q[i] - ref[i]).mean()
        assert err_smooth < err_plain / 2, (i, err_plain, err_smooth)


def test_a_gemm_kept_float_keeps_its_smoothed_weights(graph, tmp_path):
    """Mixed precision restores FP32 weights of float nodes in derived graphs whose weights changed in value;
    a smoothed graph's weights match its rescaled inputs, so they stay (restoring them would change the model)."""
    path, feeds = graph
    amax = channel_stats(path, ["h", "x"], iter(feeds))[0]
    smooth_graph(path, tmp_path / "s.onnx", amax, 0.5)
    scheme = StaticQDQ("minmax", "cpu", "weights", 8, smooth="0.5")
    assert scheme.graph == smoothed_graph("0.5") and scheme.name == "static-minmax-smooth0.5"
    tensors = [smoothed_name("h", 0.5), smoothed_name("x", 0.5)]
    ranges = {"minmax": {t: Range(1000.0, True) for t in tensors}}
    plan = QuantPlan.uniform(scheme, ["query", "key", "out"]).keep_float(["query", "key", "out"])
    apply_plan(plan, {"plain": path, scheme.graph: tmp_path / "s.onnx"}, tmp_path / "all-float.onnx", ranges)
    for a, b in zip(_run(path, feeds), _run(tmp_path / "all-float.onnx", feeds), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(a).max())
    with pytest.raises(ConfigError, match="nearest rounding"):
        StaticQDQ("minmax", smooth="auto", rounding="learned")


def test_auto_alpha_is_chosen_per_group_from_sample_rows(graph, tmp_path):
    """"auto" scores each α on a uniform sample of the calibration rows (kept while streaming) by the group's
    fake-quantized output error and keeps the best; on the outlier input it at least halves that error."""
    path, feeds = graph
    amax, samples = channel_stats(path, ["h", "x"], iter(feeds), rows=40)
    assert samples["x"].shape == (40, K)  # 128 rows seen, 40 kept, each one of them
    rows = {tuple(r) for r in np.concatenate([f["x"] for f in feeds]).tolist()}
    assert all(tuple(r) in rows for r in samples["x"].tolist())
    info = smooth_graph(path, tmp_path / "a.onnx", amax, "auto", samples)
    assert info["groups"] == 2 and sum(info["alphas"].values()) == 2
    assert set(map(float, info["alphas"])) <= set(ALPHAS)
    before, after = info["predicted_error"]
    assert after < before / 2
    for a, b in zip(_run(path, feeds), _run(tmp_path / "a.onnx", feeds), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(a).max())
    w = onnx.numpy_helper.to_array(next(i for i in onnx.load(str(path)).graph.initializer if i.name == "wo"))
    x = samples["x"]
    sx, sw = np.abs(x).max() / 127, np.abs(w).max(axis=0) / 127  # per tensor; per output channel
    xq, wq = np.clip(np.round(x / sx), -127, 127) * sx, np.round(w / sw) * sw
    want = float(((xq @ wq - x @ w) ** 2).sum() / ((x @ w) ** 2).sum())
    assert group_error(x, [w], None) == pytest.approx(want, rel=1e-3)


def test_smoothed_twins_enter_the_search_and_the_report_of_a_transformer(tmp_path, tiny_export, tiny_data):
    data = DataConfig(data=str(tiny_data), max_length=32)
    man = quantize(tiny_export, tmp_path / "q", calib=data, progress=False,
                   config=QuantizeConfig(budget=50.0, methods=("minmax", "mse"), timing=FAST))
    names = [c["name"] for c in man["candidates"]]
    twins = sorted(n for n in names if n.endswith("-smooth"))
    assert [t.replace("-w7", "") for t in twins] == ["static-minmax-smooth", "static-mse-smooth"], names
    (key, rep), = man["smoothing"].items()
    assert key.startswith(smoothed_graph("auto", 7)[:-1]) and rep["of_groups"] > 0 and rep["alpha"] == "auto"
    assert "SmoothQuant (" in (tmp_path / "q" / "report.md").read_text()
    man = quantize(tiny_export, tmp_path / "n", calib=data, progress=False,
                   config=QuantizeConfig(budget=50.0, methods=("minmax",), timing=FAST, smooth=False))
    assert not any("smooth" in c["name"] for c in man["candidates"]) and "smoothing" not in man
