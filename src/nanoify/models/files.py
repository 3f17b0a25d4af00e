"""The files a model folder holds, read without knowing its task: an ONNX graph's inputs and outputs, whether
it is already quantized, a torch-module folder's ``module.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ModelError

ONNX_SUFFIXES = (".onnx",)
TRT_SUFFIXES = (".plan", ".engine", ".trt")
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
