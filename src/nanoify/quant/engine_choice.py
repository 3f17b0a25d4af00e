"""Which CPU engine runs the chosen graph: ``--target cpu`` searches in ONNX Runtime, then — when OpenVINO is
installed and ``cpu_engine`` is ``auto`` — runs the chosen graph in OpenVINO too (it reads ONNX Runtime's Q/DQ
and integer graphs directly): the same evaluation rows, judged against the same FP32 predictions and budget, and
both engines timed in interleaved rounds. OpenVINO deploys the model when it meets the budget and is faster by
more than the noise band (:data:`~nanoify.quant.choose.SPEED_TIE`) for the ``optimize`` goal; the manifest then
names it as the folder's engine (bench and compress run it so) and the IR is written beside the ONNX graph.
``cpu_engine: onnxruntime`` skips the comparison; ``openvino`` deploys on OpenVINO whenever it meets the budget.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

from ..bench.latency import measure_speed
from ..config import QuantizeConfig
from ..engines import EngineUnavailable, open_engine
from ..errors import ModelError
from ..tasks import check_budget, evaluate_predictions
from .choose import SPEED_TIE

OV_IR = "model.xml"


def _gain(ov: dict[str, Any], ort: dict[str, Any], optimize: str) -> float:
    """OpenVINO's speed over ONNX Runtime's for the goal (size is the same file either way: speed decides)."""
    lat = ort["latency_ms_p50"] / ov["latency_ms_p50"]
    thr = ov["throughput"] / ort["throughput"]
    return lat if optimize == "latency" else thr if optimize == "throughput" else math.sqrt(lat * thr)


def _measure(path: Path, src: Any, ev: Any, ref: Any, cfg: QuantizeConfig) -> dict[str, Any]:
    """The graph in OpenVINO: metrics against the FP32 reference, then both engines timed together."""
    t = cfg.timing
    batch = src.task.batch_for(t.batch)
    with contextlib.ExitStack() as stack:
        ov = stack.enter_context(open_engine("openvino", str(path), threads=cfg.threads, dtype="fp32"))
        preds = src.task.predict(ov.infer, ev)
        metrics = evaluate_predictions(src.task, preds, ev, ref.preds)
        chk = check_budget(ref.metrics, metrics, cfg.budget, ref.metric, cfg.agreement_budget,
                           src.task.agreement_key)
        ort = stack.enter_context(open_engine("onnxruntime", str(path), threads=cfg.threads))
        speeds = measure_speed([ort.infer, ov.infer], src.task.feeds(ev, 1, t.latency_rows),
                               src.task.feeds(ev, batch, t.throughput_rows), t.rounds, batch)
    keep = ("latency_ms_p50", "latency_ms_p99", "throughput", "throughput_batch")
    return {"onnxruntime": {k: speeds[0][k] for k in keep},
            "openvino": {**{k: speeds[1][k] for k in keep}, **metrics, "drop_pts": chk.drop_pts,
                         "meets_budget": chk.met}}


def choose_engine(folder: Path, model_file: str, src: Any, ev: Any, ref: Any, cfg: QuantizeConfig) -> dict[str, Any]:
    """What the manifest adds: ``engine_choice`` (both engines' numbers and why), and when OpenVINO wins
    ``engine: openvino`` with its IR written beside the graph (``openvino``: what it compiled)."""
    if cfg.cpu_engine == "onnxruntime":
        return {"engine_choice": {"chosen": "onnxruntime", "why": "cpu_engine onnxruntime: OpenVINO not tried"}}
    try:
        from ..engines.openvino_engine import save_ir  # optional backend
    except ImportError:
        return {"engine_choice": {"chosen": "onnxruntime", "why": "OpenVINO is not installed (pip install openvino "
                                                                  "to measure it too)"}}
    path = folder / model_file
    try:
        got = _measure(path, src, ev, ref, cfg)
    except (ModelError, EngineUnavailable) as e:
        return {"engine_choice": {"chosen": "onnxruntime", "why": f"OpenVINO cannot run this graph: {e}"}}
    gain = _gain(got["openvino"], got["onnxruntime"], cfg.optimize)
    met = bool(got["openvino"]["meets_budget"])
    forced = cfg.cpu_engine == "openvino"
    use_ov = met and (forced or gain >= 1 + SPEED_TIE)
    goal = {"latency": "batch-1 latency", "throughput": "throughput"}.get(cfg.optimize, "latency and throughput")
    if not met:
        why = f"OpenVINO's run of this graph misses the budget ({got['openvino']['drop_pts']:.2f} points)"
    else:
        why = (f"OpenVINO runs this graph at {gain:.2f}× ONNX Runtime's {goal} here"
               + (" (cpu_engine openvino)" if forced else f"; it deploys when ≥ {1 + SPEED_TIE:.2f}×"))
    out: dict[str, Any] = {"engine_choice": {"chosen": "openvino" if use_ov else "onnxruntime", "why": why,
                                             "gain": gain, **got}}
    if use_ov:
        info = save_ir(path, folder / OV_IR)
        out.update(engine="openvino", openvino={"ir": OV_IR, "onnx_model": model_file, "precision": "fp32", **info})
    return out
