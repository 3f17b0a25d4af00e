"""ONNX graphs run by torch operators (models/onnx_module.py), checked against ONNX Runtime: single operators with
their awkward attributes, the exported test nets, and the real FastestDet."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from nanoify.errors import ModelError
from nanoify.models.onnx_module import OnnxModule, load_onnx_module
from tests.conftest import SHARED

RNG = np.random.default_rng(0)


def _model(node, inputs, consts=None, opset=17, out_rank=None):
    """One node; ``inputs``: name → array (graph inputs); ``consts``: name → array (initializers)."""
    consts = consts or {}
    g = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in
         inputs.items()],
        [helper.make_empty_tensor_value_info(o) for o in node.output],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _check(m, inputs, atol=1e-5):
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, inputs)
    with torch.no_grad():
        got = OnnxModule(m)(*[torch.from_numpy(v) for v in inputs.values()])
    assert len(ref) == len(got)
    for r, g in zip(ref, got, strict=True):
        assert r.shape == tuple(g.shape), (r.shape, g.shape)
        np.testing.assert_allclose(g.numpy().astype(r.dtype), r, atol=atol, rtol=1e-5)


def _x(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


CASES = [
    ("softmax opset 11 over a flattened tail", helper.make_node("Softmax", ["x"], ["y"], axis=1),
     {"x": _x(2, 3, 4, 5)}, {}, 11),
    ("softmax opset 13 on one axis", helper.make_node("Softmax", ["x"], ["y"], axis=1), {"x": _x(2, 3, 4)}, {}, 13),
    ("slice with a negative step", helper.make_node("Slice", ["x", "s", "e", "a", "p"], ["y"]), {"x": _x(3, 8)},
     {"s": np.array([-1, 6], np.int64), "e": np.array([-100, 1], np.int64), "a": np.array([0, 1], np.int64),
      "p": np.array([-1, -2], np.int64)}, 17),
    ("slice with clamped ends", helper.make_node("Slice", ["x", "s", "e"], ["y"]), {"x": _x(4, 6)},
     {"s": np.array([1, -4], np.int64), "e": np.array([1000, -1], np.int64)}, 17),
    ("pad reflect", helper.make_node("Pad", ["x", "p"], ["y"], mode="reflect"), {"x": _x(1, 2, 5, 6)},
     {"p": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)}, 17),
    ("pad edge", helper.make_node("Pad", ["x", "p"], ["y"], mode="edge"), {"x": _x(1, 2, 5, 6)},
     {"p": np.array([0, 0, 1, 0, 0, 0, 0, 3], np.int64)}, 17),
    ("pad constant value", helper.make_node("Pad", ["x", "p", "v"], ["y"]), {"x": _x(1, 2, 3, 3)},
     {"p": np.array([0, 1, 1, 0, 0, 0, 2, 1], np.int64), "v": np.array(0.5, np.float32)}, 17),
    ("resize nearest asymmetric floor", helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest",
     coordinate_transformation_mode="asymmetric", nearest_mode="floor"), {"x": _x(1, 2, 3, 5)},
     {"s": np.array([1, 1, 2, 2], np.float32)}, 13),
    ("resize linear half_pixel", helper.make_node("Resize", ["x", "", "s"], ["y"], mode="linear"),
     {"x": _x(1, 2, 4, 6)}, {"s": np.array([1, 1, 2, 1.5], np.float32)}, 13),
    ("resize linear align_corners by size", helper.make_node("Resize", ["x", "", "", "z"], ["y"], mode="linear",
     coordinate_transformation_mode="align_corners"), {"x": _x(1, 2, 4, 6)},
     {"z": np.array([1, 2, 7, 9], np.int64)}, 13),
    ("resize linear by a scale that does not divide", helper.make_node("Resize", ["x", "", "s"], ["y"],
     mode="linear"), {"x": _x(1, 2, 5, 7)}, {"s": np.array([1, 1, 1.5, 0.6], np.float32)}, 13),
    ("resize nearest half_pixel down by 2, ties", helper.make_node("Resize", ["x", "", "s"], ["y"],
     mode="nearest"), {"x": _x(1, 2, 8, 6)}, {"s": np.array([1, 1, 0.5, 0.5], np.float32)}, 13),
    ("resize nearest round_prefer_ceil by size", helper.make_node("Resize", ["x", "", "", "z"], ["y"],
     mode="nearest", nearest_mode="round_prefer_ceil"), {"x": _x(1, 2, 5, 7)},
     {"z": np.array([1, 2, 8, 3], np.int64)}, 13),
    ("resize nearest asymmetric floor by 1.5", helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest",
     coordinate_transformation_mode="asymmetric", nearest_mode="floor"), {"x": _x(1, 2, 5, 5)},
     {"s": np.array([1, 1, 1.5, 1.5], np.float32)}, 13),
    ("upsample opset 9 by 3", helper.make_node("Upsample", ["x", "s"], ["y"], mode="nearest"), {"x": _x(1, 2, 3, 4)},
     {"s": np.array([1, 1, 3, 3], np.float32)}, 9),
    ("maxpool ceil mode, asymmetric pads", helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3],
     strides=[2, 2], pads=[0, 1, 1, 0], ceil_mode=1), {"x": _x(1, 2, 7, 8)}, {}, 13),
    ("avgpool excluding pads", helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
     pads=[1, 1, 1, 1]), {"x": _x(1, 2, 7, 7)}, {}, 13),
    ("avgpool counting pads", helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
     pads=[1, 1, 1, 1], count_include_pad=1), {"x": _x(1, 2, 7, 7)}, {}, 13),
    ("conv SAME_UPPER stride 2", helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2]),
     {"x": _x(1, 3, 8, 7)}, {"w": _x(4, 3, 3, 3)}, 13),
    ("conv SAME_LOWER, even kernel", helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_LOWER"),
     {"x": _x(1, 2, 6, 5)}, {"w": _x(3, 2, 2, 4)}, 13),
    ("maxpool SAME_UPPER", helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
     auto_pad="SAME_UPPER"), {"x": _x(1, 2, 8, 7)}, {}, 13),
    ("avgpool SAME_UPPER excluding pads", helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 3],
     strides=[2, 2], auto_pad="SAME_UPPER"), {"x": _x(1, 2, 7, 8)}, {}, 13),
    ("avgpool asymmetric pads excluding pads, ceil", helper.make_node("AveragePool", ["x"], ["y"],
     kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 2, 0], ceil_mode=1), {"x": _x(1, 2, 7, 8)}, {}, 13),
    ("conv, groups, asymmetric pads, dilation", helper.make_node("Conv", ["x", "w", "b"], ["y"], group=2,
     pads=[0, 1, 2, 1], strides=[1, 2], dilations=[2, 1]), {"x": _x(1, 4, 9, 9)},
     {"w": _x(6, 2, 3, 3), "b": _x(6)}, 13),
    ("conv transpose", helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1],
     output_padding=[1, 1]), {"x": _x(1, 3, 5, 5)}, {"w": _x(3, 4, 3, 3)}, 13),
    ("gemm transposed with bias", helper.make_node("Gemm", ["a", "b", "c"], ["y"], transB=1, alpha=0.5, beta=2.0),
     {"a": _x(3, 4)}, {"b": _x(5, 4), "c": _x(5)}, 13),
    ("split by sizes", helper.make_node("Split", ["x", "s"], ["y1", "y2", "y3"], axis=1), {"x": _x(2, 7)},
     {"s": np.array([2, 4, 1], np.int64)}, 13),
    ("gather negative indices", helper.make_node("Gather", ["x", "i"], ["y"], axis=1), {"x": _x(2, 5, 3)},
     {"i": np.array([[-1, 0], [2, -2]], np.int64)}, 13),
    ("squeeze and unsqueeze by input", helper.make_node("Unsqueeze", ["x", "a"], ["y"]), {"x": _x(2, 3)},
     {"a": np.array([0, -1], np.int64)}, 13),
    ("reduce mean keepdims", helper.make_node("ReduceMean", ["x"], ["y"], axes=[1, -1], keepdims=1),
     {"x": _x(2, 3, 4)}, {}, 13),
    ("expand", helper.make_node("Expand", ["x", "s"], ["y"]), {"x": _x(3, 1)}, {"s": np.array([2, 3, 4], np.int64)},
     13),
    ("clip by inputs", helper.make_node("Clip", ["x", "lo", "hi"], ["y"]), {"x": _x(4, 4)},
     {"lo": np.array(-0.5, np.float32), "hi": np.array(0.3, np.float32)}, 13),
    ("hard sigmoid", helper.make_node("HardSigmoid", ["x"], ["y"], alpha=0.3, beta=0.4), {"x": _x(4, 4)}, {}, 13),
    ("layer norm over the last two axes", helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=-2,
     epsilon=1e-3), {"x": _x(2, 3, 4)}, {"s": _x(3, 4), "b": _x(3, 4)}, 17),
    ("integer mod", helper.make_node("Mod", ["x", "m"], ["y"]), {"x": np.array([-7, 5, 9], np.int64)},
     {"m": np.array([3, -3, 4], np.int64)}, 13),
    ("flatten at the last axis", helper.make_node("Flatten", ["x"], ["y"], axis=2), {"x": _x(2, 7)}, {}, 13),
    ("argmax", helper.make_node("ArgMax", ["x"], ["y"], axis=1, keepdims=0), {"x": _x(3, 5)}, {}, 13),
    ("topk smallest", helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1, largest=0), {"x": _x(3, 7)},
     {"k": np.array([3], np.int64)}, 13),
    ("gather elements", helper.make_node("GatherElements", ["x", "i"], ["y"], axis=1), {"x": _x(3, 5)},
     {"i": np.array([[0, 4], [-1, 2], [3, 3]], np.int64)}, 13),
    ("scatter nd rows", helper.make_node("ScatterND", ["x", "i", "u"], ["y"]), {"x": _x(4, 3)},
     {"i": np.array([[1], [3]], np.int64), "u": _x(2, 3)}, 13),
    ("cumsum exclusive reverse", helper.make_node("CumSum", ["x", "a"], ["y"], exclusive=1, reverse=1),
     {"x": _x(3, 5)}, {"a": np.array(1, np.int64)}, 13),
    ("einsum", helper.make_node("Einsum", ["a", "b"], ["y"], equation="bij,bjk->bik"), {"a": _x(2, 3, 4)},
     {"b": _x(2, 4, 5)}, 13),
    ("instance norm", helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"], epsilon=1e-4),
     {"x": _x(2, 3, 4, 5)}, {"s": _x(3), "b": _x(3)}, 13),
    ("prelu per channel", helper.make_node("PRelu", ["x", "s"], ["y"]), {"x": _x(2, 3, 4, 4)},
     {"s": np.abs(_x(3, 1, 1))}, 13),
    ("trilu lower", helper.make_node("Trilu", ["x", "k"], ["y"], upper=0), {"x": _x(4, 5)},
     {"k": np.array(1, np.int64)}, 14),
    ("reduce l2", helper.make_node("ReduceL2", ["x"], ["y"], axes=[1], keepdims=0), {"x": _x(3, 4, 2)}, {}, 13),
    ("selu", helper.make_node("Selu", ["x"], ["y"]), {"x": _x(4, 4)}, {}, 13),
    ("mish", helper.make_node("Mish", ["x"], ["y"]), {"x": _x(4, 4)}, {}, 18),
    ("batch norm", helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3),
     {"x": _x(2, 3, 4, 4)}, {"s": _x(3), "b": _x(3), "m": _x(3), "v": np.abs(_x(3)) + 0.5}, 13),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_single_operators_match_onnxruntime(case):
    _, node, inputs, consts, opset = case
    _check(_model(node, inputs, consts, opset), inputs)


def test_shape_arithmetic_stays_on_the_host():
    """Shape → Gather → Unsqueeze → Concat → Reshape (a dynamic-batch export's flatten): computed in numpy."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    consts = {"zero": np.array(0, np.int64), "ax": np.array([0], np.int64), "minus1": np.array([-1], np.int64)}
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 4])],
                          [helper.make_empty_tensor_value_info("y")],
                          [numpy_helper.from_array(v, k) for k, v in consts.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    for b in (1, 5):
        _check(m, {"x": _x(b, 3, 4)})


def test_an_unsupported_operator_is_one_line():
    m = _model(helper.make_node("NonMaxSuppression", ["b", "s"], ["y"]), {"b": _x(1, 4, 4), "s": _x(1, 1, 4)})
    with pytest.raises(ModelError, match="lacks NonMaxSuppression; run this model with --engine onnxruntime"):
        OnnxModule(m)


def _engine_pair(path, feeds, atol):
    from nanoify.engines import open_engine

    with open_engine("onnxruntime", str(path)) as a, open_engine("torch", str(path)) as b:
        assert set(b.input_spec()) == set(a.input_spec())
        for feed in feeds:
            ra, rb = a.infer(feed), b.infer(feed)
            assert ra.keys() == rb.keys()
            for k in ra:
                np.testing.assert_allclose(rb[k], ra[k], atol=atol, rtol=1e-4, err_msg=k)


def test_exported_detector_and_cnn_through_the_torch_engine(tiny_yolo_export, tiny_cnn_export):
    """Dynamic H/W: two shapes in one engine."""
    _engine_pair(tiny_yolo_export / "model.onnx", [{"input": RNG.random((1, 3, 320, 480), dtype=np.float32)},
                                                   {"input": RNG.random((2, 3, 640, 640), dtype=np.float32)}], 1e-3)
    _engine_pair(tiny_cnn_export / "model.onnx", [{"input": RNG.random((4, 3, 16, 16), dtype=np.float32)}], 1e-4)


def test_exported_text_classifier_through_the_torch_engine(tiny_export):
    """A BERT export (Erf, MatMul, Where, masks built from shapes): the padded rows too."""
    ids = np.array([[2, 7, 9, 11, 3, 0, 0], [2, 8, 8, 12, 13, 14, 3]], np.int64)
    feed = {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64)}
    path = tiny_export / "model.onnx"
    names = [i.name for i in onnx.load(str(path)).graph.input]
    if "token_type_ids" in names:
        feed["token_type_ids"] = np.zeros_like(ids)
    _engine_pair(path, [feed], 1e-4)


@pytest.mark.shared_data
def test_fastestdet_through_the_torch_engine():
    path = SHARED / "models" / "fastestdet" / "FastestDet.onnx"
    if not path.is_file():
        pytest.skip("FastestDet is not beside the project")
    m = load_onnx_module(path)
    assert m.opset == 11 and len(m.nodes) > 200
    _engine_pair(path, [{m.input_names[0]: RNG.random((1, 3, 352, 352), dtype=np.float32)}], 1e-4)


def test_reduced_precision_and_the_exact_shape_runner(tiny_yolo_export):
    """BF16 on the CPU: float constants follow the model's precision (no dtype clash), boxes within 2%; the
    runner's eager path (what torch.compile alone uses) returns the module's outputs unchanged."""
    from nanoify.engines import open_engine
    from nanoify.engines.static_shapes import ExactShapeRunner

    feed = {"input": RNG.random((1, 3, 320, 320), dtype=np.float32)}
    path = tiny_yolo_export / "model.onnx"
    with open_engine("torch", str(path)) as fp32, open_engine("torch", str(path), dtype="bf16") as bf16:
        a, b = fp32.infer(feed)["output0"], bf16.infer(feed)["output0"]
    assert np.abs(b - a).max() <= 0.02 * np.abs(a).max()
    m = load_onnx_module(path)
    run = ExactShapeRunner(lambda **t: m(t["input"]), "cpu", graphs=False)
    with torch.no_grad():
        np.testing.assert_array_equal(run({"input": torch.from_numpy(feed["input"])})[0].numpy(),
                                      m(torch.from_numpy(feed["input"]))[0].numpy())


def test_a_second_pass_copies_nothing_from_the_host(tiny_yolo_export, monkeypatch):
    """What CUDA-graph capture needs: once a shape has run, the next pass of that shape makes no tensor from host
    data (the detector's grid comes from Shape → Range on the host and is kept by content)."""
    m = load_onnx_module(tiny_yolo_export / "model.onnx")
    x = torch.from_numpy(RNG.random((1, 3, 320, 480), dtype=np.float32))
    with torch.no_grad():
        first = m(x)[0]
        made = []
        real = torch.tensor
        monkeypatch.setattr(torch, "tensor", lambda *a, **k: made.append(1) or real(*a, **k))
        monkeypatch.setattr(torch, "as_tensor", lambda *a, **k: made.append(1) or real(*a, **k))
        again = m(x)[0]
    assert not made and torch.equal(first, again)


def test_a_yolov8n_shaped_export_through_the_torch_engine(tmp_path):
    """The Ultralytics YOLOv8n layout (C2f, SPPF, Split, DFL softmax over bins, Resize, one 84×N output), random
    weights, dynamic H/W: box pixels within 0.05 of ONNX Runtime, scores within 1e-4, at two input sizes."""
    import importlib.util
    from pathlib import Path

    from nanoify.export.onnx import export

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "yolo_layout_speed.py"  # the net is built there
    spec = importlib.util.spec_from_file_location("yolo_layout_speed", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    export(mod.YoloV8nShape().eval(), tmp_path / "y", example_input=np.zeros((1, 3, 320, 320), np.float32),
           dynamic_hw=True, preprocess={"size": [320, 320], "resize": "letterbox"}, labels=[str(i) for i in range(80)],
           output_names=("output0",), task="detection", decoder="yolov8")
    from nanoify.engines import open_engine

    path = tmp_path / "y" / "model.onnx"
    with open_engine("onnxruntime", str(path)) as a, open_engine("torch", str(path)) as b:
        for shape in ((1, 3, 320, 320), (2, 3, 256, 320)):
            feed = {"input": RNG.random(shape, dtype=np.float32)}
            ra, rb = a.infer(feed)["output0"], b.infer(feed)["output0"]
            assert ra.shape == rb.shape == (shape[0], 84, (shape[2] * shape[3]) // 64 * 21 // 16)
            np.testing.assert_allclose(rb[:, :4], ra[:, :4], atol=0.05)
            np.testing.assert_allclose(rb[:, 4:], ra[:, 4:], atol=1e-4)
