"""The task kinds nanoify knows, by name: the three built in, and any a user registers with
:func:`register_task` (a kind registered later is asked first when a model's task is told from its graph)."""

from __future__ import annotations

from typing import TypeVar

from ..errors import ModelError
from .detect import DetectionKind
from .image import ImageKind
from .kinds import TaskKind
from .text import TextKind

TASK_KINDS: dict[str, TaskKind] = {k.name: k for k in (TextKind(), ImageKind(), DetectionKind())}
_BUILT_IN = dict(TASK_KINDS)

K = TypeVar("K", bound=TaskKind)


def register_task(kind: type[K] | K) -> type[K] | K:
    """Register a task kind (a :class:`TaskKind` instance, or a subclass — usable as a class decorator); a kind of
    the same name is replaced."""
    obj = kind() if isinstance(kind, type) else kind
    if not obj.name:
        raise ModelError(f"{type(obj).__name__} has no name: set the class attribute name")
    TASK_KINDS[obj.name] = obj
    return kind


def unregister_task(name: str) -> None:
    """Forget a registered kind (tests that register one put the registry back)."""
    TASK_KINDS.pop(name, None)


def task_kind(name: str) -> TaskKind:
    """The kind registered as ``name``, or a one-line error naming the known ones."""
    if name not in TASK_KINDS:
        raise ModelError(f"unknown task {name!r}; choose {' or '.join(task_names())}")
    return TASK_KINDS[name]


def task_names() -> tuple[str, ...]:
    return tuple(TASK_KINDS)


def recognition_order() -> list[TaskKind]:
    """The kinds in the order they are asked whether a graph is theirs: the latest registered first."""
    return list(reversed(TASK_KINDS.values()))


def registered_kinds() -> list[TaskKind]:
    """The kinds registered at run time (new, or replacing a built-in one): what a fresh process (bench measures
    each model in one) must register again."""
    return [k for name, k in TASK_KINDS.items() if _BUILT_IN.get(name) is not k]
