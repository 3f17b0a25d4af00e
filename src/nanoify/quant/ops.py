"""The op types each quantization format touches — one list each, and why.

- ``WEIGHT_OPS``: ops with a weight (a constant input) that static INT8 runs as integer GEMMs/convolutions. In
  transformers only their inputs get Q/DQ: static INT8 of every BERT op (Add, LayerNorm, Softmax, GELU)
  collapses accuracy, and TensorRT's explicit-quantization rules want Q/DQ at GEMM/convolution inputs and fuse
  the rest themselves.
- ``all_static_ops()``: every op ONNX Runtime can run in INT8 (its QLinear and QDQ registries: Conv, Add,
  pooling, Relu/Clip folded into ranges, Concat, …). For CNNs the activations then stay INT8 from one
  convolution to the next (QLinearConv → QLinearAdd → QLinearConv), which is where CPU INT8 speed comes from;
  it is the scope ONNX Runtime's ``quantize_static`` uses.
- ``DYNAMIC_OPS``: dynamic INT8 (weights offline, activations per batch): GEMMs, the fused Attention, and the
  word-embedding table (EmbedLayerNormalization in fused graphs, Gather in plain ones) — INT8 there cuts a
  MiniLM file from 58.7 to 23.0 MB at the same SST-2 accuracy (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from typing import Any

import onnx
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

WEIGHT_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")
DYNAMIC_OPS = ("MatMul", "Gemm", "Attention", "EmbedLayerNormalization", "Gather")
CONV_OPS = ("Conv", "ConvTranspose")


def all_static_ops() -> tuple[str, ...]:
    """Every op type ONNX Runtime's static quantizer handles (the default of its ``quantize_static``)."""

    return tuple(sorted(set(QDQRegistry) | set(QLinearOpsRegistry)))


def constants(model: Any) -> set[str]:
    """Names of a graph's initializers and Constant outputs."""
    out = {i.name for i in model.graph.initializer}
    out |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return out


def weight_nodes(model: Any, op_types: tuple[str, ...] = WEIGHT_OPS) -> list[str]:
    """Names of nodes of ``op_types`` with at least one constant (weight) input, in graph order."""
    consts = {i.name for i in model.graph.initializer}
    ops = set(op_types)
    return [n.name for n in model.graph.node if n.op_type in ops and any(i in consts for i in n.input)]


def scope_nodes(model: Any, scope: str) -> list[str]:
    """The nodes a static scheme quantizes: ``weights`` (weight GEMMs/convolutions) or ``all`` (every op ONNX
    Runtime can run in INT8)."""
    if scope == "weights":
        return weight_nodes(model)
    ops = set(all_static_ops())
    return [n.name for n in model.graph.node if n.op_type in ops]


def _skeleton(model: Any) -> Any:
    """The model with its float initializers turned into typed graph inputs (no data): all that type inference
    needs, without a second copy of the weights (a BERT-base graph would otherwise cost another 1.2 GB)."""

    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)
    g = onnx.GraphProto(name=model.graph.name)
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    g.value_info.extend(model.graph.value_info)
    declared = {i.name for i in model.graph.input}
    for init in model.graph.initializer:
        if init.data_type in floats:
            if init.name not in declared:
                g.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            g.initializer.append(init)  # ids, shapes, axes: small, and inference may read their values
    m = onnx.helper.make_model(g, opset_imports=list(model.opset_import))
    m.ir_version = model.ir_version
    return m


def nonfloat_tensor_names(model: Any) -> set[str]:
    """Tensors known to hold something other than floats (ids, masks, shapes): never calibrated."""

    try:
        inferred = onnx.shape_inference.infer_shapes(_skeleton(model))
    except Exception:  # noqa: BLE001 - contrib ops defeat inference; then only what the graph states is known
        inferred = model
    vis = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    return {v.name for v in vis if v.type.tensor_type.elem_type and v.type.tensor_type.elem_type not in floats}


def activation_tensors(model: Any, nodes: list[str], outputs: bool = False) -> list[str]:
    """The non-constant float inputs (and outputs, with ``outputs``) of ``nodes``, in graph order: what to
    calibrate for them."""
    skip = constants(model) | nonfloat_tensor_names(model)
    only = set(nodes)
    seen: dict[str, None] = {}
    for node in model.graph.node:
        if node.name not in only:
            continue
        names = list(node.input) + (list(node.output) if outputs else [])
        for name in names:
            if name and name not in skip:
                seen.setdefault(name, None)
    return list(seen)
