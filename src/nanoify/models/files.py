"""The files a model folder holds, read without knowing its task: an ONNX graph's inputs and outputs, whether
it is already quantized, a torch-module folder's ``module.json``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ModelError, first_line

ONNX_SUFFIXES = (".onnx",)
TRT_SUFFIXES = (".plan", ".engine", ".trt")
IR_SUFFIXES = (".xml",)  # OpenVINO IR (weights in the .bin beside it)
MODULE_FILE = "module.json"
LABEL_MAP_FILE = "label_map.json"
PREPROCESS_FILE = "preprocess.json"
QUANT_FILE = "quantization.json"  # a quantized or precision-chosen model's format, beside it
QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
                 "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul", "QAttention", "QEmbedLayerNormalization",
                 "QGemm", "QLinearAdd")


def onnx_io(path: Path) -> tuple[dict[str, tuple[str, list[Any]]], dict[str, tuple[str, list[Any]]], list[str]]:
    """(inputs, outputs, op types) of an ONNX graph, read without its external weights."""
    import onnx

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf errors are not user-readable
        raise ModelError(f"{path} is not a readable ONNX model ({type(e).__name__}); re-export it") from None
    inits = {i.name for i in m.graph.initializer}

    def spec(vi: Any) -> tuple[str, list[Any]]:
        t = vi.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "float32"
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        return dtype, dims

    ins = {i.name: spec(i) for i in m.graph.input if i.name not in inits}
    outs = {o.name: spec(o) for o in m.graph.output}
    return ins, outs, [n.op_type for n in m.graph.node]


_OV_TYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "i64": "int64", "i32": "int32", "u8": "uint8",
             "i8": "int8", "boolean": "bool"}


def ir_io(path: Path) -> tuple[dict[str, tuple[str, list[Any]]], dict[str, tuple[str, list[Any]]], list[str]]:
    """(inputs, outputs, op types) of an OpenVINO IR, as :func:`onnx_io` gives them for ONNX (a dynamic leading
    axis is ``batch``, other dynamic axes ``?``); read with OpenVINO, an optional backend."""
    try:
        import openvino as ov  # optional backend: only IR files need it
    except ImportError:
        raise ModelError(f"{path} is an OpenVINO IR; reading it needs OpenVINO (pip install openvino)") from None
    try:
        m = ov.Core().read_model(str(path))
    except Exception as e:  # noqa: BLE001 - OpenVINO's reader raises RuntimeError subclasses
        raise ModelError(f"{path} is not a readable OpenVINO IR ({first_line(e)})") from None
    return ir_spec(m.inputs), ir_spec(m.outputs), [op.get_type_name() for op in m.get_ordered_ops()]


def ir_spec(ports: Any) -> dict[str, tuple[str, list[Any]]]:
    """Name → (dtype, dims) of an OpenVINO model's input or output ports (a dynamic leading axis is ``batch``,
    other dynamic axes ``?``)."""
    def spec(port: Any) -> tuple[str, list[Any]]:
        dims = [d.get_length() if d.is_static else ("batch" if i == 0 else "?")
                for i, d in enumerate(port.get_partial_shape())]
        return _OV_TYPES.get(port.get_element_type().get_type_name(), "float32"), dims

    return {p.get_any_name(): spec(p) for p in ports}


def chosen_precision(model: Path, allowed: Sequence[str]) -> str:
    """The precision ``quantize`` chose for a model run in float (``quantization.json`` of kind ``precision``
    beside the file, or in the folder), when it is one of ``allowed``; else ``fp32``."""
    qfile = (model if model.is_dir() else model.parent) / QUANT_FILE
    try:
        q = json.loads(qfile.read_text()) if qfile.is_file() else {}
    except (OSError, ValueError):
        return "fp32"
    ok = isinstance(q, dict) and q.get("kind") == "precision" and q.get("format") in allowed
    return str(q["format"]) if ok else "fp32"


def is_quantized(ops: list[str]) -> int:
    """How many nodes of a graph are quantization ops (0 for an FP32 graph)."""
    return sum(op in QUANTIZED_OPS for op in ops)


def read_module_json(folder: Path) -> dict[str, Any]:
    """``module.json`` of a torch-module folder: factory, kwargs, inputs, outputs, task."""
    try:
        d = json.loads((folder / MODULE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{folder / MODULE_FILE} is not readable JSON ({e})") from None
    for key in ("factory", "inputs", "outputs"):
        if key not in d:
            raise ModelError(f"{folder / MODULE_FILE} has no {key!r}; write it with `nanoify export --module …`")
    return d
