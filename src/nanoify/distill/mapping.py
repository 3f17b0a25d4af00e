"""Teacher → student layer matches as plain data.

Layers are 1-based transformer layers; layer 0 is the embedding output (hidden feature only).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ConfigError

FEATURES = ("attention", "hidden", "embedding")


@dataclass(frozen=True)
class LayerMatch:
    """One intermediate loss term: student layer ↔ teacher layer for one feature."""

    student: int
    teacher: int
    feature: str = "hidden"
    loss: str = "mse"
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.feature not in FEATURES:
            raise ConfigError(f"layer match feature must be one of {FEATURES}, got {self.feature!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def layer_pairs(spec: str, n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """(student, teacher) 1-based layer pairs for ``uniform``, ``last`` or ``1:3,2:6,…``.

    ``uniform`` is TinyBERT's map: student i ← teacher i·k with k = n_t / n_s (so 4 of 12 gives 3, 6, 9, 12).
    ``last`` matches the student's layers to the teacher's top n_s layers.
    """
    if spec == "uniform":
        pairs = [(i, int(round(i * n_teacher / n_student))) for i in range(1, n_student + 1)]
    elif spec == "last":
        pairs = [(i, n_teacher - n_student + i) for i in range(1, n_student + 1)]
    else:
        if not re.fullmatch(r"\s*\d+:\d+\s*(,\s*\d+:\d+\s*)*", spec):
            raise ConfigError(f"--layer-map {spec!r}: use uniform, last, or student:teacher pairs like 1:3,2:6")
        pairs = [tuple(int(x) for x in p.split(":")) for p in spec.split(",")]  # type: ignore[misc]
    for s, t in pairs:
        if not (1 <= s <= n_student) or not (1 <= t <= n_teacher):
            raise ConfigError(f"--layer-map pair {s}:{t} is out of range: the student has layers 1..{n_student}, "
                              f"the teacher 1..{n_teacher}")
    if n_student > n_teacher and spec in ("uniform", "last"):
        raise ConfigError("the student has more layers than the teacher; give --layer-map explicitly")
    return pairs


def build_matches(spec: str, n_student: int, n_teacher: int, attention_weight: float,
                  hidden_weight: float, embedding_weight: float) -> list[LayerMatch]:
    """All intermediate matches with non-zero weight, in a stable order."""
    out: list[LayerMatch] = []
    if embedding_weight > 0:
        out.append(LayerMatch(0, 0, "embedding", "mse", embedding_weight))
    for s, t in layer_pairs(spec, n_student, n_teacher):
        if attention_weight > 0:
            out.append(LayerMatch(s, t, "attention", "mse", attention_weight))
        if hidden_weight > 0:
            out.append(LayerMatch(s, t, "hidden", "mse", hidden_weight))
    return out


def features(m: LayerMatch, student_out: Any, teacher_out: Any) -> tuple[Any, Any]:
    """The (student, teacher) tensors a match compares, from Hugging Face model outputs — the one place the layer
    numbering is turned into indices: layers are 1-based, ``hidden_states[0]`` is the embedding output (so layer k's
    output is ``hidden_states[k]``), and ``attentions[k - 1]`` belongs to layer k."""
    if m.feature == "embedding":
        return student_out.hidden_states[0], teacher_out.hidden_states[0]
    if m.feature == "attention":
        return student_out.attentions[m.student - 1], teacher_out.attentions[m.teacher - 1]
    return student_out.hidden_states[m.student], teacher_out.hidden_states[m.teacher]
