"""The steps of quantizing an ONNX graph, one function each — the path every ONNX target (``cpu``,
``tensorrt``, a user's) takes through :func:`nanoify.quant.run.quantize`: prepare the source graphs (exporting a
PyTorch model first), read the calibration and evaluation rows through the model's task, measure the FP32
reference, calibrate (streaming histograms → ranges per method), build the candidates the target asks for
(schemes from :mod:`nanoify.quant.schemes`), measure each one's metrics against the reference, fall back to
mixed precision when none meets the budget, profile slow INT8 kernels, time everything in interleaved rounds
(:func:`search`), and write the chosen graph with its ranges (:func:`write_chosen`).

The target (:mod:`nanoify.quant.targets`) travels in :class:`Source`: it names the candidates, opens the engine
that evaluates and times them, and writes its own files beside the chosen graph.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import version_converter
from tqdm.auto import tqdm

from ..artifacts import write_json
from ..bench.latency import feed_bytes, measure_speed, measure_speed_opening
from ..config import QuantizeConfig
from ..errors import ModelError
from ..export.onnx import export
from ..models.files import is_quantized, onnx_io
from ..runtime.cpu import int8_report
from ..runtime.ort import ort_session
from ..tasks import check_budget, evaluate_predictions, make_task
from ..tasks.resolve import resolve
from .bias_correction import correct_graph
from .calibrate import calibrate_onnx, choose_ranges, range_report
from .choose import SPEED_TIE, speed_score
from .ops import DYNAMIC_OPS, scope_nodes, weight_nodes
from .profile import slow_int8_nodes
from .qdq import calibration_tensors
from .rounding import SECONDS as ROUNDING_SECONDS
from .rounding import round_graph, tensor_stream
from .schemes import (
    DynamicInt8,
    Float,
    QuantPlan,
    StaticQDQ,
    apply_plan,
    derived_graph,
    describe,
    learned_graph,
    precision_of,
    smoothed_graph,
)
from .smooth import AUTO as SMOOTH_AUTO
from .smooth import channel_stats, smooth_graph, smooth_groups

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("entropy", "percentile", "mse", "minmax")
SENSITIVITY_ROWS = 256
# the per-node search's share of a quantize run: its rows shrink so that every node's trial fits (a 640² YOLO has
# about 225 nodes; at 256 rows each its search took most of a 52-minute run on 2 cores, issue 20)
SENSITIVITY_SECONDS = 300.0
# --search-seconds bounds the whole search (a 640² YOLO on 2 cores runs about 0.15 s a row in FP32: 20 candidates
# on 128 rows would take 6 minutes before anything else; issue 20 wants the whole quantize in 10). The final timing
# has TIMING_SHARE of it set aside; every other step takes a share of what is left before that reserve when it
# starts (Clock.avail), so a step that overruns shrinks the ones after it instead of the search overrunning.
SCREEN_SHARE = 0.4  # the candidates' first look and their evaluation on every row
SCREEN_KEEP = 4  # INT8 candidates that go on from the first look to every evaluation row (float rows always do)
MIN_SCREEN_ROWS = 16
ROUNDING_SHARE = 0.25
BIAS_SHARE = 0.5  # the bias-corrected twins, fewest first dropped (each costs a pass and an evaluation)
SENSITIVITY_SHARE = 0.5  # mixed precision's per-node sensitivity, unless --sensitivity-seconds says
MIXED_SHARE = 0.5  # mixed precision's search for how many nodes to keep float (its quick rows fit this)
TIMING_SHARE = 0.25  # the final timing of every candidate, set aside from the start
QUICK_TIMING_SHARE = 0.05  # mixed precision's quick timing screen of its starting candidates
MIN_LATENCY_ROWS = 20
MIN_SENSITIVITY_ROWS = 8


@dataclass
class Clock:
    """``--search-seconds`` as the search's deadline: :meth:`avail` is what is left before the final timing's
    reserve (``reserve`` seconds, set aside from the start), :meth:`left` what is left in all. Steps size themselves
    from these when they start; none is skipped for time except the optional ones (bias-corrected twins, the
    peer's extra rows, mixed precision's refinement), and each says so in the manifest."""

    seconds: float
    reserve: float = 0.0
    start: float = field(default_factory=time.time)

    def left(self) -> float:
        return max(self.seconds - (time.time() - self.start), 0.0)

    def avail(self) -> float:
        return max(self.left() - self.reserve, 0.0)


@dataclass
class Source:
    """The model being quantized: its reference, task, and the graphs the schemes rewrite."""

    ref: Any
    task: Any
    plain: Path  # for Q/DQ
    fused: Path  # for dynamic INT8 (transformer fusions; the plain graph for CNNs)
    graphs: dict[str, Any]
    cnn: bool
    target: Any  # the Target (quant/targets.py) that names the candidates and evaluates (and times) every graph
    derived: dict[str, Path] = field(default_factory=dict)  # float graphs made for schemes (rounding, bias)

    @property
    def sources(self) -> dict[str, Path]:
        return {"plain": self.plain, "fused": self.fused, **self.derived}

    def float_graph(self, scheme: Any) -> Path:
        """The FP32 graph a scheme's outputs are compared with (not a derived graph: those are already changed)."""
        return self.fused if scheme.graph == "fused" else self.plain


@dataclass
class Candidate:
    """One quantized model tried: its plan, where it was written, what it measured."""

    name: str
    plan: QuantPlan | None  # None: a candidate that is not a rewritten graph (a target's own format)
    path: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    preds: Any = field(default=None, repr=False)
    made: dict[str, Any] = field(default_factory=dict)  # how a target's own format was made (plan None)
    float_nodes: list[str] = field(default_factory=list)  # what such a candidate kept float (plan None)

    @property
    def precision(self) -> str:
        """What the engine runs the candidate's float parts in."""
        return precision_of(self.plan.scheme) if self.plan is not None else "fp32"

    def record(self) -> dict[str, Any]:
        if self.plan is None:
            return {"name": self.name, "scheme": self.made or self.name, "fp32_nodes": self.float_nodes,
                    **self.metrics}
        return {"name": self.name, "scheme": describe(self.plan.scheme), "fp32_nodes": self.plan.float_nodes,
                **self.metrics}


@dataclass
class Reference:
    """The FP32 model's predictions and metrics on the evaluation rows."""

    path: Path
    preds: Any
    metrics: dict[str, Any]
    metric: str  # the primary metric the budget is counted in
    row_seconds: float = 0.0  # what the FP32 model took a row on the evaluation pass (task work included)
    rows: int = 0  # the evaluation rows it ran (the set every candidate judged against it runs)
    open_seconds: float = 0.0  # opening (compiling) the model in the target's engine

    @property
    def per_model(self) -> float:
        """What evaluating one more model costs besides its rows: writing its graph and compiling it (about two
        opens of the reference)."""
        return 2 * self.open_seconds


def _engine(src: Source, path: Path, threads: int | None, precision: str = "fp32") -> Any:
    return src.target.engine(path, threads) if precision == "fp32" else src.target.engine(path, threads, precision)


# ---- step 1: the source graphs ----------------------------------------------------------------------------
def prepare(model: str | Path, tmp: Path, target: Any, task: str | None = None, preprocess: str | Path | None = None,
            decoder: str | None = None) -> Source:
    """Resolve the model (exporting a PyTorch one into ``tmp/export`` first) and load its graphs."""

    ref = resolve(model, task=task, preprocess=preprocess, decoder=decoder)
    if ref.engine == "torch":
        export(ref.path, tmp / "export")
        ref = resolve(tmp / "export", preprocess=preprocess, decoder=decoder)
    if ref.engine != "onnxruntime":
        raise ModelError(f"{ref.path} is not an ONNX model; run `nanoify export` first (or pass its folder)")
    fused = ref.path
    plain = fused.parent / "model.onnx" if fused.name == "model.fused.onnx" and (
        fused.parent / "model.onnx").is_file() else fused
    if plain == fused:
        fused = plain = upgrade_opset(plain, tmp / "upgraded")
    simple = pre_optimize(plain, tmp / "basic")
    fused = simple if fused == plain else fused
    plain = simple
    graphs = {}
    for key, p in (("plain", plain), ("fused", fused)):
        n_q = is_quantized(onnx_io(p)[2])
        if n_q:
            raise ModelError(f"{p} is already quantized ({n_q} quantization nodes); pass the FP32 model (its export "
                             "folder or model.onnx)")
        graphs[key] = onnx.load(str(p), load_external_data=False)
    cnn = any(n.op_type in ("Conv", "ConvTranspose") for n in graphs["plain"].graph.node)
    return Source(ref, make_task(ref), plain, fused, graphs, cnn, target)


MIN_OPSET = 13  # per-channel DequantizeLinear (its axis attribute) needs opset 13


def upgrade_opset(path: Path, folder: Path) -> Path:
    """``path`` itself, or a copy converted to opset 13 when it is older (FastestDet ships opset 11): per-channel
    weights need the ``axis`` of opset-13 DequantizeLinear, without which ONNX Runtime refuses the graph."""

    m = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), MIN_OPSET)
    if opset >= MIN_OPSET or _external_weights(m):
        return path

    try:
        up = version_converter.convert_version(m, MIN_OPSET)
    except Exception as e:  # noqa: BLE001 - the converter's own errors are not user-readable
        raise ModelError(f"{path} uses opset {opset}; converting it to {MIN_OPSET} for INT8 failed "
                         f"({type(e).__name__}); re-export it at opset {MIN_OPSET} or newer") from None
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / path.name
    onnx.save(up, str(out))
    log.info("%s: opset %d converted to %d for per-channel INT8", path, opset, MIN_OPSET)
    return out


def _external_weights(model: Any) -> bool:
    """Weights in external files (a graph over 2 GB): rewriting it here would need them all in memory."""

    return any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer)


def pre_optimize(path: Path, folder: Path) -> Path:
    """The graph after ONNX Runtime's hardware-neutral ("basic") rewrites — constant folding, redundant
    Reshape/Transpose pairs, Pad folded into pooling — as ONNX Runtime's own ``quant_pre_process`` does before
    quantizing: Q/DQ then sits on the graph ORT will run. Measured on FastestDet (VNNI machine): 13 Reshape +
    Transpose pairs of its channel shuffles and a Pad go, and its static INT8 runs 3% faster at batch 1.
    ``path`` itself when its weights live in external files (over 2 GB) or ORT cannot load it."""

    if _external_weights(onnx.load(str(path), load_external_data=False)):
        return path
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / path.name
    try:
        ort_session(path, 1, level="basic", save_to=out)
    except ModelError:
        return path
    return out


# ---- step 2: data -----------------------------------------------------------------------------------------
def load_data(src: Source, calib: Any, eval_data: Any, cfg: QuantizeConfig) -> tuple[Any, Any]:
    """(calibration rows, evaluation rows) through the task: its calibration split (train first) and its
    evaluation split (validation, else test)."""
    calib_set = src.task.calib_set(calib, cfg.calib_samples)
    ev = src.task.eval_set(eval_data if eval_data is not None else calib, None, cfg.eval_rows)
    return calib_set, ev


# ---- step 3: the FP32 reference ---------------------------------------------------------------------------
def measure_reference(src: Source, ev: Any, threads: int | None) -> Reference:
    t0 = time.perf_counter()
    with _engine(src, src.fused, threads) as eng:
        opened = time.perf_counter() - t0
        preds = src.task.predict(eng.infer, ev)
    took = time.perf_counter() - t0
    metrics = {**src.task.reference_metrics(preds, ev), "file_mb": src.fused.stat().st_size / 1e6}
    return Reference(src.fused, preds, metrics, src.task.primary_metric(ev), (took - opened) / max(len(ev), 1),
                     len(ev), opened)


# ---- step 4: calibration ----------------------------------------------------------------------------------
def calibrate(src: Source, calib_set: Any, methods: Sequence[str], scopes: Sequence[str], allow_unsigned: bool,
              threads: int | None, progress: bool) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Ranges per method for every tensor the static schemes of ``scopes`` need, from one streaming pass."""

    if not methods:
        return {}, {}
    t0 = time.time()
    tensors: dict[str, None] = {}
    for scope in scopes:
        tensors.update(dict.fromkeys(calibration_tensors(src.graphs["plain"], scope)))
    bs = src.task.batch_for(src.task.calib_batch)
    n_batches = math.ceil(len(calib_set) / bs)
    feeds = (f for _, f in src.task.batches(calib_set, bs))
    hists = calibrate_onnx(src.plain, tqdm(feeds, total=n_batches, desc="calibrate", unit="batch",
                                           disable=not progress or None, leave=False),
                           tensors=list(tensors), threads=threads)
    # u8 targets have a free zero point: non-negative tensors get [0, amax], skewed ones their own extent
    ranges = {m: choose_ranges(hists, m, allow_unsigned=allow_unsigned, asymmetric=allow_unsigned) for m in methods}
    report = range_report(hists, ranges)
    report["unrelated_concats"] = unrelated_concats(src.graphs["plain"], hists)
    info = {"samples": len(calib_set), "data": calib_set.where, "tensors": len(hists),
            "unsigned_tensors": sum(h.nonnegative for h in hists.values()) if allow_unsigned else 0,
            "asymmetric_tensors": {m: sum(r.lo is not None for r in rs.values()) for m, rs in ranges.items()},
            "seconds": round(time.time() - t0, 2), "best_method_counts": report["best_method_counts"],
            "kept_float_by_rule": report["unrelated_concats"],
            "provenance": calib_set.provenance}
    return ranges, {"info": info, "report": report}


# ---- step 4b: learned rounding ----------------------------------------------------------------------------
def roundings(cfg: QuantizeConfig, src: Source) -> tuple[str, ...]:
    """How static candidates round their weights: ``cfg.rounding``, else nearest, plus learned for graphs with
    convolutions (where rounding, not ranges, limits INT8 fidelity: issue 21; transformers' GEMMs are served by
    dynamic INT8 on the CPU)."""
    if cfg.rounding is not None:
        return cfg.rounding
    return ("nearest", "learned") if src.cnn else ("nearest",)


def learn_rounding(src: Source, calib_set: Any, schemes: Sequence[Any], work: Path, threads: int | None,
                   progress: bool, seconds: float = ROUNDING_SECONDS) -> dict[str, Any]:
    """The float graphs with learned rounding the schemes need (one per weight width), written to ``work`` and
    added to ``src.derived``; the per-layer report of each."""
    out = {}
    for bits in sorted({s.weight_bits for s in schemes if isinstance(s, StaticQDQ) and s.rounding == "learned"}):
        key = learned_graph(bits)
        if key in src.derived:
            continue
        dst = work / f"{key}.onnx"
        feeds = (f for _, f in src.task.batches(calib_set, src.task.batch_for(src.task.calib_batch)))
        out[key] = round_graph(src.plain, dst, weight_nodes(src.graphs["plain"]), feeds, bits, threads,
                               progress=progress, seconds=seconds)
        src.derived[key] = dst
    return out


def smoothing(cfg: QuantizeConfig, src: Source) -> bool:
    """Whether static candidates get SmoothQuant twins: ``cfg.smooth``, else for graphs without convolutions
    (transformers, whose activations carry outlier channels; convolutions have learned rounding instead)."""
    return cfg.smooth if cfg.smooth is not None else not src.cnn


def smooth_graphs(src: Source, calib_set: Any, schemes: Sequence[Any], ranges: dict[str, dict[str, Any]],
                  work: Path, allow_unsigned: bool, threads: int | None) -> dict[str, Any]:
    """The smoothed float graphs the schemes need (one per α setting and weight width: the GEMM inputs' channel
    maxima and row samples from one pass over the calibration rows, then the smoothed tensors' own histograms
    from a pass over each smoothed graph), added to ``src.derived``; their ranges join ``ranges`` under every
    method. Returns the report of each."""
    wanted = sorted({(s.smooth, s.weight_bits) for s in schemes if isinstance(s, StaticQDQ) and s.smooth})
    if not wanted or not ranges:
        return {}
    t0 = time.time()
    groups = smooth_groups(src.graphs["plain"])
    bs = src.task.batch_for(src.task.calib_batch)
    feeds = (f for _, f in src.task.batches(calib_set, bs))
    amax, samples = channel_stats(src.plain, [g.x for g in groups], feeds, threads)
    out = {}
    for alpha, bits in wanted:
        key = smoothed_graph(alpha, bits)
        dst = work / f"{key}.onnx"
        info = smooth_graph(src.plain, dst, amax, alpha if alpha == SMOOTH_AUTO else float(alpha), samples, bits)
        if info["tensors"]:
            feeds = (f for _, f in src.task.batches(calib_set, bs))
            hists = calibrate_onnx(dst, feeds, tensors=info["tensors"], threads=threads)
            for method, rs in ranges.items():
                rs.update(choose_ranges(hists, method, allow_unsigned=allow_unsigned, asymmetric=allow_unsigned))
        src.derived[key] = dst
        out[key] = {k: v for k, v in info.items() if k != "tensors"} | {"seconds": round(time.time() - t0, 1)}
    return out


def bias_corrections(cfg: QuantizeConfig, src: Source) -> bool:
    """Whether static candidates get bias-corrected twins: ``cfg.bias_correction``, else for graphs with
    convolutions (whose biases carry the correction; a transformer's MatMuls have none to carry it)."""
    return cfg.bias_correction if cfg.bias_correction is not None else src.cnn


def correct_biases(src: Source, calib_set: Any, schemes: Sequence[Any], work: Path, threads: int | None,
                   progress: bool) -> dict[str, Any]:
    """The bias-corrected float graphs the schemes need (one per weight width and rounding; learned rounding's
    graph is made first when missing), written to ``work`` and added to ``src.derived``; the report of each."""
    out = learn_rounding(src, calib_set, [s for s in schemes if isinstance(s, StaticQDQ) and s.bias_correct],
                         work, threads, progress)
    for bits, rounding in sorted({(s.weight_bits, s.rounding) for s in schemes
                                  if isinstance(s, StaticQDQ) and s.bias_correct}):
        key = derived_graph(bits, rounding, True)
        if key in src.derived:
            continue
        dst = work / f"{key}.onnx"
        feeds = (f for _, f in src.task.batches(calib_set, src.task.batch_for(src.task.calib_batch)))
        base = src.derived[learned_graph(bits)] if rounding == "learned" else src.plain
        out[key] = correct_graph(base, dst, src.plain, weight_nodes(src.graphs["plain"]), feeds, bits, threads)
        src.derived[key] = dst
    return out


def corrected_twins(cands: Sequence[Candidate], agreement_key: str) -> list[StaticQDQ]:
    """Bias correction's candidates: for each scope and rounding, the twin of the static candidate that kept the
    most predictions (a twin of every candidate would double the search for the same information: the report
    shows the step's effect on the best one of each kind)."""
    best: dict[tuple[Any, ...], Candidate] = {}
    for c in cands:
        s = c.plan.scheme if c.plan is not None else None
        if not isinstance(s, StaticQDQ) or s.bias_correct:
            continue
        k = _kind(c)
        if k not in best or _fidelity(c, agreement_key) > _fidelity(best[k], agreement_key):
            best[k] = c
    order = sorted(best.values(), key=lambda c: _fidelity(c, agreement_key), reverse=True)  # best first: kept
    return [dataclasses.replace(c.plan.scheme, bias_correct=True) for c in order]  # when time allows fewer


def _fidelity(c: Candidate, agreement_key: str) -> tuple[float, float]:
    return (c.metrics.get(agreement_key, 0.0), -c.metrics.get("drop_pts", 0.0))


# ---- step 5: candidates -----------------------------------------------------------------------------------
UNRELATED_RANGES = 16.0  # inputs of one Concat whose ranges differ more than this never share a scale


def unrelated_concats(model: Any, hists: dict[str, Any], ratio: float = UNRELATED_RANGES) -> dict[str, list[float]]:
    """Concat nodes whose inputs' ranges differ by more than ``ratio`` (node → input amaxes). Quantized, their
    output gets one scale, and the small input rounds away — in Ultralytics-style heads, box pixels (hundreds)
    beside class scores (0..1) turn every score into 0. These stay float in every static plan."""
    out = {}
    for n in model.graph.node:
        if n.op_type != "Concat":
            continue
        amax = [hists[i].amax for i in n.input if i in hists and hists[i].n]
        if len(amax) >= 2 and min(amax) > 0 and max(amax) / min(amax) > ratio:
            out[n.name] = [float(a) for a in amax]
    return out


def units_of(src: Source, scheme: Any) -> list[str]:
    """The nodes a scheme quantizes in its source graph (the units of mixed precision)."""

    if isinstance(scheme, DynamicInt8):
        return weight_nodes(src.graphs[scheme.graph], DYNAMIC_OPS)
    if isinstance(scheme, Float):
        return []  # nothing quantized, nothing to keep float
    return scope_nodes(src.graphs["plain"], scheme.scope)


def evaluate_candidate(c: Candidate, src: Source, ev: Any, ref: Reference, ranges: Any, work: Path, budget: float,
                       threads: int | None, agreement_budget: float | None = None) -> None:
    """Write the candidate's graph, run it on the evaluation rows, record metrics and the budget check."""

    c.path = src.target.write_candidate(c, src, work, ranges)
    measure_written(c, src, ev, ref, budget, threads, agreement_budget)


def measure_written(c: Candidate, src: Source, ev: Any, ref: Reference, budget: float, threads: int | None,
                    agreement_budget: float | None = None) -> None:
    """Run an already written candidate (``c.path``) on the evaluation rows; record metrics and the budget check."""
    assert c.path is not None
    if _is_reference(c, src, ref, ev):  # the FP32 graph the reference ran, on the same engine: its predictions
        c.preds = ref.preds
    else:
        with _engine(src, c.path, threads, c.precision) as eng:
            c.preds = src.task.predict(eng.infer, ev)
    c.metrics = {**evaluate_predictions(src.task, c.preds, ev, ref.preds), "file_mb": _file_mb(c.path)}
    chk = check_budget(ref.metrics, c.metrics, budget, ref.metric, agreement_budget, src.task.agreement_key)
    c.metrics.update(metric=ref.metric, drop_pts=chk.drop_pts, meets_budget=chk.met)


def _is_reference(c: Candidate, src: Source, ref: Reference, ev: Any) -> bool:
    """Whether ``c`` is the FP32 float row of the very graph and rows the reference ran (its evaluation would repeat
    the reference's, a full pass of the model)."""
    s = c.plan.scheme if c.plan is not None else None
    return (isinstance(s, Float) and s.precision == "fp32" and src.sources.get(s.graph) == ref.path
            and ref.rows == len(ev))


def _file_mb(path: Path) -> float:
    """The model's size on disk: an IR's weights are in the ``.bin`` beside its ``.xml``."""
    weights = path.with_suffix(".bin") if path.suffix == ".xml" else None
    return (path.stat().st_size + (weights.stat().st_size if weights and weights.is_file() else 0)) / 1e6


def screen_rows(cands: int, row_seconds: float, rows: int, seconds: float, floor: int = MIN_SCREEN_ROWS,
                per_model: float = 0.0) -> int:
    """Rows of the candidates' first look so that the look at all ``cands`` and the :data:`SCREEN_KEEP` that go
    on to every row fit ``seconds`` together at ``row_seconds`` a row and ``per_model`` seconds a model evaluated
    (writing its graph, compiling it); all ``rows`` (no first look) when every candidate on every row fits already
    or few candidates would be dropped; never fewer than ``floor``."""
    if cands <= SCREEN_KEEP or row_seconds <= 0 or cands * (per_model + row_seconds * rows) <= seconds:
        return rows
    left = seconds - SCREEN_KEEP * (per_model + row_seconds * rows) - cands * per_model
    return max(min(rows, int(left / (cands * row_seconds))), min(floor, rows))


def screen(cands: list[Candidate], src: Source, ev: Any, rows: int, ranges: Any, work: Path, cfg: QuantizeConfig,
           progress: bool) -> tuple[list[Candidate], dict[str, Any]]:
    """The first look: every candidate on the first ``rows`` evaluation rows; the float rows, the best INT8
    candidate of each kind (:func:`_kind`) that met the budget there, and the next best up to :data:`SCREEN_KEEP`
    INT8 ones go on to every row (fidelity is judged here; speed, which differs by kind, later). Returns them
    (written, not yet measured on every row) and what the look saw."""
    sub = src.task.subset(ev, range(rows))
    ref = measure_reference(src, sub, cfg.threads)
    for c in tqdm(cands, desc=f"first look ({rows} rows)", unit="model", disable=not progress or None, leave=False):
        evaluate_candidate(c, src, sub, ref, ranges, work, cfg.budget, cfg.threads, cfg.agreement_budget)
    int8 = [c for c in cands if c.plan is None or not isinstance(c.plan.scheme, Float)]
    order = sorted(int8, key=lambda c: (bool(c.metrics["meets_budget"]), _fidelity(c, src.task.agreement_key)),
                   reverse=True)
    best_of_kind: dict[Any, str] = {}  # the look judges fidelity only: each kind's best goes on to be timed
    for c in order:
        if c.metrics["meets_budget"] or not best_of_kind:
            best_of_kind.setdefault(_kind(c), c.name)
    go_on = set(best_of_kind.values())
    rest = [c.name for c in order if c.name not in go_on]
    go_on |= set(rest[:max(SCREEN_KEEP - len(go_on), 0)])
    go_on |= {c.name for c in cands if c.plan is not None and isinstance(c.plan.scheme, Float)}
    kept = [c for c in cands if c.name in go_on]
    dropped = [{**c.record(), "rows": rows} for c in cands if c.name not in go_on]
    log.info("first look on %d rows: %d of %d candidates go on", rows, len(kept), len(cands))
    return kept, {"rows": rows, "of": len(ev), "kept": [c.name for c in kept], "dropped": dropped}


def fit_timing(t: Any, models: int, row_seconds: float, seconds: float, batch: int) -> Any:
    """``t`` with fewer rows when timing ``models`` models for its rounds would take more than ``seconds`` at
    ``row_seconds`` a row (both batch sizes shrink by one factor; at least :data:`MIN_LATENCY_ROWS` rows at batch
    1 and two batches — as many as there are — for throughput; the rounds stay: interleaving is what keeps a slow
    spell from deciding)."""
    cost = timing_cost(t, models, row_seconds)
    if row_seconds <= 0 or cost <= seconds:
        return t
    f = seconds / cost
    lat = max(min(MIN_LATENCY_ROWS, t.latency_rows), int(t.latency_rows * f))
    thr = max(min(2 * batch, t.throughput_rows), int(t.throughput_rows * f) // batch * batch)
    return dataclasses.replace(t, latency_rows=lat, throughput_rows=thr)


def timing_cost(t: Any, models: int, row_seconds: float) -> float:
    """Seconds timing ``models`` models with ``t`` takes at ``row_seconds`` a row (every round, both batch sizes)."""
    return models * row_seconds * t.rounds * (t.latency_rows + t.throughput_rows)


def _kind(c: Candidate) -> tuple[Any, ...]:
    """What a candidate is apart from its calibration method: static INT8's scope, rounding, weight width and bias
    correction (the method changes fidelity; the kind also changes speed)."""
    s = c.plan.scheme if c.plan is not None else None
    if isinstance(s, StaticQDQ):
        return ("static", s.preset, s.scope, s.rounding, s.weight_bits, s.bias_correct)
    return (type(s).__name__, c.name)


# ---- step 6: mixed precision ------------------------------------------------------------------------------
def _raw_outputs(path: Path, src: Source, sub: Any, threads: int | None) -> list[dict[str, np.ndarray]]:
    with _engine(src, path, threads) as eng:
        return [eng.infer(f) for _, f in src.task.batches(sub, 32)]


def output_error(ref: list[dict[str, np.ndarray]], got: list[dict[str, np.ndarray]]) -> float:
    """Squared error of every output against the reference's, relative to the reference's power (task-neutral:
    logits, detection maps alike)."""
    num = den = 0.0
    for a, b in zip(ref, got, strict=True):
        for k, v in a.items():
            r = np.asarray(v, dtype=np.float64)
            num += float(((r - np.asarray(b[k], dtype=np.float64)) ** 2).sum())
            den += float((r**2).sum())
    return num / max(den, 1e-30)


def sensitivity_rows(units: int, row_seconds: float, rows: int, seconds: float = SENSITIVITY_SECONDS,
                     floor: int = MIN_SENSITIVITY_ROWS) -> int:
    """Rows each node's trial runs so that all ``units`` trials fit ``seconds`` at ``row_seconds`` a row: at most
    ``rows``, at least ``floor`` (the output error is dense — every value of every output — so a few rows still
    rank nodes; a few hundred only refine the order)."""
    if units <= 0 or row_seconds <= 0:
        return rows
    return max(min(rows, int(seconds / (units * row_seconds))), min(floor, rows))


def sensitivity(c: Candidate, src: Source, ev: Any, ranges: Any, work: Path, threads: int | None,
                rows: int = SENSITIVITY_ROWS, progress: bool = False,
                seconds: float = SENSITIVITY_SECONDS) -> tuple[list[tuple[str, float]], int, str]:
    """Per node: relative output error against FP32 when *only that node* is quantized, most sensitive first; the
    rows it was measured on (``rows``, fewer when the trials would not fit ``seconds``: the FP32 pass over the rows
    is timed first, :func:`sensitivity_rows`); and how it was ranked (:data:`PER_NODE`, or :data:`ONE_PASS` by
    :func:`local_errors` when the trials would overrun ``seconds`` even on the fewest rows). (Ranking by the error
    saved when one node alone is kept float, on the fully quantized graph, was tried on ResNet-20: on 256 rows that
    signal is noise-level for most nodes and the search kept 26 nodes float where this ranking needs 11.)"""

    units = c.plan.units
    graph = src.float_graph(c.plan.scheme)
    sub = src.task.subset(ev, range(min(rows, len(ev))))
    t0 = time.perf_counter()
    ref = _raw_outputs(graph, src, sub, threads)  # cached: every trial is compared with it
    fit = sensitivity_rows(len(units), (time.perf_counter() - t0) / max(len(sub), 1), len(sub), seconds)
    if fit < len(sub):
        log.info("sensitivity of %d nodes on %d rows (of %d) to fit %.0f s", len(units), fit, len(sub), seconds)
        sub = src.task.subset(ev, range(fit))
        ref = _raw_outputs(graph, src, sub, threads)
    scores = []
    t_trials = time.perf_counter()
    for unit in tqdm(units, desc=f"sensitivity {c.name} ({len(sub)} rows)", unit="node",
                     disable=not progress or None, leave=False):
        dst = work / "sens.onnx"
        apply_plan(c.plan.keep_float([u for u in units if u != unit]), src.sources, dst, ranges)
        scores.append((unit, output_error(ref, _raw_outputs(dst, src, sub, threads))))
        if len(scores) == 1 and len(units) * (time.perf_counter() - t_trials) > seconds * ONE_PASS_SLACK:
            # a trial costs more than its share even on the fewest rows (writing and compiling a graph per node):
            # rank every node from one pass of the fully quantized graph instead
            log.info("sensitivity: %d trials would take %.0f s (> %.0f s): one-pass ranking", len(units),
                     len(units) * (time.perf_counter() - t_trials), seconds)
            return local_errors(c, src, sub, ranges, work, threads), len(sub), ONE_PASS
    return sorted(scores, key=lambda s: -s[1]), len(sub), PER_NODE


ONE_PASS_SLACK = 1.5  # per-node trials may overrun their share by this much before the one-pass ranking takes over
PER_NODE, ONE_PASS = "one node quantized at a time", "one pass: error each node adds"


def local_errors(c: Candidate, src: Source, sub: Any, ranges: Any, work: Path,
                 threads: int | None) -> list[tuple[str, float]]:
    """Per node, the output error it *adds* when every node is quantized: the relative squared error of its output
    against FP32, less the largest error already carried by the quantized nodes feeding it (through any float
    ops between them) — one pass of the FP32 and the fully quantized graph with every node's output exposed
    (ONNX Runtime, basic optimisations so the outputs exist), instead of one graph per node. Most sensitive
    first."""
    graph = src.float_graph(c.plan.scheme)
    q = work / "one_pass.onnx"
    apply_plan(c.plan, src.sources, q, ranges)
    units = set(c.plan.units)
    fm, qm = onnx.load(str(graph)), onnx.load(str(q))
    f_out = {n.name: n.output[0] for n in fm.graph.node if n.name in units}
    q_out = {n.name: n.output[0] for n in qm.graph.node if n.name in units}
    both = [u for u in c.plan.units if u in f_out and u in q_out]
    inputs_of = {n.name: list(n.input) for n in fm.graph.node}
    producer = {o: n.name for n in fm.graph.node for o in n.output}

    def upstream(name: str) -> set[str]:  # the unit nodes whose outputs reach ``name``'s inputs through non-units
        seen, out, stack = set(), set(), list(inputs_of.get(name, []))
        while stack:
            t = stack.pop()
            if t in seen or t not in producer:
                continue
            seen.add(t)
            p = producer[t]
            if p in units:
                out.add(p)
            else:
                stack.extend(inputs_of[p])
        return out

    del fm, qm
    num = dict.fromkeys(both, 0.0)
    den = dict.fromkeys(both, 0.0)

    def exposed(path: Path, outs: dict[str, str]) -> Any:
        return tensor_stream(path, [outs[u] for u in both], (f for _, f in src.task.batches(sub, 1)), threads,
                             level="basic")

    for fv, qv in zip(exposed(graph, f_out), exposed(q, q_out), strict=True):
        for u in both:
            a, b = np.asarray(fv[f_out[u]], np.float64), np.asarray(qv[q_out[u]], np.float64)
            num[u] += float(((a - b) ** 2).sum())
            den[u] += float((a**2).sum())
    err = {u: num[u] / max(den[u], 1e-30) for u in both}
    local = {u: max(err[u] - max((err[p] for p in upstream(u) if p in err), default=0.0), 0.0) for u in both}
    return sorted(((u, local.get(u, 0.0)) for u in c.plan.units), key=lambda s: -s[1])


def mixed_precision(c: Candidate, src: Source, ev: Any, ref: Reference, ranges: Any, work: Path, budget: float,
                    threads: int | None, progress: bool = False, sens_rows: int = SENSITIVITY_ROWS,
                    agreement_budget: float | None = None,
                    sens_seconds: float = SENSITIVITY_SECONDS,
                    clock: Clock | None = None) -> tuple[Candidate, dict[str, Any]]:
    """Keep the most sensitive nodes in float until the budget holds.

    Tries k = 1, 2, 4, … nodes, then bisects between the last miss and the first hit, so the number of full
    evaluations is logarithmic in the number of nodes. With a ``clock`` whose :data:`MIXED_SHARE` does not fit those
    evaluations on every row, the search runs first on the rows that fit (:func:`quick_rows`), then confirms its
    answer on every row (doubling again there if it misses); the bisection on every row stops when the clock runs
    out, keeping the smallest k known to meet the budget.
    """
    t0 = time.time()
    ranking, used_rows, method = sensitivity(c, src, ev, ranges, work, threads, sens_rows, progress, sens_seconds)
    sens_took = time.time() - t0
    order = [u for u, _ in ranking]
    tried: dict[int, float] = {}
    met: dict[int, bool] = {}
    quick = quick_rows(len(order), ref.row_seconds, len(ev), MIXED_SHARE * clock.avail() if clock else math.inf,
                       per_model=ref.per_model)
    full: dict[int, Candidate] = {}  # the trials on every row: the answer's is the mixed candidate, measured
    info: dict[str, Any] = {}

    def judge(sub: Any, sub_ref: Reference, seen: dict[int, bool]) -> Callable[[int], bool]:
        def ok(k: int) -> bool:
            if k not in seen:
                trial = Candidate(f"{c.name}+fp32[{k}]", c.plan.keep_float(order[:k]))
                evaluate_candidate(trial, src, sub, sub_ref, ranges, work, budget, threads, agreement_budget)
                seen[k] = trial.metrics["meets_budget"]
                if sub is ev:
                    tried[k], full[k] = trial.metrics[ref.metric], trial
            return seen[k]
        return ok

    lo, start, stop = 0, 1, None
    if quick < len(ev):  # the search on the rows that fit, then its answer confirmed on every row
        sub = src.task.subset(ev, range(quick))
        hint = _smallest_k(judge(sub, measure_reference(src, sub, threads), {}), len(order), 0, 1, None)
        info["quick_rows"], info["quick_answer"] = quick, hint
        if hint is not None:  # fewer nodes missed on the quick rows: the search on every row starts at the answer
            lo, start = hint - 1, hint
        stop = (lambda: clock.left() <= 0) if clock else None
    hi = _smallest_k(judge(ev, ref, met), len(order), lo, start, stop)
    keep = order[:hi] if hi is not None else order
    mixed = full.get(len(keep)) or Candidate(f"{c.name}+fp32[{len(keep)}]", c.plan.keep_float(keep))
    plan = {"base": c.name, "ranking": [{"node": u, "output_error": s} for u, s in ranking],
            "ranking_method": method, "sensitivity_rows": used_rows, "sensitivity_seconds": round(sens_took, 1),
            "kept_fp32": list(keep),
            "metric": ref.metric,
            "metric_by_kept": {str(k): v for k, v in sorted(tried.items())}, "budget_met": hi is not None, **info}
    return mixed, plan


def _smallest_k(ok: Callable[[int], bool], n: int, lo: int, k: int,
                stop: Callable[[], bool] | None) -> int | None:
    """The smallest k in (lo, n] with ``ok(k)`` (monotone), by doubling from ``k`` then bisecting; None when not even
    ``ok(n)``. ``stop`` (checked before each bisection step) ends the bisection early with the smallest k found so
    far to hold."""
    hi = None
    while k <= n:
        if ok(k):
            hi = k
            break
        lo, k = k, k * 2
    if hi is None and n and ok(n):
        hi = n
    if hi is None:
        return None
    while hi - lo > 1 and not (stop and stop()):
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def quick_rows(units: int, row_seconds: float, rows: int, seconds: float, floor: int = MIN_SCREEN_ROWS,
               per_model: float = 0.0) -> int:
    """Rows on which mixed precision's doubling and bisection over ``units`` nodes (about 2·log2(units) + 2
    evaluations, each ``per_model`` seconds besides its rows) fit ``seconds`` at ``row_seconds`` a row: all
    ``rows`` when they fit there, else fewer, at least ``floor``."""
    evals = 2 * math.ceil(math.log2(max(units, 1) + 1)) + 2
    if row_seconds <= 0 or evals * (per_model + row_seconds * rows) <= seconds:
        return rows
    return max(min(rows, int((seconds - evals * per_model) / (evals * row_seconds))), min(floor, rows))


def mixed_precision_base(cands: Sequence[Candidate], src: Source, ev: Any, ref: Reference,
                         cfg: QuantizeConfig) -> Candidate:
    """The candidate mixed precision starts from: the best for the job (``optimize`` score, from a quick timing
    screen) among those whose metric drop is within the budget — only the agreement budget then needs float
    nodes — else the one with the best metric. Starting from the most accurate one instead can pick a format
    that is slower than FP32 (static INT8 of GEMM inputs only, on a CNN). Float rows have nothing to keep float."""
    cands = [c for c in cands if c.plan is not None and not isinstance(c.plan.scheme, Float)]  # INT8 ones only
    close = [c for c in cands if c.metrics["drop_pts"] <= cfg.budget + 1e-9]
    if not close:
        return max(cands, key=lambda c: c.metrics[ref.metric])
    if not src.target.timed or len(close) == 1:
        return max(close, key=lambda c: c.metrics.get(src.task.agreement_key, 0.0))
    quick_timing = dataclasses.replace(cfg.timing, rounds=1, latency_rows=min(50, cfg.timing.latency_rows),
                                       throughput_rows=min(128, cfg.timing.throughput_rows))
    quick = dataclasses.replace(cfg, timing=fit_timing(quick_timing, len(close) + 1, ref.row_seconds,
                                                       QUICK_TIMING_SHARE * cfg.search_seconds,
                                                       src.task.batch_for(cfg.timing.batch)))
    speeds = time_all([ref.path] + [c.path for c in close], src, ev, quick)
    refm = {**ref.metrics, **speeds[0]}
    scored = [(speed_score({**c.metrics, **t}, refm, cfg.optimize), c) for c, t in zip(close, speeds[1:], strict=True)]
    top = max(s for s, _ in scored)
    band = [c for s, c in scored if s >= top * (1 - SPEED_TIE)]
    return max(band, key=lambda c: c.metrics.get(src.task.agreement_key, 0.0))


# ---- step 6b: speed fallback ------------------------------------------------------------------------------
def speed_fallback(base: Candidate, src: Source, ev: Any, ref: Reference, ranges: Any, work: Path,
                   cfg: QuantizeConfig) -> tuple[Candidate | None, dict[str, Any]]:
    """``base`` with the nodes whose INT8 kernel profiles slower than their float kernel kept float (see
    ``quant/profile.py``), evaluated; None when no node qualifies or ``base`` is not a static Q/DQ plan (the
    dynamic graphs' node names do not survive ORT's rewrites). The final timing decides whether it is chosen."""

    info: dict[str, Any] = {"base": base.name, "nodes": []}
    if not isinstance(base.plan.scheme, StaticQDQ) or base.path is None:
        info["skipped"] = "only static Q/DQ plans are profiled"
        return None, info
    quantized = set(base.plan.units) - set(base.plan.float_nodes)
    feeds = src.task.feeds(ev, src.task.batch_for(1), min(32, cfg.timing.latency_rows))
    slow = slow_int8_nodes(base.path, src.sources[base.plan.scheme.graph], sorted(quantized), feeds, cfg.threads,
                           work / "profile")
    info["nodes"] = slow
    if not slow:
        return None, info
    keep = list(base.plan.float_nodes) + [str(r["node"]) for r in slow]
    fast = Candidate(f"{base.name}+fp32-speed[{len(slow)}]", base.plan.keep_float(keep))
    evaluate_candidate(fast, src, ev, ref, ranges, work, cfg.budget, cfg.threads, cfg.agreement_budget)
    info["candidate"] = fast.name
    return fast, info


# ---- step 7: timing and the choice ------------------------------------------------------------------------
def time_all(paths: Sequence[Path], src: Source, ev: Any, cfg: QuantizeConfig,
             precisions: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Speed of each model with the timing bench uses (same rows, batches and rounds)."""

    t = cfg.timing
    b1 = src.task.feeds(ev, 1, t.latency_rows)
    batch = held_batch(src.task.batch_for(t.batch), feed_bytes(b1[:1]), len(paths))
    big = src.task.feeds(ev, batch, t.throughput_rows)
    precs = precisions or ["fp32"] * len(paths)
    if feed_bytes(big) * len(paths) > HOLD_BYTES:  # even the smallest batch: one engine open at a time
        return measure_speed_opening([functools.partial(_opened, src, p, cfg.threads, prec)
                                      for p, prec in zip(paths, precs, strict=True)], b1, big, t.rounds, batch)
    with contextlib.ExitStack() as stack:
        engines = [stack.enter_context(_engine(src, p, cfg.threads, prec))
                   for p, prec in zip(paths, precs, strict=True)]
        return measure_speed([e.infer for e in engines], b1, big, t.rounds, batch)


# every engine of the final timing is held open side by side (interleaved rounds); each engine's buffers grow with
# its batch's inputs (a 640² detector at batch 32: 157 MB of input, and 18 GB peak for 12 engines held together),
# so the throughput batch halves until one batch's inputs times the number of models fit this, down to
# MIN_HELD_BATCH; past that, engines are opened one at a time, reopened each round (each open costs a compile)
HOLD_BYTES = 256 * 2**20
MIN_HELD_BATCH = 4


def held_batch(batch: int, row_bytes: int, models: int, limit: int = HOLD_BYTES) -> int:
    """The throughput batch for timing ``models`` models side by side: ``batch`` halved until a batch's inputs
    (``row_bytes`` a row) times ``models`` fit ``limit``, never below :data:`MIN_HELD_BATCH` (nor above ``batch``)."""
    while batch > MIN_HELD_BATCH and batch * row_bytes * models > limit:
        batch = max(batch // 2, MIN_HELD_BATCH)
    return batch


@contextlib.contextmanager
def _opened(src: Source, path: Path, threads: int | None, precision: str) -> Iterator[Callable[[Any], Any]]:
    with _engine(src, path, threads, precision) as eng:
        yield eng.infer


@dataclass
class Search:
    """What a target's search measured: the FP32 reference (and its name in the report), every candidate (timed
    when the target is), what the manifest adds about how (``extras``), and the ranges the chosen graph's files
    need (ONNX targets)."""

    ref: Reference
    cands: list[Candidate]
    ref_name: str
    extras: dict[str, Any] = field(default_factory=dict)
    ranges: dict[str, Any] = field(default_factory=dict)
    calib_info: dict[str, Any] = field(default_factory=dict)


def search(src: Source, calib_set: Any, ev: Any, cfg: QuantizeConfig, methods: Sequence[str], work: Path,
           progress: bool) -> Search:
    """Measure the reference, calibrate, evaluate the target's candidates, add mixed precision (no INT8 one met
    the budget) and the speed fallback (where the target profiles), and time them all together."""

    target = src.target
    lap = _laps()
    clock = Clock(cfg.search_seconds, TIMING_SHARE * cfg.search_seconds if target.timed else 0.0)
    ref = measure_reference(src, ev, cfg.threads)
    lap("reference")
    row_seconds = ref.row_seconds
    cpu = int8_report()
    schemes = target.candidates(methods, src.cnn, target.weight_bits(cpu), src.fused != src.plain)
    scopes = sorted({s.scope for s in schemes if isinstance(s, StaticQDQ)})
    ranges, calib_info = calibrate(src, calib_set, methods, scopes, target.free_zero_point, cfg.threads, progress)
    keep = list(calib_info.get("report", {}).get("unrelated_concats", {}))
    lap("calibration")
    schemes += [dataclasses.replace(s, rounding="learned") for s in schemes if isinstance(s, StaticQDQ)
                and "learned" in roundings(cfg, src)]
    rounding_info = learn_rounding(src, calib_set, schemes, work, cfg.threads, progress,
                                   min(ROUNDING_SECONDS, ROUNDING_SHARE * clock.avail()))
    lap("learned_rounding")
    if smoothing(cfg, src):  # SmoothQuant twins of the static candidates that round to nearest
        schemes += [dataclasses.replace(s, smooth=SMOOTH_AUTO) for s in schemes if isinstance(s, StaticQDQ)
                    and s.rounding == "nearest" and not s.bias_correct and not s.smooth]
    smooth_info = smooth_graphs(src, calib_set, schemes, ranges, work, target.free_zero_point, cfg.threads)
    lap("smoothing")
    cands = [Candidate(s.name, QuantPlan.uniform(s, units_of(src, s)).keep_float(
        keep if isinstance(s, StaticQDQ) else [])) for s in schemes]
    rows = screen_rows(len(cands), row_seconds, len(ev), SCREEN_SHARE * clock.avail(), per_model=ref.per_model)
    screened: dict[str, Any] = {}
    if rows < len(ev):
        cands, screened = screen(cands, src, ev, rows, ranges, work, cfg, progress)
        lap("screening")
    for c in tqdm(cands, desc="candidates", unit="model", disable=not progress or None, leave=False):
        if c.path is None:
            evaluate_candidate(c, src, ev, ref, ranges, work, cfg.budget, cfg.threads, cfg.agreement_budget)
        else:  # written by the first look
            measure_written(c, src, ev, ref, cfg.budget, cfg.threads, cfg.agreement_budget)
    lap("candidates")
    bias_info = {}
    if bias_corrections(cfg, src):  # twins of the best static candidates, their biases corrected
        twins = corrected_twins(cands, src.task.agreement_key)
        fit = int(BIAS_SHARE * clock.avail() // max(2 * len(ev) * row_seconds, 1e-9))  # a pass and an evaluation
        if fit < len(twins):
            log.info("bias correction: %d of %d twins fit the search time", fit, len(twins))
        twins, skipped = twins[:fit], [s.name for s in twins[fit:]]
        bias_info = correct_biases(src, calib_set, twins, work, cfg.threads, progress) if twins else {}
        bias_info.update({"skipped_for_time": skipped} if skipped else {})
        for s in twins:
            c = Candidate(s.name, QuantPlan.uniform(s, units_of(src, s)).keep_float(keep))
            evaluate_candidate(c, src, ev, ref, ranges, work, cfg.budget, cfg.threads, cfg.agreement_budget)
            cands.append(c)
    lap("bias_correction")
    mixed, mixed_info = None, None
    int8 = [c for c in cands if not isinstance(c.plan.scheme, Float)]  # a float row meets any budget: not a reason
    if int8 and not any(c.metrics["meets_budget"] for c in int8):
        base = mixed_precision_base(cands, src, ev, ref, cfg)
        mixed, mixed_info = mixed_precision(base, src, ev, ref, ranges, work, cfg.budget, cfg.threads, progress,
                                             agreement_budget=cfg.agreement_budget,
                                             sens_seconds=cfg.sensitivity_seconds
                                             or SENSITIVITY_SHARE * clock.avail(), clock=clock)
        if not mixed.metrics:  # its search measured it on every row already unless it kept every node float
            evaluate_candidate(mixed, src, ev, ref, ranges, work, cfg.budget, cfg.threads, cfg.agreement_budget)
        cands.append(mixed)
    lap("mixed_precision")
    speed_info = None
    if target.speed_fallback:
        fast, speed_info = speed_fallback(mixed or mixed_precision_base(cands, src, ev, ref, cfg), src, ev, ref,
                                          ranges, work, cfg)
        cands += [fast] if fast is not None else []
    lap("speed_fallback")
    # a target's own formats (openvino: NNCF's INT8), told which nodes nanoify's rules and search keep float
    kept = keep + [n for n in (mixed_info or {}).get("kept_fp32", []) if n not in keep]
    own, own_info = target.own_candidates(src, calib_set, cfg, work, kept, progress, clock)
    for c in own:
        measure_written(c, src, ev, ref, cfg.budget, cfg.threads, cfg.agreement_budget)
        cands.append(c)
    lap("own_formats")
    timing, untimed = None, []
    if target.timed:  # the reference and every candidate, timed together
        seconds, batch = max(clock.left(), clock.reserve), src.task.batch_for(cfg.timing.batch)
        timed = cands
        fitted = fit_timing(cfg.timing, len(timed) + 1, ref.row_seconds, seconds, batch)
        if timing_cost(fitted, len(timed) + 1, ref.row_seconds) > seconds:
            # even the fewest rows overrun: time only what the chooser can pick (within the budget; float rows)
            timed = [c for c in cands if c.metrics.get("meets_budget")]
            untimed = [c.name for c in cands if c not in timed]
            fitted = fit_timing(cfg.timing, len(timed) + 1, ref.row_seconds, seconds, batch)
        timing = dataclasses.asdict(fitted) if fitted != cfg.timing else None
        for m, t in zip([ref.metrics] + [c.metrics for c in timed],
                        time_all([ref.path] + [c.path for c in timed], src, ev,
                                 dataclasses.replace(cfg, timing=fitted), ["fp32"] + [c.precision for c in timed]),
                        strict=True):
            m.update(t)
    lap("timing")
    return Search(ref, cands, f"{target.engine_name} FP32 ({src.fused.name})",
                  {"int8_cpu": cpu, "step_seconds": lap.seconds, "mixed_precision": mixed_info,
                   "speed_fallback": speed_info,
                   "calibration": calib_info.get("info", {}), **({"own_formats": own_info} if own_info else {}),
                   **({"learned_rounding": rounding_info} if rounding_info else {}),
                   **({"smoothing": smooth_info} if smooth_info else {}),
                   **({"bias_correction": bias_info} if bias_info else {}),
                   **({"screening": screened} if screened else {}),
                   **({"timing_fitted": timing} if timing else {}),
                   **({"not_timed": untimed} if untimed else {})},
                  ranges, calib_info)


class _laps:
    """Seconds each step of the search took (steps that did nothing take about 0), for the manifest and report:
    where a long search spends its time."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.time()

    def __call__(self, step: str) -> float:
        now = time.time()
        took, self._t = now - self._t, now
        self.seconds[step] = round(took, 1)
        return took


def write_chosen(tmp: Path, chosen: Candidate, found: Search, src: Source, ev: Any) -> dict[str, Any]:
    """The chosen model, the files its task and target need beside it, the ranges; the manifest's extras."""
    assert chosen.path is not None
    shutil.copyfile(chosen.path, tmp / src.target.model_file)
    src.ref.kind.write_assets(src.ref, tmp)
    extra = src.target.write(tmp, chosen, found.ranges, src, ev)
    if found.ranges:
        write_json(tmp / "ranges.json", {m: {k: r.to_dict() for k, r in rs.items()} for m, rs in found.ranges.items()})
        write_json(tmp / "calibration.json", found.calib_info["report"])
    return extra
