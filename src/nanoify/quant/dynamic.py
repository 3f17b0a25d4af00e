"""CPU dynamic INT8 (weights INT8 offline, activations quantized per batch at run time).

ONNX Runtime's stock settings (per-tensor weights, full 8-bit range) cost trained models accuracy: per the
peer measurements in ../shared/ANCHORS.md, all-MiniLM-L6-v2 keeps an output cosine of 0.91 to FP32 stock and
0.983 with per-channel weights and reduce_range (7-bit weights, which avoid the u8×s8 overflow of AVX2
without VNNI). Measured by nanoify on the SST-2 MiniLM teacher (benchmarks/RESULTS.md): stock 88.42% and
logit SQNR 16.5 dB, per-channel + reduce_range 89.11% and 24.0 dB, against 89.45% FP32. ``nanoify quantize``
tries these variants and keeps what measures best on the machine it runs on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from .ops import DYNAMIC_OPS


def quantize_dynamic_int8(src: str | Path, dst: str | Path, per_channel: bool = True, reduce_range: bool = True,
                          op_types: Sequence[str] = DYNAMIC_OPS,
                          exclude_nodes: Sequence[str] = ()) -> None:
    """Write a dynamically quantized copy of ``src`` (nodes in ``exclude_nodes`` stay FP32)."""


    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # ORT logs a pre-processing hint at WARNING on every call
    try:
        quantize_dynamic(str(src), str(dst), per_channel=per_channel, reduce_range=reduce_range,
                         weight_type=QuantType.QInt8, op_types_to_quantize=list(op_types),
                         nodes_to_exclude=list(exclude_nodes),
                         # fused com.microsoft ops defeat ONNX shape inference; their tensors are FP32
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        logging.getLogger().setLevel(quiet)
