"""Tasks: what differs between model kinds (see :mod:`nanoify.tasks.base`). ``make_task(ref)`` builds the task a
model reference names, from the preprocessing data the reference carries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.images import Preprocess
from ..errors import ModelError
from .base import BudgetCheck, EvalSet, Feed, Outputs, Task, check_budget, evaluate_predictions, synthetic_feed
from .detect import Detection
from .image import ImageClassification
from .text import TextClassification


def make_task(ref: Any) -> Task:
    """The task object for a :class:`nanoify.tasks.resolve.ModelRef`."""
    task = _make(ref)
    task.max_batch = ref.info.get("max_batch")
    return task


def _make(ref: Any) -> Task:
    p = ref.preprocess
    if ref.task == "text-classification":
        return TextClassification(Path(p["tokenizer"]), ref.labels or [], p.get("max_sequence") or 512,
                                  p.get("inputs") or ("input_ids", "attention_mask", "token_type_ids"))
    if ref.task in ("image-classification", "detection"):
        keys = set(Preprocess.__dataclass_fields__)
        pre = Preprocess.from_dict({k: v for k, v in p.items() if k in keys}, f"preprocessing of {ref.name}")
        if ref.task == "detection":
            extra = {k: p[k] for k in ("conf", "iou", "max_det", "stride") if k in p}
            return Detection(pre, ref.labels, p.get("input", "input"), p["decoder"],
                             dynamic_hw=bool(p.get("dynamic_hw")), **extra)

        return ImageClassification(pre, ref.labels, p.get("input", "input"))

    raise ModelError(f"unknown task {ref.task!r}")


__all__ = ["BudgetCheck", "EvalSet", "Feed", "Outputs", "Task", "check_budget", "evaluate_predictions", "make_task",
           "synthetic_feed"]
