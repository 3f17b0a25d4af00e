"""Static INT8 as explicit QuantizeLinear/DequantizeLinear pairs, written with *our* calibrated ranges.

The graph rewriting is ONNX Runtime's (``QDQQuantizer``, as Optimum does); what goes in is ours: one
:class:`~nanoify.quant.calibrate.Range` per activation tensor (signed [-amax, amax], or unsigned [0, amax] for
a non-negative tensor where the preset allows), handed over as a ``TensorsData`` so ONNX Runtime never runs
its own calibrator (which keeps every batch in memory).

Scope (see :mod:`nanoify.quant.ops`): ``weights`` quantizes the inputs of weight GEMMs/convolutions only
(transformers); ``all`` quantizes every op ONNX Runtime runs in INT8 (CNNs: activations stay INT8 between
convolutions, Relu folds into the preceding range).

Two presets say *why* they differ:
- ``cpu``: unsigned 8-bit activations (zero point 128 for a signed range, 0 for an unsigned one), signed
  per-channel weights of ``weight_bits`` (8, or 7 = reduce_range where the CPU's u8×s8 kernel saturates —
  measured by :func:`nanoify.runtime.cpu.u8s8_saturates`, not assumed): the pairing ONNX Runtime's x86 kernels
  fuse into integer kernels at load time.
- ``tensorrt``: signed symmetric 8-bit activations and per-channel weights (zero points 0), the only INT8 form
  TensorRT accepts in explicit-quantization graphs; one Q/DQ pair per consumer; no bias quantization
  (TensorRT fuses biases itself).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import QuantType
from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

from ..errors import ConfigError
from .calibrate import Range
from .ops import activation_tensors, all_static_ops, scope_nodes, weight_nodes

log = logging.getLogger(__name__)

PRESETS = ("cpu", "tensorrt")
SCOPES = ("weights", "all")


def quantizable_nodes(model: Any, scope: str = "weights") -> list[str]:
    """The nodes a static scheme of ``scope`` quantizes, in graph order."""
    return scope_nodes(model, scope)


def calibration_tensors(model: Any, scope: str = "weights") -> list[str]:
    """The activation tensors a static scheme of ``scope`` needs ranges for: inputs of the weight ops, or inputs
    and outputs of every quantized op."""
    return activation_tensors(model, scope_nodes(model, scope), outputs=scope == "all")


def weight_node_inputs(model: Any) -> list[str]:
    """The activation inputs of the weight GEMMs/convolutions (what the ``weights`` scope calibrates)."""
    return activation_tensors(model, weight_nodes(model))


def tensors_data(ranges: dict[str, Range]) -> Any:
    """Our ranges as ONNX Runtime's ``TensorsData`` (lowest, highest per tensor)."""

    out = {}
    for k, r in ranges.items():
        lo, hi = r.bounds
        out[k] = TensorData(lowest=np.float32(lo), highest=np.float32(hi))
    return TensorsData(CalibrationMethod.MinMax, out)


def quantize_static_qdq(src: str | Path, dst: str | Path, ranges: dict[str, Range | float], preset: str = "cpu",
                        exclude_nodes: Sequence[str] = (), scope: str = "weights",
                        weight_bits: int = 8) -> dict[str, int]:
    """Write a Q/DQ copy of ``src`` using ``ranges`` (tensor → Range or amax); returns op counts of the result.

    Nodes in ``exclude_nodes`` keep FP32 inputs (mixed precision). Every activation tensor of a quantized node
    must have a range; a missing one is a ConfigError naming it.
    """

    if preset not in PRESETS:
        raise ConfigError(f"unknown Q/DQ preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if scope not in SCOPES:
        raise ConfigError(f"unknown Q/DQ scope {scope!r}; choose one of {', '.join(SCOPES)}")
    if weight_bits not in (7, 8):
        raise ConfigError(f"static INT8 weights are 7 or 8 bits, not {weight_bits}")
    trt = preset == "tensorrt"
    rs = {k: Range.of(v) for k, v in ranges.items()}
    if trt:  # TensorRT takes signed symmetric INT8 only
        rs = {k: Range(r.amax, False, r.num_bits) for k, r in rs.items()}
    model = onnx.load(str(src))
    if not trt:  # ONNX Runtime folds Relu into its input's range: that range must start at 0 or Relu is lost
        for n in model.graph.node:
            if n.op_type == "Relu" and n.output[0] in rs:
                rs[n.output[0]] = Range(rs[n.output[0]].amax, True, rs[n.output[0]].num_bits)
    excluded = set(exclude_nodes)
    in_scope = set(scope_nodes(model, scope))
    wanted = [n for n in model.graph.node if n.name in in_scope and n.name not in excluded]
    if not wanted:  # every node kept FP32 (an empty node list would mean "all nodes" to ONNX Runtime)
        onnx.save(model, str(dst), save_as_external_data=model.ByteSize() > 1.8e9)
        return op_counts(model)
    need = activation_tensors(model, [n.name for n in wanted], outputs=scope == "all")
    missing = [t for t in need if t not in rs]
    if missing:
        raise ConfigError(f"no calibrated range for {missing[0]} (and {len(missing) - 1} more); calibrate the "
                          "same graph that is being quantized")
    op_types = list(all_static_ops()) if scope == "all" else ["MatMul", "Gemm", "Conv", "ConvTranspose"]
    extra = _quantizer_options(trt, rs, scope, op_types)
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # ORT warns about every tensor it will not touch
    try:
        q = QDQQuantizer(model, True, weight_bits == 7, QuantType.QInt8,
                         QuantType.QInt8 if trt else QuantType.QUInt8, tensors_data(rs), [n.name for n in wanted], [],
                         op_types, extra)
        q.quantize_model()
    finally:
        logging.getLogger().setLevel(quiet)
    if excluded:
        _restore_fp32_inputs(q.model.model, excluded)
    _float_graph_outputs(q.model.model)
    q.model.save_model_to_file(str(dst), use_external_data_format=q.model.model.ByteSize() > 1.8e9)
    return op_counts(q.model.model)


def _quantizer_options(trt: bool, rs: dict[str, Range], scope: str, op_types: list[str]) -> dict[str, Any]:
    """ONNX Runtime's QDQQuantizer options for a preset: cpu — explicit bounds per tensor (symmetric for signed
    tensors, [0, amax] for unsigned), so ORT folds Relu/Clip into the preceding range; tensorrt — symmetric, zero
    point 0, one Q/DQ pair per consumer."""

    extra: dict[str, Any] = {
        "ActivationSymmetric": trt,
        "WeightSymmetric": True,
        "DefaultTensorType": onnx.TensorProto.FLOAT,
        "QuantizeBias": not trt,
        "DedicatedQDQPair": trt,  # one Q/DQ pair per consumer: TensorRT fuses each into its own layer
    }
    if not trt:  # signed symmetric tensors: u8 with zero point 128 (no rounding drift); else their bounds
        extra["TensorQuantOverrides"] = {k: [{"symmetric": r.symmetric}] for k, r in rs.items()}
    if scope == "weights":
        extra["OpTypesToExcludeOutputQuantization"] = op_types  # inputs only: outputs stay FP32
    return extra


def _restore_fp32_inputs(model: Any, excluded: set[str]) -> None:
    """Feed excluded nodes the original FP32 tensor where ONNX Runtime shared a Q/DQ pair with a quantized
    sibling (q, k and v read one tensor): a node kept FP32 must not see quantized activations."""
    producer = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        if n.name not in excluded:
            continue
        for k, name in enumerate(n.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                n.input[k] = q.input[0]


def _float_graph_outputs(model: Any) -> None:
    """Drop the Q/DQ pair ONNX Runtime puts on a graph output (a classifier's logits, a detector's maps): rounding
    the final output to 8 bits only adds error — close top-2 calls flip — and the producing op runs as fast with
    a float output (QGemm, QLinearConv → float)."""
    prod = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    drop = []
    for out in model.graph.output:
        dq = prod.get(out.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = prod.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or consumers.get(q.input[0], 0) != 1:
            continue
        src = prod.get(q.input[0])
        if src is None:
            continue
        for k, name in enumerate(src.output):
            if name == q.input[0]:
                src.output[k] = out.name
        drop += [q, dq]
    for n in drop:
        model.graph.node.remove(n)
    used = {i for n in model.graph.node for i in n.input}
    stale = [i for i in model.graph.initializer if i.name not in used]
    for i in stale:
        model.graph.initializer.remove(i)


def op_counts(model: Any) -> dict[str, int]:
    """How many nodes of each op type a graph has."""
    out: dict[str, int] = {}
    for n in model.graph.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return dict(sorted(out.items()))
