"""Accuracy, macro-F1 and the student/teacher agreement table."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..data.text import collate, inference_batches

log = logging.getLogger(__name__)


def predict_with(run: Callable[[dict[str, np.ndarray]], np.ndarray], ids: Sequence[Sequence[int]], pad_id: int,
                 batch_size: int = 64, progress: bool = False, desc: str = "predict") -> np.ndarray:
    """Logits (N, C) from ``run(feed) -> logits`` over length-sorted batches, in the original row order."""
    from tqdm.auto import tqdm

    out: np.ndarray | None = None
    batches = list(inference_batches([len(x) for x in ids], batch_size))
    for rows in tqdm(batches, desc=desc, unit="batch", disable=not progress or None, leave=False):
        logits = np.asarray(run(collate([ids[i] for i in rows], pad_id)), dtype=np.float32)
        if out is None:
            out = np.zeros((len(ids), logits.shape[1]), dtype=np.float32)
        out[rows] = logits
    assert out is not None
    return out


def predict_logits(model: Any, ids: Sequence[Sequence[int]], pad_id: int, batch_size: int = 64,
                   progress: bool = False, desc: str = "predict") -> np.ndarray:
    """Logits (N, C) of a torch classifier, batched by length, in the original row order."""
    import torch

    model.eval()

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.float().numpy()

    return predict_with(run, ids, pad_id, batch_size, progress, desc)


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


def classification_metrics(pred: np.ndarray, gold: np.ndarray, n_classes: int) -> dict[str, float]:
    """``accuracy`` and ``n``; ``macro_f1`` too when there are more than two classes."""
    out: dict[str, Any] = {"accuracy": float((pred == gold).mean()), "n": int(len(gold))}
    if n_classes > 2:
        out["macro_f1"] = macro_f1(pred, gold, n_classes)
    return out


def agreement(student_pred: np.ndarray, teacher_pred: np.ndarray, gold: np.ndarray) -> dict[str, Any]:
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
