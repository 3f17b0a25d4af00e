"""OpenVINO engine: an ONNX file or an OpenVINO IR (``.xml`` + ``.bin``) compiled for the CPU.

OpenVINO reads a Q/DQ ONNX graph directly and runs its quantized operations in INT8 (its low-precision
transformations); what each layer actually ran in is in the compiled model's runtime info, which
:meth:`OpenVinoEngine.layer_precisions` reads, so a report can say "INT8" from evidence.

Options: ``threads`` (``INFERENCE_NUM_THREADS``), ``dtype`` — ``fp32`` (default) or ``bf16``
(``INFERENCE_PRECISION_HINT``; OpenVINO's own default on CPUs with AVX512-BF16 or AMX is BF16, which changes
results, so nanoify always asks for the precision it measures), ``hint`` (``LATENCY`` default, or
``THROUGHPUT``), ``max_dims``.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from ..errors import ModelError, first_line
from ..models.files import chosen_precision, ir_spec, onnx_io
from .base import Engine, EngineUnavailable

PRECISIONS = {"fp32": "f32", "bf16": "bf16"}


def ov_reason(e: BaseException) -> str:
    """The line of an OpenVINO error that says what is wrong (its first lines are source locations and
    headers: "Exception from src/…", "Check 'false' failed at …", "Summary:")."""
    lines = [ln.strip().lstrip("- ").strip() for ln in str(e).splitlines() if ln.strip()]
    boilerplate = ("Exception from", "Check '", "Summary")
    useful = [ln for ln in lines if not ln.startswith(boilerplate) and not ln.endswith(":")]
    named = [ln for ln in useful if "conversion rule" in ln or "nsupported" in ln]
    return (named or useful or [first_line(e)])[0][:300]


def cpu_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin says this CPU computes in (FP32, BF16, INT8, …)."""
    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


class OpenVinoEngine(Engine):
    """A model compiled by OpenVINO for the CPU (see module docstring)."""

    name = "openvino"

    def _load(self) -> None:
        dtype = self.options.get("dtype") or self._default_dtype()
        if dtype not in PRECISIONS:
            raise EngineUnavailable(f"openvino engine: dtype {dtype!r} is not one it runs; use fp32 or bf16")
        core = ov.Core()
        if dtype == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise EngineUnavailable("this CPU has no BF16 kernels (AVX512-BF16 or AMX); use openvino:fp32")
        self.dtype = dtype
        path = Path(self.path)
        try:
            model = core.read_model(str(path))
        except Exception as e:  # noqa: BLE001 - OpenVINO's reader raises RuntimeError subclasses
            raise ModelError(f"OpenVINO cannot read {path}: {ov_reason(e)}") from None
        self._model = model
        config = self._config(self.options.get("hint", "LATENCY"))
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as e:  # noqa: BLE001 - e.g. an operation the CPU plugin has no kernel for
            raise ModelError(f"OpenVINO cannot compile {path} for the CPU: {ov_reason(e)}; run it with --engine "
                             "onnxruntime") from None
        self.request = self.compiled.create_infer_request()
        self._spec = self._input_spec(model, path)
        self._outputs = [(o.get_any_name(), o) for o in self.compiled.outputs]

    def _config(self, hint: str, streams: int | None = None) -> dict[str, Any]:
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": PRECISIONS[self.dtype]}
        if self.options.get("threads"):
            config["INFERENCE_NUM_THREADS"] = int(self.options["threads"])
        if streams:
            config["NUM_STREAMS"] = int(streams)
        return config

    def serve(self, requests: list[dict[str, np.ndarray]], streams: int) -> dict[str, Any]:
        """Serve ``requests`` concurrently the way OpenVINO does it: the model compiled with the THROUGHPUT hint
        and ``streams`` streams, fed through an ``AsyncInferQueue`` of as many jobs (bench ``--streams N``);
        aggregate requests/s and per-request p50/p99 latency in ms, after one warm-up round."""
        self._require_loaded()
        checked = [self._check_feed(f) for f in requests]
        compiled = ov.Core().compile_model(self._model, "CPU", self._config("THROUGHPUT", streams))
        queue = ov.AsyncInferQueue(compiled, streams)
        lat: list[float] = []
        queue.set_callback(lambda _request, t0: lat.append((time.perf_counter() - t0) * 1e3))
        for f in checked[:streams]:  # warm every job
            queue.start_async(f, time.perf_counter())
        queue.wait_all()
        lat.clear()
        t0 = time.perf_counter()
        for f in checked:
            queue.start_async(f, time.perf_counter())
        queue.wait_all()
        wall = time.perf_counter() - t0
        return {"requests": len(checked), "throughput_rows_s": len(checked) / wall,
                "latency_ms_p50": float(np.percentile(lat, 50)), "latency_ms_p99": float(np.percentile(lat, 99)),
                "served_by": f"OpenVINO AsyncInferQueue, THROUGHPUT hint, {streams} streams"}

    def _default_dtype(self) -> str:
        """FP32, or the precision ``quantize --target openvino`` chose (``quantization.json`` of kind
        ``precision`` beside the model)."""
        return chosen_precision(Path(self.path), tuple(PRECISIONS))

    @staticmethod
    def _input_spec(model: Any, path: Path) -> dict[str, tuple[str, list[Any]]]:
        """Input name → (dtype, dims): from the ONNX graph where there is one (its axis names), else from
        OpenVINO's partial shapes (a dynamic leading axis is ``batch``)."""
        if path.suffix.lower() == ".onnx":
            ins = onnx_io(path)[0]
            return {k: (str(v[0]), list(v[1])) for k, v in ins.items()}
        return ir_spec(model.inputs)

    def close(self) -> None:
        self.__dict__.pop("request", None)
        self.__dict__.pop("compiled", None)
        super().close()

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = self._check_feed(feed)
        try:
            res = self.request.infer({k: np.ascontiguousarray(v) for k, v in feed.items()})
        except Exception as e:  # noqa: BLE001 - a runtime failure becomes one line
            first = first_line(e)
            raise ModelError(f"OpenVINO failed running {self.path}: {first}") from None
        # the request's output tensors are reused by the next call: copy them out
        return {name: np.array(res[port], copy=True) for name, port in self._outputs}

    def layer_precisions(self) -> dict[str, dict[str, int]]:
        """Per layer type of the compiled graph, how many layers ran in each precision (runtime info):
        e.g. ``{"Convolution": {"u8": 19, "f32": 1}}`` (u8/i8: INT8 kernels)."""
        self._require_loaded()
        out: dict[str, Counter[str]] = {}
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            kind = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
            prec = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
            if kind in ("Input", "Output", "Const"):  # not compute
                continue
            out.setdefault(kind, Counter())[prec] += 1
        return {k: dict(v) for k, v in sorted(out.items())}

    def int8_counts(self) -> tuple[int, int]:
        """(compute layers that ran in INT8, compute layers): :func:`int8_compute_layers` of this compiled model."""
        return int8_compute_layers(self.layer_precisions())

    def node_precisions(self) -> dict[str, str]:
        """Source node name → the precision of the compute layer (convolution, matrix multiply) it was compiled
        into, from each compiled layer's ``originalLayersNames``: how a report knows that a node quantized in the
        graph really ran in INT8. A node with a bias is two source ops (``X/WithoutBiases`` and the ``X`` add);
        both names map to the layer."""
        self._require_loaded()
        out: dict[str, str] = {}
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if "layerType" not in info or info["layerType"].astype(str) not in COMPUTE_LAYERS:
                continue
            prec = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
            names = info["originalLayersNames"].astype(str).split(",") if "originalLayersNames" in info else []
            for name in names:
                out[name.removesuffix("/WithoutBiases")] = prec
        return out


COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul", "Gemm")
INT8 = ("u8", "i8")


def int8_compute_layers(layers: dict[str, dict[str, int]]) -> tuple[int, int]:
    """(INT8 compute layers, compute layers) in :meth:`OpenVinoEngine.layer_precisions`'s answer. Only
    convolutions and matrix multiplies count: an FP32 encoder's mask arithmetic (Convert, Gather on u8/i8 data)
    also reports u8/i8 runtime precision, and counting it made an FP32 MiniLM read "8 INT8 layers"."""
    compute = {k: v for k, v in layers.items() if k in COMPUTE_LAYERS}
    return (sum(n for precs in compute.values() for p, n in precs.items() if p in INT8),
            sum(n for precs in compute.values() for n in precs.values()))


def compiled_info(xml_path: Path, precision: str = "fp32", quantized: tuple[str, ...] = ()) -> dict[str, Any]:
    """What the manifest says about an IR compiled here: OpenVINO's version, the precision each layer type ran in,
    and which of the ``quantized`` source nodes (compute nodes the graph quantizes) OpenVINO kept in float."""
    with OpenVinoEngine(str(xml_path), dtype=precision) as eng:
        layers = eng.layer_precisions()
        ran = eng.node_precisions() if quantized else {}
    int8 = int8_compute_layers(layers)[0]
    return {"version": ov.__version__, "int8_layers": int8, "layer_precisions": layers,
            "kept_float": [n for n in quantized if n in ran and ran[n] not in INT8]}


def write_ir(onnx_path: Path, xml_path: Path, fp16_weights: bool = False) -> Path:
    """``onnx_path`` converted to OpenVINO IR at ``xml_path`` (weights in the ``.bin`` beside it). Float weights are
    kept FP32 unless ``fp16_weights`` (OpenVINO's own default: half the file, each weight rounded to FP16 — results
    change, so a model written so is measured as written)."""
    core = ov.Core()
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(core.read_model(str(onnx_path)), str(xml_path), compress_to_fp16=fp16_weights)
    return xml_path


def save_ir(onnx_path: Path, xml_path: Path, precision: str = "fp32",
            quantized: tuple[str, ...] = ()) -> dict[str, Any]:
    """``onnx_path`` converted to OpenVINO IR at ``xml_path`` (weights in the ``.bin`` beside it, kept FP32 where
    they are float: no FP16 compression, so the IR computes what was measured); returns :func:`compiled_info`."""
    write_ir(onnx_path, xml_path)
    return compiled_info(xml_path, precision, quantized)
