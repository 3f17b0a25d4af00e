"""TensorRT engine: build from the explicit Q/DQ ONNX (FP16+INT8, one optimisation profile whose shapes come
from each input's own spec, timing cache), save the engine file, run it with CUDA buffers from torch.

UNVERIFIED: the project's machines have neither TensorRT nor a GPU, so this code has never run. It follows
the TensorRT 10 Python API (named tensors, ``execute_async_v3``); where TensorRT or CUDA is missing the
engine says so in one line when chosen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.files import onnx_io
from .base import Engine, EngineUnavailable, profile_shapes

# ranges of the named dynamic axes when the caller gives none (min, opt, max)
DEFAULT_AXES = {"batch": (1, 8, 32), "sequence": (1, 128, 512), "height": (32, 640, 1280), "width": (32, 640, 1280)}


def build_engine(onnx_path: Path, plan_path: Path, axes: dict[str, tuple[int, int, int]] | None = None,
                 fp16: bool = True, int8: bool = True, timing_cache: Path | None = None) -> bytes:
    """Parse ``onnx_path``, build a serialized engine with one optimisation profile (per input: its fixed axes,
    and (min, opt, max) of its named axes from ``axes``), save it."""
    import tensorrt as trt

    spec = {k: (d, s) for k, (d, s) in onnx_io(Path(onnx_path))[0].items()}
    shapes = profile_shapes(spec, {**DEFAULT_AXES, **(axes or {})})
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineUnavailable(f"TensorRT cannot parse {onnx_path}: {errs[:300]}")
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)  # scales come from the Q/DQ nodes: no calibrator
    prof = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        prof.set_shape(name, *shapes[name])
    config.add_optimization_profile(prof)
    if timing_cache is not None:
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineUnavailable(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    data = bytes(plan)
    Path(plan_path).write_bytes(data)
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return data


class TensorRTEngine(Engine):
    """A TensorRT engine file (``.plan``), or an ``.onnx`` built into one beside it on first use."""

    name = "tensorrt"

    def _load(self) -> None:
        try:
            import tensorrt as trt
        except ImportError:
            raise EngineUnavailable("TensorRT is not installed here; install it (pip install tensorrt) on a machine "
                                    "with an NVIDIA GPU, or use --engine onnxruntime") from None

        if not torch.cuda.is_available():
            raise EngineUnavailable("the tensorrt engine needs a CUDA GPU and torch.cuda.is_available() is False")
        p = Path(self.path)
        if p.suffix == ".onnx":
            plan = p.with_suffix(".plan")
            data = plan.read_bytes() if plan.is_file() else build_engine(
                p, plan, self.options.get("axes"), timing_cache=p.with_name("timing.cache"))
        else:
            data = p.read_bytes()
        self._trt = trt
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(data)
        if self.engine is None:
            raise EngineUnavailable(f"TensorRT could not load {p} (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self._inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self._outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]

    def close(self) -> None:
        self.__dict__.pop("context", None)
        self.__dict__.pop("engine", None)
        super().close()

    def input_spec(self) -> dict[str, tuple[str, list[Any]]]:
        self._require_loaded()
        return {n: (str(self.engine.get_tensor_dtype(n)).replace("DataType.", "").lower(),
                    [d if d > 0 else "dynamic" for d in self.engine.get_tensor_shape(n)]) for n in self._inputs}

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = self._check_feed(feed)
        trt = self._trt
        keep = []
        dtypes = {trt.int32: torch.int32, trt.int64: torch.int64, trt.float32: torch.float32,
                  trt.float16: torch.float16}
        for n in self._inputs:
            want = dtypes.get(self.engine.get_tensor_dtype(n), torch.float32)
            t = torch.from_numpy(np.ascontiguousarray(feed[n])).to("cuda", want).contiguous()
            keep.append(t)
            self.context.set_input_shape(n, tuple(t.shape))
            self.context.set_tensor_address(n, t.data_ptr())
        outs = {}
        for n in self._outputs:
            o = torch.empty(tuple(self.context.get_tensor_shape(n)), dtype=torch.float32, device="cuda")
            outs[n] = o
            self.context.set_tensor_address(n, o.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EngineUnavailable("TensorRT execution failed")
        stream.synchronize()
        return {n: o.cpu().numpy() for n, o in outs.items()}
