"""One Engine contract over torch, ONNX Runtime, OpenVINO and TensorRT (the torch, OpenVINO and TensorRT backends
imported when chosen).

    with open_engine("onnxruntime", "out/model.fused.onnx") as eng:
        logits = eng.infer(feed)["logits"]

``ENGINES`` maps a name to a factory; a backend that is not installed is listed and explains itself
only when chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import Engine, EngineUnavailable
from .ort_engine import OrtEngine  # light: onnxruntime itself is imported when a session opens


def _torch(path: str, **kw: Any) -> Engine:
    from .torch_engine import TorchEngine

    return TorchEngine(path, **kw)


def _ort(path: str, **kw: Any) -> Engine:
    return OrtEngine(path, **kw)


def _ov(path: str, **kw: Any) -> Engine:
    try:
        from .openvino_engine import OpenVinoEngine  # an optional backend: imported when chosen
    except ImportError:
        raise EngineUnavailable("OpenVINO is not installed here; pip install openvino (or nanoify[openvino]), "
                                "or use --engine onnxruntime") from None
    return OpenVinoEngine(path, **kw)


def _trt(path: str, **kw: Any) -> Engine:
    from .trt_engine import TensorRTEngine

    return TensorRTEngine(path, **kw)


ENGINES: dict[str, Callable[..., Engine]] = {"torch": _torch, "onnxruntime": _ort, "openvino": _ov, "tensorrt": _trt}


# torch engine options beyond device and dtype (see engines/torch_engine.py)
TORCH_FLAGS = {"graphs": ("graphs", True), "sdpa": ("attention", "sdpa"), "compile": ("compile", "default"),
               "compile-max": ("compile", "max-autotune"), "compile-ro": ("compile", "reduce-overhead")}


def parse_engine_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``NAME[:DEVICE][:DTYPE][:FLAG…]`` → (name, options): ``torch:cuda:bf16``, ``torch:cuda:fp16:graphs``
    (CUDA graphs per batch and sequence bucket), ``torch:cuda:1:fp16`` (the second GPU),
    ``torch:cuda:fp16:sdpa:compile-max``, ``onnxruntime:cuda`` (CUDA execution provider), ``openvino:bf16``
    (OpenVINO's CPU plugin in BF16), ``tensorrt``."""
    name, *rest = spec.split(":")
    opts: dict[str, Any] = {}
    for part in rest:
        if part in ("fp32", "bf16", "fp16"):
            opts["dtype"] = part
        elif part == "cpu" or part.startswith("cuda"):
            opts["device"] = part
        elif part.isdigit() and opts.get("device") == "cuda":  # torch:cuda:1:fp16 — the GPU's index
            opts["device"] = f"cuda:{part}"
        elif name == "torch" and part in TORCH_FLAGS:
            key, value = TORCH_FLAGS[part]
            opts[key] = value
        else:
            raise EngineUnavailable(f"unknown engine option {part!r} in {spec!r}; use NAME[:cpu|cuda][:fp32|bf16|fp16]"
                                    f" (torch also: {', '.join(TORCH_FLAGS)})")
    if opts.get("graphs") and not opts.get("device", "cpu").startswith("cuda"):
        raise EngineUnavailable(f"{spec!r}: CUDA graphs need a CUDA device; use torch:cuda:…:graphs")
    if name == "onnxruntime" and opts.get("device", "cpu").startswith("cuda"):
        opts["providers"] = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return name, opts


def open_engine(name: str, path: str, **kw: Any) -> Engine:
    """An engine by name (see ``ENGINES``)."""
    if name not in ENGINES:
        raise EngineUnavailable(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    return ENGINES[name](path, **kw)


__all__ = ["ENGINES", "Engine", "EngineUnavailable", "open_engine", "parse_engine_spec"]
