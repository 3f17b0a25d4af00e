"""``nanoify quantize``: calibrate, try the INT8 formats, keep the fastest within the accuracy budget.

    quantize(model, calib="data/", eval="data/", budget=0.5, target="cpu", out="out/q")

``target="cpu"`` measures every candidate on this machine — dynamic INT8 (per-channel weights, with and
without reduce_range, and ONNX Runtime's stock per-tensor settings) and static Q/DQ INT8 with each
calibration method — and keeps the fastest whose accuracy drop against the FP32 ONNX model is within
``budget`` points. If none is, the most accurate candidate gets a mixed-precision plan: per-node
sensitivity on the eval data, then the most sensitive nodes stay FP32 until the budget holds.

``target="tensorrt"`` writes the explicit Q/DQ graph TensorRT wants (symmetric INT8, per-channel weights),
its calibration cache and a ``trtexec`` command. Accuracy is measured by running that Q/DQ graph in ONNX
Runtime on the CPU (TensorRT's kernels round differently; treat it as an estimate); speed cannot be
measured without TensorRT and a GPU, and the report says so.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import MANIFEST, atomic_dir, manifest, write_json
from ..config import DataConfig
from ..errors import ConfigError, DataError, ModelError

log = logging.getLogger(__name__)

TARGETS = ("cpu", "tensorrt")
DEFAULT_METHODS = ("entropy", "percentile")
OUT_MODEL = "model.int8.onnx"  # --target cpu
QDQ_MODEL = "model.qdq.onnx"  # --target tensorrt
# Throughputs closer than this are a tie: repeated interleaved runs here moved single measurements by ±15%
# and medians of 3 rounds by a few percent (benchmarks/RESULTS.md). Ties go to the smaller file, which is a
# reproducible gain, then to accuracy.
SPEED_TIE = 0.05


@dataclass
class EvalSet:
    """Tokenised eval rows with gold labels, plus FP32 reference logits once computed."""

    ids: list[list[int]]
    gold: np.ndarray
    pad_id: int
    n_classes: int
    reference: np.ndarray | None = None


@dataclass
class Candidate:
    """One quantized model tried: how it was made, and what it measured."""

    name: str
    format: str
    options: dict[str, Any]
    make: Callable[[Sequence[str], Path], None] = field(repr=False)
    units: list[str] = field(default_factory=list, repr=False)
    excluded: list[str] = field(default_factory=list)
    path: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "format": self.format, "options": self.options,
                "fp32_nodes": self.excluded, **self.metrics}


def _session_runner(path: Path, threads: int | None) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """The first output of an ONNX model, run through the onnxruntime engine."""
    from ..engines import open_engine

    eng = open_engine("onnxruntime", str(path), threads=threads).__enter__()

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        return next(iter(eng.infer(feed).values()))

    return run


def measure(path: Path, ev: EvalSet, threads: int | None) -> dict[str, Any]:
    """Accuracy and agreement with the FP32 reference on the eval rows, and the file size."""
    from ..bench.accuracy import classification_metrics, cosine, predict_with, sqnr_db

    logits = predict_with(_session_runner(path, threads), ev.ids, ev.pad_id, 32)
    pred = logits.argmax(-1)
    m: dict[str, Any] = classification_metrics(pred, ev.gold, ev.n_classes)
    if ev.reference is not None:
        m["top1_agreement"] = float((pred == ev.reference.argmax(-1)).mean())
        m["logit_cosine"] = cosine(ev.reference, logits)
        m["sqnr_db"] = sqnr_db(ev.reference, logits)
    m["file_mb"] = path.stat().st_size / 1e6
    m["_logits"] = logits
    return m


def time_models(paths: Sequence[Path], ev: EvalSet, threads: int | None, rounds: int = 3, timing_rows: int = 256,
                latency_rows: int = 50) -> list[dict[str, float]]:
    """Batch-32 throughput and batch-1 p50 latency of each model, in interleaved rounds, median per model.

    Each round times every model once, so a slow spell of a shared machine touches all of them rather than
    whichever happened to run then; the median over rounds is what the choice uses.
    """
    from ..bench.latency import make_batches, time_batches

    runs = [_session_runner(p, threads) for p in paths]
    big = make_batches(ev.ids[:timing_rows], 32, ev.pad_id)
    small = make_batches(ev.ids[:latency_rows], 1, ev.pad_id)
    for run in runs:
        time_batches(run, big[:1] + small[:3], warmup=0)  # warm every session before any timing
    tput: list[list[float]] = [[] for _ in runs]
    p50: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for i, run in enumerate(runs):
            tput[i].append(len(ev.ids[:timing_rows]) / time_batches(run, big, warmup=0).sum())
            p50[i].append(float(np.percentile(time_batches(run, small, warmup=0) * 1e3, 50)))
    return [{"throughput_b32": float(np.median(t)), "latency_ms_p50": float(np.median(q))}
            for t, q in zip(tput, p50, strict=True)]


def _load_sets(tok_dir: Path, label_names: list[str], calib: DataConfig, evald: DataConfig, calib_samples: int,
               max_seq: int, eval_rows: int | None, seed: int = 0) -> tuple[list[list[int]], EvalSet]:
    import random

    from ..data.text import encode_texts, load_text_data
    from ..models.load import load_tokenizer

    for cfg in (calib, evald):
        if cfg.max_length > max_seq:
            raise ConfigError(f"--max-length {cfg.max_length} is longer than the model allows ({max_seq} positions); "
                              f"use --max-length {max_seq} or less")
    tok = load_tokenizer(str(tok_dir))
    pad = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
    cd = load_text_data(calib, splits=("train", "validation"))
    cs = cd.splits.get("train") or cd.split("validation")
    idx = sorted(random.Random(seed).sample(range(len(cs.texts)), min(calib_samples, len(cs.texts))))
    calib_ids = encode_texts(tok, [cs.texts[i] for i in idx], calib.max_length)
    ed = load_text_data(evald, splits=("validation",))
    es = ed.split("validation")
    texts, labels = es.texts[:eval_rows], es.labels[:eval_rows]
    if not texts:
        raise DataError(f"the validation split of {ed.spec} is empty; quantization needs eval rows for the budget")
    from ..data.text import LabelMap

    gold = np.array(LabelMap(label_names).encode(labels, f"validation split of {ed.spec}"))
    return calib_ids, EvalSet(encode_texts(tok, texts, evald.max_length), gold, pad, len(label_names))


def _sources(ref: Any) -> tuple[Path, Path]:
    """(plain graph for Q/DQ, fused graph for dynamic INT8) of the model to quantize."""
    if ref.engine != "onnxruntime":
        raise ModelError(f"{ref.path} is not an ONNX model; run `nanoify export` first (or pass its folder)")
    p = ref.path
    plain = p.parent / "model.onnx" if p.name == "model.fused.onnx" and (p.parent / "model.onnx").is_file() else p
    return plain, p


def _candidates(target: str, plain: Path, fused: Path, graphs: dict[Path, Any], methods: Sequence[str],
                ranges: dict[str, dict[str, float]]) -> list[Candidate]:
    from .dynamic import DYNAMIC_OPS, quantize_dynamic_int8
    from .qdq import QDQ_OPS, quantizable_nodes, quantize_static_qdq

    plain_units = quantizable_nodes(graphs[plain], QDQ_OPS)
    out: list[Candidate] = []
    if target == "cpu":
        fused_units = quantizable_nodes(graphs[fused], DYNAMIC_OPS)
        for name, pc, rr in (("dynamic-per-channel", True, False), ("dynamic-per-channel-reduce-range", True, True),
                             ("dynamic-stock", False, False)):
            def make(excl: Sequence[str], dst: Path, pc: bool = pc, rr: bool = rr) -> None:
                quantize_dynamic_int8(fused, dst, per_channel=pc, reduce_range=rr, op_types=DYNAMIC_OPS,
                                      exclude_nodes=excl)
            out.append(Candidate(name, "dynamic", {"per_channel": pc, "reduce_range": rr, "graph": fused.name},
                                 make, fused_units))
    preset = "cpu" if target == "cpu" else "tensorrt"
    for method in methods:
        def make_s(excl: Sequence[str], dst: Path, method: str = method) -> None:
            quantize_static_qdq(plain, dst, ranges[method], preset=preset, exclude_nodes=excl)
        out.append(Candidate(f"static-{method}" if target == "cpu" else f"qdq-{method}", "static-qdq",
                             {"calibration": method, "preset": preset, "per_channel": True, "graph": plain.name},
                             make_s, plain_units))
    return out


def sensitivity(cand: Candidate, ev: EvalSet, tmp: Path, rows: int, threads: int | None,
                progress: bool = False) -> list[tuple[str, float]]:
    """Per node: logit MSE against FP32 when *only that node* is quantized, most sensitive first."""
    from tqdm.auto import tqdm

    from ..bench.accuracy import predict_with

    assert ev.reference is not None
    sub = ev.ids[:rows]
    ref = ev.reference[:rows]
    scores = []
    for unit in tqdm(cand.units, desc=f"sensitivity {cand.name}", unit="node", disable=not progress or None,
                     leave=False):
        dst = tmp / "sens.onnx"
        cand.make([u for u in cand.units if u != unit], dst)
        logits = predict_with(_session_runner(dst, threads), sub, ev.pad_id, 32)
        scores.append((unit, float(((logits - ref) ** 2).mean())))
    return sorted(scores, key=lambda s: -s[1])


def mixed_precision(cand: Candidate, ev: EvalSet, fp32_acc: float, budget: float, tmp: Path, threads: int | None,
                    sens_rows: int = 256, progress: bool = False) -> tuple[Candidate, dict[str, Any]]:
    """Keep the most sensitive nodes FP32 until the accuracy drop is within ``budget`` points.

    Tries k = 1, 2, 4, … nodes, then bisects between the last miss and the first hit, so the number of
    full evaluations is logarithmic in the number of nodes.
    """
    ranking = sensitivity(cand, ev, tmp, sens_rows, threads, progress)
    order = [u for u, _ in ranking]
    tried: dict[int, float] = {}

    def acc_with(k: int) -> float:
        if k not in tried:
            dst = tmp / f"mixed-{k}.onnx"
            cand.make(order[:k], dst)
            tried[k] = measure(dst, ev, threads)["accuracy"]
        return tried[k]

    def ok(k: int) -> bool:
        return (fp32_acc - acc_with(k)) * 100 <= budget + 1e-9

    lo, hi, k = 0, None, 1
    while k <= len(order):
        if ok(k):
            hi = k
            break
        lo, k = k, k * 2
    if hi is None and len(order) and ok(len(order)):
        hi = len(order)
    if hi is not None:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if ok(mid):
                hi = mid
            else:
                lo = mid
    keep = order[:hi] if hi is not None else order
    mixed = Candidate(f"{cand.name}+fp32[{len(keep)}]", cand.format, {**cand.options, "mixed_precision": True},
                      cand.make, cand.units, excluded=list(keep))
    plan = {"base": cand.name, "ranking": [{"node": u, "logit_mse": s} for u, s in ranking],
            "sensitivity_rows": min(sens_rows, len(ev.ids)), "kept_fp32": list(keep),
            "accuracy_by_kept": {str(k): v for k, v in sorted(tried.items())}, "budget_met": hi is not None}
    return mixed, plan


def _load_graph(path: Path) -> Any:
    """The ONNX graph without its external weights; an unreadable file is a one-line ModelError."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf errors are not user-readable
        raise ModelError(f"{path} is not a readable ONNX model ({type(e).__name__}); re-export it") from None


def quantize(model: str | Path, out: str | Path, calib: DataConfig | str | None = None,
             eval_data: DataConfig | str | None = None, budget: float = 0.5, target: str = "cpu",
             methods: Sequence[str] = DEFAULT_METHODS, calib_samples: int = 256, eval_rows: int | None = None,
             threads: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Calibrate, quantize and choose (see module docstring); writes ``out`` atomically and returns its manifest.

    Args:
        model: export folder (``nanoify export``), ``.onnx`` file with a tokenizer in ``hf/`` beside it,
            or a classifier folder (exported first).
        budget: largest accuracy drop against the FP32 ONNX model, in percentage points.
    """
    from tqdm.auto import tqdm

    from ..models.resolve import resolve
    from .calibrate import calibrate_onnx, choose_ranges

    if target not in TARGETS:
        raise ConfigError(f"unknown target {target!r}; choose cpu or tensorrt")
    if budget < 0:
        raise ConfigError("--budget is a drop in accuracy points and must be ≥ 0")
    from .observers import OBSERVERS

    bad = [m for m in methods if m not in OBSERVERS]
    if bad:
        raise ConfigError(f"unknown calibration method {bad[0]!r}; choose from {', '.join(OBSERVERS)}")
    calib = calib if isinstance(calib, DataConfig) else DataConfig(data=calib)
    eval_data = eval_data if isinstance(eval_data, DataConfig) else DataConfig(data=eval_data or calib.data,
                                                                               max_length=calib.max_length)
    out = Path(out)
    t_start = time.time()
    with atomic_dir(out) as tmp:
        ref = resolve(model)
        if ref.engine == "torch":  # a classifier folder: export it first, into the output
            from ..export.onnx import export

            export(ref.path, tmp / "export")
            ref = resolve(tmp / "export")
        plain, fused = _sources(ref)
        graphs = {p: _load_graph(p) for p in {plain, fused}}
        calib_ids, ev = _load_sets(ref.tokenizer_dir, ref.label_map.names, calib, eval_data, calib_samples,
                                   ref.max_sequence, eval_rows)
        work = tmp / "candidates"
        work.mkdir()
        fp32 = measure(fused, ev, threads)
        ev.reference = fp32.pop("_logits")
        fp32_acc = fp32["accuracy"]

        ranges: dict[str, dict[str, float]] = {}
        calib_info: dict[str, Any] = {}
        if methods:
            from ..bench.latency import make_batches

            t0 = time.time()
            feeds = make_batches(calib_ids, 16, ev.pad_id)
            from .qdq import weight_node_inputs

            wanted = weight_node_inputs(graphs[plain])
            hists = calibrate_onnx(plain, tqdm(feeds, desc="calibrate", unit="batch", disable=not progress or None,
                                               leave=False), tensors=wanted, threads=threads)
            ranges = {m: choose_ranges(hists, m) for m in methods}
            calib_info = {"samples": len(calib_ids), "tensors": len(hists), "seconds": time.time() - t0,
                          "data": calib.data, "max_length": calib.max_length}
            write_json(tmp / "ranges.json", ranges)

        cands = _candidates(target, plain, fused, graphs, methods, ranges)
        for c in tqdm(cands, desc="candidates", unit="model", disable=not progress or None, leave=False):
            c.path = work / f"{c.name}.onnx"
            c.make([], c.path)
            c.metrics = measure(c.path, ev, threads)
        for c in cands:
            c.metrics["accuracy_drop_pts"] = (fp32_acc - c.metrics["accuracy"]) * 100
            c.metrics["meets_budget"] = c.metrics["accuracy_drop_pts"] <= budget + 1e-9

        plan: dict[str, Any] | None = None
        if not any(c.metrics["meets_budget"] for c in cands):
            base = max(cands, key=lambda c: c.metrics["accuracy"])
            mixed, plan = mixed_precision(base, ev, fp32_acc, budget, work, threads, progress=progress)
            mixed.path = work / f"{mixed.name}.onnx"
            mixed.make(mixed.excluded, mixed.path)
            mixed.metrics = measure(mixed.path, ev, threads)
            mixed.metrics["accuracy_drop_pts"] = (fp32_acc - mixed.metrics["accuracy"]) * 100
            mixed.metrics["meets_budget"] = mixed.metrics["accuracy_drop_pts"] <= budget + 1e-9
            cands.append(mixed)

        if target == "cpu":  # speed of the reference and every candidate, timed together
            for m, t in zip([fp32] + [c.metrics for c in cands],
                            time_models([fused] + [c.path for c in cands], ev, threads), strict=True):
                m.update(t)
        ok = [c for c in cands if c.metrics["meets_budget"]]
        if target == "cpu" and ok:
            top = max(c.metrics["throughput_b32"] for c in ok)
            band = [c for c in ok if c.metrics["throughput_b32"] >= top * (1 - SPEED_TIE)]
            chosen = min(band, key=lambda c: (round(c.metrics["file_mb"], 1), -c.metrics["accuracy"]))
            why = (f"within the budget and within {SPEED_TIE:.0%} of the fastest batch-32 throughput "
                   f"({len(band)} such), the smallest file, then the most accurate")
        elif target == "cpu":
            chosen = max(cands, key=lambda c: c.metrics["accuracy"])
            why = "most accurate; NO candidate met the budget"
        else:
            chosen = max(ok or cands, key=lambda c: c.metrics["accuracy"])
            why = "most accurate Q/DQ graph" + ("" if ok else "; NO candidate met the budget")
        assert chosen.path is not None
        model_file = OUT_MODEL if target == "cpu" else QDQ_MODEL
        shutil.copyfile(chosen.path, tmp / model_file)
        shutil.copytree(ref.tokenizer_dir, tmp / "hf")
        extra: dict[str, Any] = {}
        if target == "tensorrt":
            extra = _tensorrt_files(tmp, chosen, ranges, ref.max_sequence, ev)
        shutil.rmtree(work)
        for c in cands:
            c.metrics.pop("_logits", None)
        records = [c.record() for c in cands]
        man = manifest("quantize", {"model": str(model), "target": target, "budget_pts": budget,
                                    "methods": list(methods), "calib_samples": calib_samples,
                                    "eval_rows": len(ev.ids), "threads": threads or os.cpu_count()},
                       model_file=model_file, chosen=chosen.name, why=why, budget_met=bool(ok),
                       reference={"name": f"ONNX Runtime FP32 ({fused.name})",
                                  **{k: v for k, v in fp32.items() if k != "_logits"}},
                       candidates=records, mixed_precision=plan, calibration=calib_info,
                       seconds=time.time() - t_start, **extra)
        write_json(tmp / MANIFEST, man)
        (tmp / "report.md").write_text(format_report(man) + "\n")
    return man


def _tensorrt_files(tmp: Path, chosen: Candidate, ranges: dict[str, dict[str, float]], max_seq: int,
                    ev: EvalSet) -> dict[str, Any]:
    from .tensorrt import trt_version, trtexec_command, version_tag, write_calibration_cache

    method = chosen.options.get("calibration", next(iter(ranges)))
    write_calibration_cache(tmp / "calibration.cache", ranges[method])
    lengths = sorted(len(x) for x in ev.ids)
    opt_len = int(lengths[len(lengths) // 2])
    cmd = trtexec_command(QDQ_MODEL, "model.plan", ("input_ids", "attention_mask", "token_type_ids"),
                          (1, 1), (32, opt_len), (32, max_seq), fp16_layers=chosen.excluded)
    (tmp / "trtexec.sh").write_text("#!/bin/sh\n# Build the TensorRT engine (INT8 from the Q/DQ graph, FP16 "
                                    "elsewhere). Unverified here: no TensorRT on this machine.\n"
                                    "cd \"$(dirname \"$0\")\"\n" + cmd + "\n")
    os.chmod(tmp / "trtexec.sh", 0o755)
    return {"tensorrt": {"cache": "calibration.cache", "cache_header": f"TRT-{version_tag(trt_version())}-"
                         "EntropyCalibration2", "qdq_model": QDQ_MODEL, "trtexec": cmd,
                         "fp16_layers": chosen.excluded, "verified": False}}


def _fmt(v: Any, nd: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def format_report(man: dict[str, Any]) -> str:
    """Markdown: the FP32 reference and every candidate, the chosen one marked."""
    ref = man["reference"]
    lines = [f"# nanoify quantize — target {man['config']['target']}, budget {man['config']['budget_pts']} points",
             "", f"Chosen: **{man['chosen']}** ({man['why']}).", "",
             "| model | accuracy | drop (pts) | top-1 agree | SQNR dB | b32 rows/s | b1 p50 ms | MB | FP32 nodes |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| {ref['name']} | {_fmt(ref['accuracy'])} | 0 | 1 | inf | {_fmt(ref.get('throughput_b32'), 1)} | "
             f"{_fmt(ref.get('latency_ms_p50'), 2)} | {_fmt(ref['file_mb'], 1)} | all |"]
    for c in man["candidates"]:
        mark = " **(chosen)**" if c["name"] == man["chosen"] else ""
        lines.append(f"| {c['name']}{mark} | {_fmt(c['accuracy'])} | {_fmt(c['accuracy_drop_pts'], 2)} | "
                     f"{_fmt(c.get('top1_agreement'))} | {_fmt(c.get('sqnr_db'), 1)} | "
                     f"{_fmt(c.get('throughput_b32'), 1)} | {_fmt(c.get('latency_ms_p50'), 2)} | "
                     f"{_fmt(c['file_mb'], 1)} | {len(c['fp32_nodes'])} |")
    mp = man.get("mixed_precision")
    if mp:
        lines += ["", f"Mixed precision from {mp['base']}: {len(mp['kept_fp32'])} node(s) kept FP32 "
                      f"(sensitivity on {mp['sensitivity_rows']} rows): {', '.join(mp['kept_fp32']) or 'none'}."]
    if man["config"]["target"] == "tensorrt":
        lines += ["", "TensorRT speed is not measured here (no TensorRT/GPU); accuracy is ONNX Runtime CPU running "
                      "the same Q/DQ graph.", "", "```", man["tensorrt"]["trtexec"], "```"]
    return "\n".join(lines)
