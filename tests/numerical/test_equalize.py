"""Cross-layer equalization (quant/equalize.py): the function is unchanged, each pair's channel ranges become
equal, grouped/depthwise pairs work, and ops it is not valid through (Clip = ReLU6, a second consumer) stop it."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from nanoify.quant.equalize import _in_channel_ranges, conv_pairs, equalize_graph
from nanoify.runtime.ort import ort_session


def _graph(tmp_path):
    rng = np.random.default_rng(0)
    spread = np.logspace(-2, 1, 6).astype(np.float32).reshape(6, 1, 1, 1)  # channel ranges over 3 decades
    w = {"wa": rng.normal(size=(6, 3, 3, 3)).astype(np.float32) * spread, "ba": rng.normal(size=6).astype(np.float32),
         "wb": rng.normal(size=(6, 3, 1, 1)).astype(np.float32),  # grouped: 2 groups of 3 input channels
         "wd": rng.normal(size=(6, 1, 3, 3)).astype(np.float32) * spread,  # depthwise
         "wp": rng.normal(size=(4, 6, 1, 1)).astype(np.float32),
         "wc": rng.normal(size=(6, 6, 1, 1)).astype(np.float32) * spread, "we": rng.normal(size=(5, 6, 1, 1))
         .astype(np.float32), "lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="A", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"], name="relu"),
             helper.make_node("MaxPool", ["ar"], ["ap"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["ap", "wb"], ["b"], name="B", group=2),
             helper.make_node("Conv", ["b", "wd"], ["d"], name="D", group=6, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["d", "wp"], ["y"], name="P"),
             helper.make_node("Conv", ["b", "wc"], ["c"], name="C"),
             helper.make_node("Clip", ["c", "lo", "hi"], ["c6"], name="relu6"),
             helper.make_node("Conv", ["c6", "we"], ["z"], name="E")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("y", "z")],
                          [numpy_helper.from_array(v, k) for k, v in w.items()])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_equalization_keeps_the_function_and_equalizes_each_pair(tmp_path):
    path = _graph(tmp_path)
    # B feeds two convolutions (D and C): not a pair's first; C → Clip → E: Clip is not homogeneous
    assert [(a.name, b.name) for a, b in conv_pairs(onnx.load(str(path)))] == [("A", "B"), ("D", "P")]
    rep = equalize_graph(path, tmp_path / "eq.onnx")
    assert rep["pairs"] == [["A", "B"], ["D", "P"]] and rep["last_sweep_max_log_scale"] < 1e-6
    x = np.random.default_rng(1).normal(size=(4, 3, 8, 8)).astype(np.float32)
    for want, got in zip(ort_session(path).run(None, {"x": x}), ort_session(tmp_path / "eq.onnx").run(None, {"x": x}),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "eq.onnx")).graph.initializer}
    before = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    for first, second, group in (("wa", "wb", 2), ("wd", "wp", 1)):
        r1 = np.abs(inits[first].reshape(6, -1)).max(axis=1)
        r2, _ = _in_channel_ranges(inits[second], group)
        np.testing.assert_allclose(r1, r2, rtol=1e-5)  # each channel's two ranges now match
        r0 = np.abs(before[first].reshape(6, -1)).max(axis=1)
        assert r1.max() / r1.min() < r0.max() / r0.min() / 10  # and the spread across channels shrank
    np.testing.assert_array_equal(inits["wc"], before["wc"])  # the Clip pair was left alone
