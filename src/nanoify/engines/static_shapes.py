"""Fixed-shape execution for the torch engine: pad each batch to a sequence-length bucket and replay a captured
CUDA graph per (batch size, bucket).

Eager PyTorch at batch 1 is launch-bound on a GPU (MiniLM: 2.9–4.8 ms p50 on an H100, no faster than 16 CPU
cores; issue 11): a BERT layer is a few dozen kernels of microseconds each. A CUDA graph records those launches
once and replays them with one call, but only for fixed shapes and fixed buffers. So inputs are copied into
static buffers padded to the next bucket (padding tokens are masked, so the real rows' outputs are unchanged up
to float rounding), each (batch, bucket) key is captured lazily on first use into one shared memory pool, and
later calls replay it. Captures are thread-local (``capture_error_mode="thread_local"``): engines serving
other streams from other threads (``bench --streams``) keep replaying while one of them captures a new shape; but
only one capture runs at a time in the process (:data:`CAPTURE_LOCK`).
Without CUDA (or with ``graphs=False``) the same bucketing runs eagerly — that path is
what the CPU tests check, and what ``torch.compile`` wants (a handful of shapes instead of one per length).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import DataError

DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512)
# One capture (with its warm-up passes) at a time in the whole process: entering ``torch.cuda.graph`` calls
# ``empty_cache()``, which asserts that no capture is under way in any thread (torch 2.11), so a thread starting a
# capture while another is mid-capture fails — ``bench --streams`` meeting a new bucket, two engines warming at
# once (issue 23). Replays of captured graphs do not take it.
CAPTURE_LOCK = threading.Lock()


def compile_call(fn: Callable[..., Any], mode: str | None = None, backend: str = "inductor") -> Callable[..., Any]:
    """``torch.compile`` of a model call for the shape runners: ``mode`` as torch names it (None or "default": the
    default), ``dynamic=None`` — the first shape compiles static, the first recompile marks the dimensions that
    changed dynamic, so every later (batch, bucket) reuses that graph. ``dynamic=False`` recompiled once per
    (batch, bucket), and past Dynamo's recompile limit (8) fell back to eager without a word after minutes of
    compiling (issue 23: bench at batch 1 and 32 over six buckets is twelve shapes)."""
    return torch.compile(fn, mode=None if mode in (None, "default") else mode, dynamic=None, backend=backend)


def buckets_for(limit: int | None, buckets: Sequence[int] = DEFAULT_BUCKETS) -> tuple[int, ...]:
    """The buckets up to the model's token limit, the limit itself last when it is not a bucket."""
    if not limit:
        return tuple(buckets)
    kept = [b for b in buckets if b < limit]
    return (*kept, limit)


def capture(fn: Callable[..., Any], static: dict[str, Any], pool: Any, warmup: int, stream: Any) -> tuple[Any, Any]:
    """(graph, its output buffers) for ``fn(**static)``: a few eager passes first (cuBLAS and the allocator settle),
    then one thread-local capture into ``pool``, both on ``stream`` — the runner's own side stream: without one,
    ``torch.cuda.graph`` captures every graph of the process on one shared stream — and both under
    :data:`CAPTURE_LOCK`, so two engines meeting new shapes in two threads capture one after the other."""

    with CAPTURE_LOCK:
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(warmup):
                fn(**static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=pool, stream=stream,
                                                      capture_error_mode="thread_local"):
            out = fn(**static)
    return graph, out


class StaticShapeRunner:
    """Calls ``fn(**tensors)`` (→ one output tensor, batch first) on buffers of fixed shape.

    Args:
        fn: the model call, e.g. ``lambda **t: model(**t).logits``.
        pad_values: the padding value of every input (``input_ids``: the pad token, masks and type ids: 0).
        buckets: sequence lengths to pad to, ascending; the last is the longest accepted.
        device: where the buffers live.
        graphs: capture and replay CUDA graphs (needs a CUDA device); else run eagerly on the padded buffers.
        warmup: eager iterations on a side stream before a capture (cuBLAS and the allocator settle).
    """

    def __init__(self, fn: Callable[..., Any], pad_values: dict[str, int], buckets: Sequence[int], device: str,
                 graphs: bool, warmup: int = 2) -> None:
        if graphs and not str(device).startswith("cuda"):
            raise ValueError("CUDA graphs need a CUDA device")
        self.fn, self.pad, self.device, self.graphs, self.warmup = fn, dict(pad_values), device, graphs, warmup
        self.buckets = tuple(sorted(set(int(b) for b in buckets)))
        self.entries: dict[tuple[int, int], dict[str, Any]] = {}
        self.pool = torch.cuda.graph_pool_handle() if graphs else None
        self.capture_stream = torch.cuda.Stream(device=device) if graphs else None

    def bucket(self, length: int) -> int:
        for b in self.buckets:
            if length <= b:
                return b
        raise DataError(f"inputs of {length} tokens are longer than the model allows ({self.buckets[-1]}); "
                        f"truncate the inputs to {self.buckets[-1]} tokens")

    def _entry(self, batch: int, bucket: int, dtypes: dict[str, Any]) -> dict[str, Any]:
        key = (batch, bucket)
        if key in self.entries:
            return self.entries[key]
        static = {k: torch.full((batch, bucket), self.pad.get(k, 0), dtype=dt, device=self.device)
                  for k, dt in dtypes.items()}
        entry: dict[str, Any] = {"inputs": static}
        if self.graphs:
            entry["graph"], entry["output"] = capture(self.fn, static, self.pool, self.warmup, self.capture_stream)
        self.entries[key] = entry
        return entry

    def __call__(self, tensors: dict[str, Any]) -> Any:
        """The output for the real rows and nothing of the padding: a fresh tensor (the static output buffer is
        overwritten by the next replay)."""

        first = next(iter(tensors.values()))
        batch, length = int(first.shape[0]), int(first.shape[1])
        entry = self._entry(batch, self.bucket(length), {k: v.dtype for k, v in tensors.items()})
        static = entry["inputs"]
        with torch.inference_mode():
            for k, v in tensors.items():
                buf = static[k]
                buf[:, :length].copy_(v, non_blocking=True)
                buf[:, length:].fill_(self.pad.get(k, 0))
            if self.graphs:
                entry["graph"].replay()
                return entry["output"].clone()
            return self.fn(**static)

    @property
    def captured(self) -> list[tuple[int, int]]:
        """The (batch, bucket) keys seen so far (captured graphs when ``graphs``)."""
        return sorted(self.entries)


class ExactShapeRunner:
    """Calls ``fn(**tensors)`` with one CUDA graph per exact set of input shapes (images: batch × C × H × W, a
    handful of shapes per model) — no padding, so outputs are the eager ones; with ``graphs=False`` it calls
    ``fn`` directly (``torch.compile`` alone). The output may be a tensor, a tuple or a dict of tensors; a
    replay returns fresh copies."""

    def __init__(self, fn: Callable[..., Any], device: str, graphs: bool, warmup: int = 2,
                 max_graphs: int = 32) -> None:
        if graphs and not str(device).startswith("cuda"):
            raise ValueError("CUDA graphs need a CUDA device")
        self.fn, self.device, self.graphs, self.warmup, self.max_graphs = fn, device, graphs, warmup, max_graphs
        self.entries: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.pool = torch.cuda.graph_pool_handle() if graphs else None
        self.capture_stream = torch.cuda.Stream(device=device) if graphs else None

    def __call__(self, tensors: dict[str, Any]) -> Any:
        if not self.graphs:
            with torch.inference_mode():
                return self.fn(**tensors)
        key = tuple((k, tuple(v.shape), v.dtype) for k, v in tensors.items())
        entry = self.entries.get(key)
        if entry is None:
            if len(self.entries) >= self.max_graphs:  # a stream of new shapes: run eagerly, capture no more
                with torch.inference_mode():
                    return self.fn(**tensors)
            static = {k: v.clone() for k, v in tensors.items()}
            graph, out = capture(self.fn, static, self.pool, self.warmup, self.capture_stream)
            entry = self.entries[key] = {"inputs": static, "graph": graph, "output": out}
        with torch.inference_mode():
            for k, v in tensors.items():
                entry["inputs"][k].copy_(v, non_blocking=True)
            entry["graph"].replay()
            out = entry["output"]
            if isinstance(out, dict):
                return {k: v.clone() for k, v in out.items()}
            if isinstance(out, tuple | list):
                return type(out)(v.clone() for v in out)
            return out.clone()

    @property
    def captured(self) -> list[tuple[Any, ...]]:
        return list(self.entries)
