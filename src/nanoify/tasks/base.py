"""The seam between model kinds and the rest of nanoify.

A :class:`Task` owns what differs between a text classifier, an image classifier and (next) a detector:
reading its data, preprocessing rows into feeds of any batch size, turning raw outputs into predictions,
scoring them, and comparing a candidate's predictions with the reference's. Quantization, engines, bench
and the pipeline see only feeds (``dict[str, ndarray]``), named outputs, predictions and metric dicts.

The budget of ``quantize`` and ``compress`` is in points of the task's primary metric (accuracy; agreement
with the FP32 model when the evaluation data has no labels; mAP for detectors) and is checked in one place,
:func:`check_budget`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..errors import DataError, ModelError

Feed = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]
Runner = Callable[[Feed], Outputs]


@dataclass
class EvalSet:
    """Rows of one split, ready for a task to batch: ``rows`` are task-specific (token ids, image refs);
    ``labels`` are gold class ids, or None when the data has none (then the FP32 model is the reference)."""

    rows: Any
    labels: np.ndarray | None
    where: str
    split: str
    provenance: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labelled(self) -> bool:
        return self.labels is not None


class Task:
    """Base class; subclasses implement data reading, batching, collection and scoring."""

    name = "task"
    default_calib_samples = 100
    default_batch = 32
    calib_batch = 32  # rows per calibration pass (memory: every intermediate of one batch is live at once)
    max_batch: int | None = None  # a model exported with a fixed batch (many ONNX files take exactly 1)
    agreement_key = "top1_agreement"  # the agreement a ``--agreement-budget`` counts in

    # -- data -------------------------------------------------------------------------------------------
    def eval_set(self, data: Any, split: str | None = None, limit: int | None = None) -> EvalSet:
        """Rows of the evaluation split (see :mod:`nanoify.data.splits`), the first ``limit`` when given."""
        raise NotImplementedError

    def calib_set(self, data: Any, n: int | None = None, seed: int = 0) -> EvalSet:
        """A seeded sample of ``n`` rows (task default when None) of the calibration split."""
        raise NotImplementedError

    def subset(self, es: EvalSet, idx: Sequence[int]) -> EvalSet:
        """The rows ``idx`` of an eval set (in that order)."""
        raise NotImplementedError

    # -- feeds --------------------------------------------------------------------------------------------
    def batches(self, es: EvalSet, batch_size: int, sort: bool = False) -> Iterator[tuple[np.ndarray, Feed]]:
        """(row indices, feed) per batch, lazily; ``sort`` lets a task group similar rows (inference only)."""
        raise NotImplementedError

    def batch_for(self, batch_size: int) -> int:
        """The batch size the model can take: ``batch_size``, or its fixed batch when smaller."""
        return min(batch_size, self.max_batch) if self.max_batch else batch_size

    timing_distinct_rows: int | None = None  # images: time on this many decoded rows, cycled (memory stays small)

    def feeds(self, es: EvalSet, batch_size: int, rows: int | None = None) -> list[Feed]:
        """Feeds of the first ``rows`` rows in data order (what timing uses: real traffic is not sorted). Where
        ``timing_distinct_rows`` is set, only that many rows are decoded and their batches repeat: 512 frames of
        a 640×640 detector would otherwise hold 2.5 GB and count in the measured memory."""
        n = min(len(es), rows or len(es))
        bs = self.batch_for(batch_size)
        distinct = n if self.timing_distinct_rows is None else min(n, max(self.timing_distinct_rows, bs))
        sub = self.subset(es, range(distinct))
        made = [f for _, f in self.batches(sub, bs, sort=False)]
        out: list[Feed] = []
        k = 0
        while sum(len(next(iter(f.values()))) for f in out) < n:
            out.append(made[k % len(made)])
            k += 1
        return out

    def input_ranges(self) -> dict[str, tuple[float, float]]:
        """Value range per input name for synthetic feeds (ints: [lo, hi); floats: uniform)."""
        return {}

    def synthetic_dims(self) -> dict[str, int]:
        """Sizes for symbolic axes of synthetic feeds (``batch`` is set by the caller)."""
        return {}

    # -- outputs ------------------------------------------------------------------------------------------
    def start(self, es: EvalSet | None, n: int) -> Any:
        """A fresh accumulator for the predictions of ``n`` rows."""
        raise NotImplementedError

    def add(self, state: Any, idx: np.ndarray, outputs: Outputs) -> None:
        """Fold one batch's raw outputs (rows ``idx``) into the accumulator; a detector decodes here, so raw maps
        never pile up."""
        raise NotImplementedError

    def finish(self, state: Any) -> Any:
        """The predictions, in row order."""
        raise NotImplementedError

    def collect(self, parts: Sequence[tuple[np.ndarray, Outputs]], n: int, es: EvalSet | None = None) -> Any:
        """Predictions for ``n`` rows from per-batch raw outputs (in any row order)."""
        state = self.start(es, n)
        for idx, out in parts:
            self.add(state, idx, out)
        return self.finish(state)

    def score(self, preds: Any, es: EvalSet) -> dict[str, Any]:
        """Metrics against the gold labels (``{"n": N}`` only when there are none)."""
        raise NotImplementedError

    def agreement(self, reference: Any, preds: Any) -> dict[str, Any]:
        """How closely ``preds`` follow the reference's (top-1 agreement, …)."""
        raise NotImplementedError

    def primary_metric(self, es: EvalSet) -> str:
        """The metric the budget is counted in for this data."""
        return "accuracy" if es.labelled else "top1_agreement"

    def reference_metrics(self, preds: Any, es: EvalSet) -> dict[str, Any]:
        """Metrics of the reference model itself: its score, and full agreement with itself."""
        return {**self.score(preds, es), **self.agreement(preds, preds)}

    def predict(self, run: Runner, es: EvalSet, batch_size: int | None = None, progress: bool = False,
                desc: str = "predict") -> Any:
        """Run every row through ``run`` and collect the predictions in row order."""

        bs = self.batch_for(batch_size or self.default_batch)
        total = (len(es) + bs - 1) // bs
        state = self.start(es, len(es))
        for idx, feed in tqdm(self.batches(es, bs, sort=True), total=total, desc=desc, unit="batch",
                              disable=not progress or None, leave=False):
            self.add(state, idx, run(feed))
        return self.finish(state)


def evaluate_predictions(task: Task, preds: Any, es: EvalSet, reference: Any | None = None) -> dict[str, Any]:
    """The task's score plus agreement with the reference predictions (when given)."""
    m = dict(task.score(preds, es))
    if reference is not None:
        m.update(task.agreement(reference, preds))
    return m


@dataclass(frozen=True)
class BudgetCheck:
    """A candidate's primary metric against the reference's, in points, and whether ``budget`` holds; with an
    agreement budget, also how far its predictions follow the reference's (1 − agreement, in points)."""

    metric: str
    reference: float
    value: float
    budget_pts: float
    agreement: float | None = None
    agreement_budget_pts: float | None = None

    @property
    def drop_pts(self) -> float:
        return (self.reference - self.value) * 100.0

    @property
    def disagreement_pts(self) -> float | None:
        return None if self.agreement is None else (1.0 - self.agreement) * 100.0

    @property
    def met(self) -> bool:
        ok = self.drop_pts <= self.budget_pts + 1e-9
        if self.agreement_budget_pts is not None and self.disagreement_pts is not None:
            ok = ok and self.disagreement_pts <= self.agreement_budget_pts + 1e-9
        return ok


def check_budget(reference: dict[str, Any], candidate: dict[str, Any], budget_pts: float, metric: str,
                 agreement_budget_pts: float | None = None, agreement_key: str = "top1_agreement") -> BudgetCheck:
    """The one place a budget is checked: the drop of ``metric`` (0..1 scale) in points against ``budget_pts``;
    with ``agreement_budget_pts``, also the share of predictions that differ from the reference's (in points:
    1.0 = at most 1% of predictions changed)."""
    if metric not in reference or metric not in candidate:
        raise ModelError(f"metric {metric!r} is missing from the measurements; cannot check the budget")
    agree = candidate.get(agreement_key) if agreement_budget_pts is not None else None
    if agreement_budget_pts is not None and agree is None:
        raise ModelError(f"{agreement_key} is missing from the measurements; cannot check the agreement budget")
    return BudgetCheck(metric, float(reference[metric]), float(candidate[metric]), float(budget_pts),
                       None if agree is None else float(agree), agreement_budget_pts)


def resolve_dims(shape: Sequence[Any], dims: dict[str, int], name: str) -> list[int]:
    """A concrete shape: fixed sizes kept, symbolic axes from ``dims``; an unknown symbolic axis is an error.
    Unnamed axes (OpenVINO IR keeps no axis names): the leading one is the batch; a later one takes the task's
    only other size when it has exactly one (text: the sequence)."""
    out = []
    others = [k for k in dims if k != "batch"]
    for i, d in enumerate(shape):
        if isinstance(d, int) and d > 0:
            out.append(d)
        elif isinstance(d, str) and d in dims:
            out.append(int(dims[d]))
        elif i == 0 and "batch" in dims:
            out.append(int(dims["batch"]))  # an unnamed leading axis is the batch
        elif d in ("?", None, -1) and i > 0 and len(others) == 1:
            out.append(int(dims[others[0]]))
        else:
            raise DataError(f"input {name!r} has a dynamic axis {d!r} (position {i}) with no size; give its size")
    return out


def synthetic_feed(spec: dict[str, tuple[str, list[Any]]], dims: dict[str, int],
                   ranges: dict[str, tuple[float, float]] | None = None, seed: int = 0) -> Feed:
    """Random inputs built from an engine's own ``input_spec()`` (as Polygraphy's data loader does): every input
    gets its dtype and shape, symbolic axes sized by ``dims``; integers drawn from [lo, hi) and floats
    uniformly from [lo, hi) per ``ranges`` (default [0, 1))."""
    rng = np.random.default_rng(seed)
    feed: Feed = {}
    for name, (dtype, shape) in spec.items():
        concrete = resolve_dims(shape, dims, name)
        lo, hi = (ranges or {}).get(name, (0.0, 1.0))
        dt = np.dtype(_numpy_dtype(dtype))
        if dt.kind in "iu":
            lo_i, hi_i = int(lo), max(int(hi), int(lo) + 1)
            feed[name] = rng.integers(lo_i, hi_i, size=concrete).astype(dt)
        elif dt.kind == "b":
            feed[name] = rng.random(size=concrete) < 0.5
        else:
            feed[name] = rng.uniform(lo, hi, size=concrete).astype(dt)
    return feed


def _numpy_dtype(dtype: str) -> str:
    """ONNX Runtime / torch dtype names → numpy's."""
    d = dtype.lower().replace("tensor(", "").rstrip(")").replace("torch.", "")
    return {"float": "float32", "double": "float64", "float16": "float16", "half": "float16", "bool": "bool",
            "bfloat16": "float32"}.get(d, d)
