"""Static Q/DQ INT8 with our ranges: graph structure per preset, accuracy against FP32, missing ranges."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from nanoify.data.text import collate
from nanoify.engines import open_engine
from nanoify.errors import ConfigError
from nanoify.quant.calibrate import calibrate_onnx, choose_ranges
from nanoify.quant.qdq import op_counts, quantizable_nodes, quantize_static_qdq, weight_node_inputs
from nanoify.runtime.cpu import int8_report
from nanoify.tasks.classify import sqnr_db


def _feeds(seed, n=6):
    rng = np.random.default_rng(seed)
    return [collate([list(rng.integers(5, 80, size=k)) for k in rng.integers(3, 30, size=4)], 0) for _ in range(n)]


@pytest.fixture(scope="module")
def calibrated(tiny_export):
    src = tiny_export / "model.onnx"
    model = onnx.load(src)
    hists = calibrate_onnx(src, _feeds(0), tensors=weight_node_inputs(model))
    return src, model, choose_ranges(hists, "percentile")


def _structure(model):
    consts = {i.name for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.name in set(quantizable_nodes(model))]
    acts = [i for n in nodes for i in n.input if i and i not in consts]
    biases = [n for n in nodes if n.op_type == "Gemm" and len(n.input) > 2]
    return nodes, acts, biases


def test_cpu_preset_structure_and_accuracy(calibrated, tmp_path):
    src, model, ranges = calibrated
    nodes, acts, biases = _structure(model)
    assert len(nodes) == 4 * 6 + 2  # q, k, v, attention out, FFN in/out per layer; pooler; classifier
    dst = tmp_path / "cpu.onnx"
    # the weight width quantize picks on this CPU: 7 bits where ORT's u8s8 kernel saturates (AVX2 without VNNI:
    # 12 dB with 8-bit weights there), 8 elsewhere
    bits = int8_report()["static_weight_bits"]
    counts = quantize_static_qdq(src, dst, ranges, preset="cpu", weight_bits=bits)
    assert counts["QuantizeLinear"] == len(set(acts))  # one pair per activation tensor (q/k/v share theirs)
    assert counts["DequantizeLinear"] == len(set(acts)) + len(nodes) + len(biases)
    assert counts["MatMul"] == op_counts(model)["MatMul"]  # nothing removed, only Q/DQ added
    q = onnx.load(dst)
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    act_zp = [inits[n.input[2]] for n in q.graph.node if n.op_type == "QuantizeLinear"]
    assert all(z.dtype == np.uint8 and np.all(z == 128) for z in act_zp)  # symmetric u8 activations
    w_scales = [inits[n.input[1]] for n in q.graph.node if n.op_type == "DequantizeLinear"
                and inits.get(n.input[0]) is not None and inits[n.input[0]].dtype == np.int8]
    assert len(w_scales) == len(nodes) and all(s.ndim == 1 and s.size > 1 for s in w_scales)  # per channel
    feeds = _feeds(1)
    with open_engine("onnxruntime", str(src)) as fp, open_engine("onnxruntime", str(dst)) as qq:
        ref = np.concatenate([fp.infer(f)["logits"] for f in feeds])
        got = np.concatenate([qq.infer(f)["logits"] for f in feeds])
    assert sqnr_db(ref, got) >= 20.0


def test_tensorrt_preset_is_symmetric_int8_with_dedicated_pairs(calibrated, tmp_path):
    src, model, ranges = calibrated
    nodes, acts, _ = _structure(model)
    dst = tmp_path / "trt.onnx"
    counts = quantize_static_qdq(src, dst, ranges, preset="tensorrt")
    assert counts["QuantizeLinear"] == len(acts)  # one pair per consumer
    assert counts["DequantizeLinear"] == len(acts) + len(nodes)  # no int32 bias for TensorRT
    q = onnx.load(dst)
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    zps = [inits[n.input[2]] for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
           and len(n.input) > 2]
    assert zps and all(z.dtype == np.int8 and np.all(z == 0) for z in zps)


def test_excluded_nodes_stay_fp32_and_missing_ranges_fail(calibrated, tmp_path):
    src, model, ranges = calibrated
    nodes, _, _ = _structure(model)
    keep = [nodes[0].name, nodes[-1].name]
    quantize_static_qdq(src, tmp_path / "m.onnx", ranges, exclude_nodes=keep)
    q = onnx.load(tmp_path / "m.onnx")
    produced = {o: n.op_type for n in q.graph.node for o in n.output}
    for n in q.graph.node:
        if n.name in keep:
            assert all(produced.get(i) != "DequantizeLinear" for i in n.input)
    partial = dict(list(ranges.items())[1:])
    with pytest.raises(ConfigError, match="no calibrated range"):
        quantize_static_qdq(src, tmp_path / "x.onnx", partial)


def test_pre_optimize_removes_layout_noise_and_keeps_the_math(tmp_path):
    """An Identity and a constant subexpression go (ORT's basic rewrites, as before quant_pre_process's
    quantization); the outputs stay equal."""
    from onnx import TensorProto, helper

    from nanoify.quant.steps import pre_optimize
    from nanoify.runtime.ort import ort_session

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 4, 1, 1)).astype(np.float32), "w")
    one = numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Identity", ["c"], ["i"], name="id"),
             helper.make_node("Add", ["one", "one"], ["two"], name="const_add"),  # foldable
             helper.make_node("Mul", ["i", "two"], ["y"], name="mul")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4, 5, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 8, 5, 5])], [w, one])
    src = tmp_path / "m.onnx"
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8  # onnx's default follows the onnx release, which an older ONNX Runtime may not load
    onnx.save(m, src)
    out = pre_optimize(src, tmp_path / "basic")
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert out != src and "Identity" not in ops and ops.count("Add") == 0 and "Conv" in ops
    x = np.random.default_rng(1).normal(size=(2, 4, 5, 5)).astype(np.float32)
    a, b = (ort_session(p).run(None, {"x": x})[0] for p in (src, out))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
