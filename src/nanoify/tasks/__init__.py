"""Tasks: what differs between model kinds (see :mod:`nanoify.tasks.base` for the :class:`Task` seam and
:mod:`nanoify.tasks.kinds` for the kinds). ``make_task(ref)`` builds the task a model reference names."""

from __future__ import annotations

from .base import BudgetCheck, EvalSet, Feed, Outputs, Task, check_budget, evaluate_predictions, synthetic_feed
from .kinds import ModelRef, TaskKind
from .registry import TASK_KINDS, register_task, registered_kinds, task_kind, task_names, unregister_task


def make_task(ref: ModelRef) -> Task:
    """The task object for a :class:`~nanoify.tasks.kinds.ModelRef`, built by its kind."""
    task = ref.kind.make(ref)
    task.max_batch = ref.info.get("max_batch")
    return task


__all__ = ["TASK_KINDS", "BudgetCheck", "EvalSet", "Feed", "ModelRef", "Outputs", "Task", "TaskKind", "check_budget",
           "evaluate_predictions", "make_task", "register_task", "registered_kinds", "synthetic_feed", "task_kind",
           "task_names", "unregister_task"]
