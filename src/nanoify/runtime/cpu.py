"""What this CPU's INT8 kernels do, found by asking the CPU and by measuring, never by assumption.

``cpu_flags()`` lists the instruction-set flags that decide INT8 and BF16 speed (from ``/proc/cpuinfo``); they
go into every manifest. ``u8s8_saturates()`` *measures* the one behaviour that changes which weight format is
correct: without VNNI, x86 INT8 GEMM kernels add pairs of u8×s8 products in 16-bit lanes (``vpmaddubsw``) and
saturate when both factors are large, so 8-bit weights silently lose accuracy and 7-bit weights
(``reduce_range``) are needed; with VNNI (``vpdpbusd``) the sums are 32-bit and full-range weights are exact.
The probe runs one Q/DQ MatMul with the worst-case values through ONNX Runtime and compares it with exact
integer arithmetic.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from pathlib import Path

import numpy as np

from .ort import ort_session

log = logging.getLogger(__name__)

FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
         "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> tuple[str, ...]:
    """The INT8/BF16-relevant ISA flags of this CPU (empty where /proc/cpuinfo is not readable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    have: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            have |= set(line.split(":", 1)[1].split())
            break
    return tuple(f for f in FLAGS if f in have)


def has_vnni() -> bool:
    return bool({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"} & set(cpu_flags()))


@functools.lru_cache(maxsize=1)
def u8s8_saturates() -> bool:
    """True when ONNX Runtime's u8×s8 INT8 MatMul on this CPU saturates with full-range weights (measured)."""
    import onnx
    from onnx import TensorProto, helper

    k, n = 64, 8
    a = np.full((4, k), 255, dtype=np.uint8)  # activations at the top of the u8 range
    b = np.full((k, n), 127, dtype=np.int8)  # weights at the top of the s8 range
    b[:, 1::2] = -127
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b", "za", "zb"], ["y"])], "probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [4, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [4, n])],
        [helper.make_tensor("b", TensorProto.INT8, [k, n], b.ravel().tolist()),
         helper.make_tensor("za", TensorProto.UINT8, [], [0]), helper.make_tensor("zb", TensorProto.INT8, [], [0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(model, str(path))
        got = ort_session(path, 1).run(["y"], {"a": a})[0]
    want = a.astype(np.int64) @ b.astype(np.int64)
    sat = not np.array_equal(got.astype(np.int64), want)
    log.info("u8s8 INT8 GEMM probe: %s", "saturates (use 7-bit weights)" if sat else "exact (8-bit weights)")
    return sat


def int8_report() -> dict[str, object]:
    """What goes into manifests: the flags, VNNI, the probe's verdict and the weight width it implies."""
    sat = u8s8_saturates()
    return {"cpu_flags": list(cpu_flags()), "vnni": has_vnni(), "u8s8_saturates": sat,
            "static_weight_bits": 7 if sat else 8}
