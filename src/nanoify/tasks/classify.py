"""What every classifier task shares: predictions are logits (N, C); scores are accuracy (and macro-F1 beyond
two classes); agreement is top-1 agreement, changed predictions, logit cosine and SQNR against a reference."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ModelError
from .base import EvalSet, Outputs, Task


def logits_of(out: Outputs) -> np.ndarray:
    """The classifier's logits among named outputs: ``logits``, else the only output, else the first 2-D one."""
    if "logits" in out:
        return np.asarray(out["logits"])
    if len(out) == 1:
        return np.asarray(next(iter(out.values())))
    for v in out.values():
        if np.ndim(v) == 2:
            return np.asarray(v)
    raise ModelError(f"cannot tell which output holds the class scores among {', '.join(out)}; name it 'logits'")


def macro_f1(pred: np.ndarray, gold: np.ndarray, n_classes: int) -> float:
    """Unweighted mean of per-class F1 over classes that occur in gold or predictions."""
    f1s = []
    for c in range(n_classes):
        tp = int(((pred == c) & (gold == c)).sum())
        fp = int(((pred == c) & (gold != c)).sum())
        fn = int(((pred != c) & (gold == c)).sum())
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else 0.0


def classification_metrics(pred: np.ndarray, gold: np.ndarray, n_classes: int) -> dict[str, Any]:
    """``accuracy`` and ``n``; ``macro_f1`` too when there are more than two classes."""
    out: dict[str, Any] = {"accuracy": float((pred == gold).mean()), "n": int(len(gold))}
    if n_classes > 2:
        out["macro_f1"] = macro_f1(pred, gold, n_classes)
    return out


def agreement_table(student_pred: np.ndarray, teacher_pred: np.ndarray, gold: np.ndarray) -> dict[str, Any]:
    """The 2×2 table student right/wrong × teacher right/wrong, plus copied mistakes.

    ``copied_mistakes`` counts rows where both are wrong with the *same* wrong label (the student
    learned the teacher's error); ``student_only_wrong`` shows what the student failed to learn
    (underfitting); ``student_only_right`` shows where it beat its teacher.
    """
    s_ok, t_ok = student_pred == gold, teacher_pred == gold
    n = len(gold)
    return {
        "n": int(n),
        "both_right": int((s_ok & t_ok).sum()),
        "student_only_right": int((s_ok & ~t_ok).sum()),
        "teacher_only_right": int((~s_ok & t_ok).sum()),
        "both_wrong": int((~s_ok & ~t_ok).sum()),
        "copied_mistakes": int((~s_ok & ~t_ok & (student_pred == teacher_pred)).sum()),
        "prediction_agreement": float((student_pred == teacher_pred).mean()) if n else 0.0,
    }


def format_agreement(a: dict[str, Any]) -> str:
    """The agreement table as aligned text."""
    rows = [
        ("", "teacher right", "teacher wrong"),
        ("student right", str(a["both_right"]), str(a["student_only_right"])),
        ("student wrong", str(a["teacher_only_right"]), f"{a['both_wrong']} ({a['copied_mistakes']} copied)"),
    ]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    lines.append(f"student/teacher prediction agreement {a['prediction_agreement']:.4f} on {a['n']} rows")
    return "\n".join(lines)


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: 10·log10(Σref² / Σ(ref − test)²)."""
    ref = np.asarray(reference, dtype=np.float64)
    noise = float(((ref - np.asarray(test, dtype=np.float64)) ** 2).sum())
    return float("inf") if noise == 0 else 10.0 * float(np.log10((ref**2).sum() / noise))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean row-wise cosine similarity of two (N, C) arrays."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return float(np.mean(num / np.maximum(den, 1e-12)))


class ClassificationTask(Task):
    """Shared collection and scoring of class logits; subclasses read data and build feeds."""

    labels: list[str] | None = None

    @property
    def n_classes(self) -> int | None:
        return len(self.labels) if self.labels else None

    def start(self, es: EvalSet | None, n: int) -> dict[str, Any]:
        return {"n": n, "logits": None}

    def add(self, state: dict[str, Any], idx: np.ndarray, outputs: Outputs) -> None:
        logits = np.asarray(logits_of(outputs), dtype=np.float32)
        if logits.ndim != 2:
            raise ModelError(f"a classifier's output should be (batch, classes); got shape {logits.shape}")
        if state["logits"] is None:
            state["logits"] = np.zeros((state["n"], logits.shape[1]), dtype=np.float32)
        state["logits"][idx] = logits

    def finish(self, state: dict[str, Any]) -> np.ndarray:
        if state["logits"] is None:
            raise ModelError("no predictions: the evaluation data is empty")
        return state["logits"]

    def score(self, preds: np.ndarray, es: EvalSet) -> dict[str, Any]:
        if es.labels is None:
            return {"n": int(len(preds))}
        n_classes = self.n_classes or int(preds.shape[1])
        return classification_metrics(preds.argmax(-1), es.labels, n_classes)

    def agreement(self, reference: np.ndarray, preds: np.ndarray) -> dict[str, Any]:
        same = preds.argmax(-1) == reference.argmax(-1)
        return {"top1_agreement": float(same.mean()), "predictions_changed": int((~same).sum()),
                "logit_cosine": cosine(reference, preds), "sqnr_db": sqnr_db(reference, preds)}
