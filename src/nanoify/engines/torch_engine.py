"""PyTorch engine: FP32, BF16 or FP16, CUDA when present (``device='cuda'``); for Hugging Face classifiers
also SDPA attention (``attention='sdpa'``), ``torch.compile`` (``compile='default'|'max-autotune'|
'reduce-overhead'``) and CUDA graphs (``graphs=True``), the last two on inputs padded to sequence-length
buckets (engines/static_shapes.py).

Opens a Hugging Face classifier folder (``config.json``), a nanoify torch-module folder (``module.json``:
an import path that builds the module, its keyword arguments, input and output names; weights in
``model.safetensors``), or an ``.onnx`` file, interpreted with torch operators (models/onnx_module.py: for
models that ship only as ONNX, such as FastestDet, on the GPU path). Returns every named output. Image and
detection models (module folders, ONNX files) take ``graphs``/``compile`` too: one CUDA graph per exact input
shape. On CUDA, inputs go through pinned host buffers (one per input shape, reused) with asynchronous copies on
the engine's stream, and outputs come back the same way.
"""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.files import QUANT_FILE, chosen_precision, onnx_io, read_module_json
from ..models.load import load_classifier, load_module, max_tokens
from ..models.onnx_module import load_onnx_module
from ..models.quantized import cast_except_quantized, load_quantized
from .base import Engine, EngineUnavailable
from .static_shapes import ExactShapeRunner, StaticShapeRunner, buckets_for, compile_call

DTYPES = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class TorchEngine(Engine):
    """A classifier folder or torch-module folder run in PyTorch eager mode."""

    name = "torch"

    def _load(self) -> None:
        dtype = self.options.get("dtype") or self._default_dtype()
        device = self.options.get("device", "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineUnavailable("torch engine: CUDA was asked for but torch.cuda.is_available() is False")
        if dtype not in DTYPES:
            raise EngineUnavailable(f"torch engine: unknown dtype {dtype!r}; use fp32, bf16 or fp16")
        graphs, mode = bool(self.options.get("graphs")), self.options.get("compile")
        if graphs and not device.startswith("cuda"):
            raise EngineUnavailable("torch engine: CUDA graphs need device='cuda'")
        self.quantization: dict[str, Any] | None = None
        tok, limit = self._open(Path(self.path))
        if self.quantization:
            cast_except_quantized(self.model.to(device), _DTYPES[dtype]).eval()
        else:
            self.model.to(device=device, dtype=_DTYPES[dtype]).eval()
        self.device = device
        self._dtype = _DTYPES[dtype]
        # every engine works on its own CUDA stream, so engines serving requests from several threads (bench
        # --streams N) overlap on the GPU instead of queueing on the default stream
        self._stream = torch.cuda.Stream(device=device) if device.startswith("cuda") else None
        self._pinned: dict[tuple[str, tuple[int, ...], str], Any] = {}
        self._runner = self._shape_runner(graphs, mode, tok, limit) if graphs or mode else None

    def _open(self, path: Path) -> tuple[Any, int]:
        """Load the model (an ONNX file, a module folder or a Hugging Face classifier folder) and its input and
        output names; returns the tokenizer and the sequence limit (classifiers; else None and 0)."""
        self._hf = False
        if path.suffix.lower() == ".onnx" and path.is_file():
            self.model = load_onnx_module(path)
            ins, _outs, _ = onnx_io(path)
            self._spec = {k: (str(v[0]), list(v[1])) for k, v in ins.items() if k in self.model.input_names}
            self._outputs = list(self.model.output_names)
            return None, 0
        if (path / "module.json").is_file():
            d = read_module_json(path)
            self.model = load_module(path)
            self._spec = {k: (str(v[0]), list(v[1])) for k, v in d["inputs"].items()}
            self._outputs = list(d["outputs"])
            return None, 0
        attention = self.options.get("attention", "eager")
        if (path / QUANT_FILE).is_file():  # nanoify quantize --target cuda
            self.model, tok, _, self.quantization = load_quantized(path, attention)
        else:
            self.model, tok, _ = load_classifier(self.path, attention=attention)
        params = inspect.signature(self.model.forward).parameters
        names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in params]
        self._spec = {k: ("int64", ["batch", "sequence"]) for k in names}
        self._outputs = ["logits"]
        self._hf = True
        limit = max_tokens(self.model.config, 0)
        if limit:
            self.options.setdefault("max_dims", {}).setdefault("sequence", limit)
        return tok, limit

    def _shape_runner(self, graphs: bool, mode: str | None, tok: Any, limit: int) -> Any:
        """CUDA graphs and/or ``torch.compile``: per exact input shape for modules and ONNX files, per
        sequence bucket for classifiers (engines/static_shapes.py)."""
        # reduce-overhead captures its own CUDA graphs; with ours, max-autotune compiles without them
        inner = "max-autotune-no-cudagraphs" if graphs and mode == "max-autotune" else mode
        own_graphs = graphs and mode != "reduce-overhead"
        if not self._hf:
            module, names = self.model, list(self._spec)
            fn = module if not mode else compile_call(module, inner)

            def call_module(**t: Any) -> Any:
                return fn(*[t[k] for k in names])

            return ExactShapeRunner(call_module, self.device, graphs=own_graphs)
        model = self.model

        def call(**t: Any) -> Any:
            return model(**t).logits

        hf_fn: Any = call if not mode else compile_call(call, inner)
        pad = {"input_ids": int(getattr(tok, "pad_token_id", 0) or 0)}
        return StaticShapeRunner(hf_fn, pad, self.options.get("buckets") or buckets_for(limit or None),
                                 self.device, graphs=own_graphs)

    def _default_dtype(self) -> str:
        """FP32, or the precision ``quantize --target cuda`` chose for an image or detection model (its
        ``quantization.json`` of kind ``precision`` beside the module or the ONNX file)."""
        return chosen_precision(Path(self.path), DTYPES)

    def close(self) -> None:
        self.__dict__.pop("model", None)
        super().close()

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = self._check_feed(feed)
        on_stream = torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()
        with on_stream, torch.inference_mode():
            tensors = {}
            for k, v in feed.items():
                t = self._to_device(k, np.ascontiguousarray(v))
                tensors[k] = t.to(self._dtype) if t.is_floating_point() else t
            if self._runner is not None:
                got = self._runner(tensors)
                if self._hf:
                    return {"logits": self._to_host(got)}
                return {k: self._to_host(v) for k, v in self._named(got).items()}
            if self._hf:
                out = self.model(**tensors)
            else:
                out = self.model(*[tensors[k] for k in self._spec if k in tensors])
            if self._hf:
                items = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
            else:
                items = self._named(out)
            # copied back on the engine's stream (a copy on another stream would not wait for its kernels)
            return {k: self._to_host(v) for k, v in items.items()}

    def _named(self, out: Any) -> dict[str, Any]:
        if isinstance(out, dict):
            return dict(out)
        if isinstance(out, tuple | list):
            return dict(zip(self._outputs, out, strict=False))
        return {self._outputs[0]: out}

    def _to_device(self, name: str, arr: np.ndarray) -> Any:
        """A feed array on the engine's device: on CUDA through a pinned host buffer kept per (input, shape,
        dtype), so the copy is a DMA that does not stall the host (the buffer is reused only after this stream's
        work on it ended: ``_to_host`` synchronises the stream before ``infer`` returns)."""
        src = torch.from_numpy(arr)
        if not str(self.device).startswith("cuda"):
            return src
        key = (name, tuple(arr.shape), str(arr.dtype))
        buf = self._pinned.get(key)
        if buf is None:
            if len(self._pinned) > 64:  # many distinct shapes (dynamic H/W): keep the newest few
                self._pinned.clear()
            buf = self._pinned[key] = torch.empty(arr.shape, dtype=src.dtype, pin_memory=True)
        buf.copy_(src)
        return buf.to(self.device, non_blocking=True)

    def _to_host(self, t: Any) -> np.ndarray:
        t = t.float()
        if not str(self.device).startswith("cuda"):
            return t.cpu().numpy()
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        torch.cuda.current_stream(t.device).synchronize()  # the engine's stream (infer runs inside it)
        return host.numpy()
