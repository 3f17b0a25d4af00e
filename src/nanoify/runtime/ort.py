"""ONNX Runtime sessions, opened one way everywhere: CPU provider unless told, quiet logs, graph optimisation
level by name, and a corrupt or unsupported graph as one line (``ModelError``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ModelError


def ort_session(path: str | Path, threads: int | None = None, providers: list[str] | None = None,
                level: str = "all", profile_prefix: str | None = None, save_to: str | Path | None = None) -> Any:
    """An ONNX Runtime session with full graph optimisation on the CPU provider (by default); ``level``
    "extended" stops before layout transforms (NCHWc), "basic" at hardware-neutral rewrites; ``profile_prefix``
    turns ORT's per-node profiler on; ``save_to`` writes the optimised graph."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}[level]
    if save_to:
        so.optimized_model_filepath = str(save_to)
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    try:
        return ort.InferenceSession(str(path), so, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - corrupt or unsupported graphs become one line
        first = str(e).strip().splitlines()[0][:200]
        raise ModelError(f"ONNX Runtime cannot load {path}: {first}") from None
