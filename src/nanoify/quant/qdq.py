"""Static INT8 as explicit QuantizeLinear/DequantizeLinear pairs, written with *our* calibrated ranges.

The graph rewriting is ONNX Runtime's (``QDQQuantizer``, as Optimum does); what goes in is ours: one
symmetric ``amax`` per activation tensor from :mod:`nanoify.quant.observers`, handed over as a
``TensorsData`` so ONNX Runtime never runs its own calibrator (which keeps every batch in memory).

Only the inputs of MatMul/Gemm/Conv are quantized. Static INT8 of every op in BERT (Add, LayerNorm,
Softmax, GELU) collapses accuracy; TensorRT's explicit-quantization rules also want Q/DQ on the inputs of
the GEMM/convolution layers and let its fusions decide the rest. Two presets say *why* they differ:

- ``cpu``: unsigned 8-bit activations with a zero point of 128 (symmetric range), signed per-channel
  7-bit weights (reduce_range) — the u8×s8 pairing ONNX Runtime's x86 kernels run, which fuse each Q/DQ
  MatMul into an integer kernel at load time. Without VNNI the AVX2 kernel adds pairs of u8×s8 products
  in int16 and saturates with full-range weights: on the tiny test BERT, logit SQNR went from 9 dB to
  30 dB (min-max ranges) with 7-bit weights.
- ``tensorrt``: signed symmetric 8-bit activations and per-channel weights (zero points 0), the only
  INT8 form TensorRT accepts in explicit-quantization graphs; no bias quantization (TensorRT fuses biases
  itself).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)

QDQ_OPS = ("MatMul", "Gemm", "Conv")
PRESETS = ("cpu", "tensorrt")


def quantizable_nodes(model: Any, op_types: Iterable[str] = QDQ_OPS) -> list[str]:
    """Names of nodes of ``op_types`` with at least one constant (weight) input, in graph order."""
    consts = {i.name for i in model.graph.initializer}
    ops = set(op_types)
    return [n.name for n in model.graph.node if n.op_type in ops and any(i in consts for i in n.input)]


def weight_node_inputs(model: Any, op_types: Iterable[str] = QDQ_OPS) -> list[str]:
    """The activation (non-constant) inputs of the nodes ``quantizable_nodes`` returns: what to calibrate."""
    from .calibrate import activation_tensors

    return activation_tensors(model, op_types, nodes=quantizable_nodes(model, op_types))


def tensors_data(ranges: dict[str, float]) -> Any:
    """Our symmetric ranges as ONNX Runtime's ``TensorsData`` ([-amax, amax] per tensor)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    return TensorsData(CalibrationMethod.MinMax,
                       {k: TensorData(lowest=np.float32(-a), highest=np.float32(a)) for k, a in ranges.items()})


def quantize_static_qdq(src: str | Path, dst: str | Path, ranges: dict[str, float], preset: str = "cpu",
                        exclude_nodes: Sequence[str] = (), op_types: Sequence[str] = QDQ_OPS) -> dict[str, int]:
    """Write a Q/DQ copy of ``src`` using ``ranges`` (tensor → amax); returns op counts of the result.

    Nodes in ``exclude_nodes`` keep FP32 inputs (mixed precision). Every activation input of a quantized
    node must have a range; a missing one is a ConfigError naming it.
    """
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    if preset not in PRESETS:
        raise ConfigError(f"unknown Q/DQ preset {preset!r}; choose one of {', '.join(PRESETS)}")
    model = onnx.load(str(src))
    excluded = set(exclude_nodes)
    consts = {i.name for i in model.graph.initializer}
    weight_nodes = set(quantizable_nodes(model, op_types))
    # activation×activation MatMuls (attention scores, context) stay FP32: accuracy, and TensorRT fuses them
    wanted = [n for n in model.graph.node if n.name in weight_nodes and n.name not in excluded]
    missing = sorted({i for n in wanted for i in n.input if i and i not in consts and i not in ranges})
    if missing:
        raise ConfigError(f"no calibrated range for {missing[0]} (and {len(missing) - 1} more); calibrate the "
                          "same graph that is being quantized")
    trt = preset == "tensorrt"
    extra = {
        "ActivationSymmetric": True,  # amax ranges are symmetric; u8 then gets zero point 128
        "WeightSymmetric": True,
        "OpTypesToExcludeOutputQuantization": list(op_types),  # inputs only: outputs stay FP32
        "DefaultTensorType": onnx.TensorProto.FLOAT,
        "QuantizeBias": not trt,
        "DedicatedQDQPair": trt,  # one Q/DQ pair per consumer: TensorRT fuses each into its own layer
    }
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # ORT warns about every tensor it will not touch
    try:
        q = QDQQuantizer(model, True, not trt, QuantType.QInt8, QuantType.QInt8 if trt else QuantType.QUInt8,
                         tensors_data({k: v for k, v in ranges.items()}), [n.name for n in wanted], [],
                         list(op_types), extra)
        q.quantize_model()
    finally:
        logging.getLogger().setLevel(quiet)
    if excluded:
        _restore_fp32_inputs(q.model.model, excluded)
    q.model.save_model_to_file(str(dst), use_external_data_format=q.model.model.ByteSize() > 1.8e9)
    return op_counts(q.model.model)


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


def op_counts(model: Any) -> dict[str, int]:
    """How many nodes of each op type a graph has."""
    out: dict[str, int] = {}
    for n in model.graph.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return dict(sorted(out.items()))
