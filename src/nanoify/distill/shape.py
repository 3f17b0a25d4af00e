"""``--student-latency MS``: the carved student with the most compute whose batch-1 latency, measured here, fits.

Latency does not depend on weight values, so each candidate shape is built with fresh weights, exported the way
nanoify deploys a text model (``nanoify export``: ONNX with ONNX Runtime's transformer fusions) and timed by ONNX
Runtime at batch 1 on the first training sentences (median of :data:`LATENCY_ROWS`). Shapes: every layer count up
to the teacher's, with whole teacher heads (hidden = heads × the teacher's head size; FFN at the teacher's ratio).
Latency grows with layers and with heads, so for each layer count a bisection finds the most heads that fit (the
count found for more layers is a floor for fewer); of the shapes that fit, the one with the most encoder FLOPs per
token is chosen. The FP32 latency is what is measured: INT8 quantization then makes the deployed model faster
still, so the target is met with margin (the report of ``quantize``/``bench`` gives the final figure).
"""

from __future__ import annotations

import copy
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoModelForSequenceClassification

from ..bench.latency import time_batches
from ..errors import ConfigError
from ..export.onnx import FUSED_FILE, export_text
from ..models.load import encoder_flops_per_token, save_classifier
from ..models.prune import environment_kept
from ..models.student import StudentSpec
from ..runtime.ort import ort_session

log = logging.getLogger(__name__)

LATENCY_ROWS = 30


def shape_latency(teacher: Any, tok: Any, label_map: Any, layers: int, heads: int, texts: list[str],
                  max_length: int, threads: int | None = None) -> float:
    """Median batch-1 milliseconds of a model of the teacher's family with ``layers`` layers of ``heads`` whole
    teacher heads, exported and run as nanoify deploys it."""
    tc = teacher.config
    d = tc.hidden_size // tc.num_attention_heads
    cfg = copy.deepcopy(tc)
    cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size = layers, heads, heads * d
    cfg.intermediate_size = max(1, round(heads * d * tc.intermediate_size / tc.hidden_size))
    with environment_kept():
        model = AutoModelForSequenceClassification.from_config(cfg, attn_implementation="eager")
    with tempfile.TemporaryDirectory() as tmp:
        save_classifier(model, tok, label_map, Path(tmp) / "hf")
        export_text(Path(tmp) / "hf", Path(tmp) / "onnx")
        sess = ort_session(Path(tmp) / "onnx" / FUSED_FILE, threads)
        names = {i.name for i in sess.get_inputs()}
        feeds = [{k: np.asarray(v, dtype=np.int64)[None] for k, v in tok(t, truncation=True,
                                                                          max_length=max_length).items()
                  if k in names} for t in texts[:LATENCY_ROWS]]
        times = time_batches(lambda f: sess.run(None, f), feeds)
    return float(np.median(times) * 1e3)


def fit_latency(teacher: Any, tok: Any, label_map: Any, texts: list[str], target_ms: float, max_length: int,
                threads: int | None = None, measure: Any = None) -> tuple[StudentSpec, dict[str, Any]]:
    """The shape (see module docstring) and what was measured: every (layers, heads) tried and its ms."""
    if target_ms <= 0:
        raise ConfigError(f"--student-latency must be a positive number of milliseconds, got {target_ms:g}")
    if not texts:
        raise ConfigError("--student-latency needs training sentences to time the shapes on")
    tc = teacher.config
    n, a = tc.num_hidden_layers, tc.num_attention_heads
    d = tc.hidden_size // a
    measure = measure or (lambda layers, heads: shape_latency(teacher, tok, label_map, layers, heads, texts,
                                                              max_length, threads))
    seen: dict[tuple[int, int], float] = {}

    def fits(layers: int, heads: int) -> bool:
        if (layers, heads) not in seen:
            seen[(layers, heads)] = measure(layers, heads)
            log.info("shape %d layers × %d heads: %.2f ms at batch 1", layers, heads, seen[(layers, heads)])
        return seen[(layers, heads)] <= target_ms

    best: dict[int, int] = {}
    floor = 0  # heads that fit at more layers fit at fewer
    for layers in range(n, 0, -1):
        lo, hi = floor, a  # lo fits (0: nothing known), find the largest fitting in (lo, hi]
        if lo < a and fits(layers, a):
            lo = a
        else:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if fits(layers, mid) else (lo, mid)
            if lo == 0 and fits(layers, 1):
                lo = 1
        if lo:
            best[layers] = lo
            floor = lo
    if not best:
        small = seen.get((1, 1))
        raise ConfigError(f"--student-latency {target_ms:g} ms: even the smallest carved student (1 layer, 1 head of "
                          f"{d}) takes {small:.2f} ms at batch 1 here; ask for more time")

    def flops(layers: int, heads: int) -> float:
        cfg = copy.copy(tc)
        cfg.num_hidden_layers, cfg.hidden_size = layers, heads * d
        cfg.intermediate_size = max(1, round(heads * d * tc.intermediate_size / tc.hidden_size))
        return encoder_flops_per_token(cfg)

    layers, heads = max(best.items(), key=lambda lh: flops(*lh))
    hidden = heads * d
    spec = StudentSpec(layers, hidden, heads, max(1, round(hidden * tc.intermediate_size / tc.hidden_size)),
                       pruned=True)
    report = {"target_ms": target_ms, "chosen": {"layers": layers, "heads": heads, "ms": seen[(layers, heads)]},
              "measured": [{"layers": k[0], "heads": k[1], "ms": round(v, 3)} for k, v in sorted(seen.items())],
              "engine": "onnxruntime FP32, fused graph, batch 1"}
    return spec, report
