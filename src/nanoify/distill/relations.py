"""MiniLM-v2 self-attention relation distillation: the student's last layer learns the query–query, key–key and
value–value relations of a teacher layer (Wang et al., 2021, "MiniLMv2: Multi-Head Self-Attention Relation
Distillation for Compressing Pretrained Transformers").

A relation is softmax(A·Aᵀ/√d_r) over keys, for A the layer's queries (or keys, or values) split into R
*relation heads* of width d_r = D/R. Teacher and student are split into the same R heads whatever their widths and
attention-head counts, so no projection is learned; the loss is KL(teacher ‖ student) summed over keys, averaged
over real queries, relation heads and the three relations. Queries, keys and values are read by forward hooks on
the layer's projection modules (``query``/``key``/``value`` in BERT, ``q``/``k``/``v`` in MPNet), so any
attention implementation works.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.load import encoder_layers

PROJECTIONS = (("query", "key", "value"), ("q", "k", "v"))


def relation_heads(student_hidden: int, teacher_hidden: int, student_heads: int, asked: int = 0) -> int:
    """R: ``asked`` when given (it must divide both widths), else the student's head count when it divides the
    teacher's width too, else the largest common divisor of the two widths up to 64."""
    if asked:
        if student_hidden % asked or teacher_hidden % asked:
            raise ConfigError(f"--relation-heads {asked} must divide both hidden widths (student "
                              f"{student_hidden}, teacher {teacher_hidden})")
        return asked
    if teacher_hidden % student_heads == 0 and student_hidden % student_heads == 0:
        return student_heads
    g = math.gcd(student_hidden, teacher_hidden)
    return max(d for d in range(1, min(g, 64) + 1) if g % d == 0)


def relation_kl(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...], mask: torch.Tensor,
                heads: int) -> torch.Tensor:
    """Mean over the (Q, K, V) pairs of the relation KL (module docstring).

    Args:
        student, teacher: (queries, keys, values), each (B, L, D) with the side's own D.
        mask: (B, L), 1 for real tokens; padded keys get no probability and padded queries do not count.
        heads: R, dividing both widths.
    """
    m = mask.to(student[0].dtype)
    key_mask = (m[:, None, None, :] == 0)  # (B, 1, 1, L)
    queries = m.sum().clamp_min(1.0) * heads
    total = student[0].new_zeros(())
    for s, t in zip(student, teacher, strict=True):
        log_s, log_t = (_log_relation(x, heads, key_mask) for x in (s, t.detach()))
        kl = (log_t.exp() * (log_t - log_s)).masked_fill(key_mask, 0.0).sum(-1)  # (B, R, L)
        total = total + (kl * m[:, None, :]).sum() / queries
    return total / len(student)


def _log_relation(x: torch.Tensor, heads: int, key_mask: torch.Tensor) -> torch.Tensor:
    b, seq, d = x.shape
    a = x.view(b, seq, heads, d // heads).transpose(1, 2)  # (B, R, L, d_r)
    scores = a @ a.transpose(-1, -2) / math.sqrt(d // heads)
    return F.log_softmax(scores.float().masked_fill(key_mask, float("-inf")), dim=-1).to(x.dtype)


class QKVCapture:
    """Forward hooks keeping the last queries, keys and values computed by one layer (0-based index)."""

    def __init__(self, model: Any, layer: int) -> None:
        layers = encoder_layers(model)
        if not 0 <= layer < len(layers):
            raise ConfigError(f"--relation-layer {layer + 1} is out of range: the model has layers 1..{len(layers)}")
        mods = None
        for sub in layers[layer].modules():
            for names in PROJECTIONS:
                if all(isinstance(getattr(sub, n, None), torch.nn.Module) for n in names):
                    mods = [getattr(sub, n) for n in names]
                    break
            if mods:
                break
        if mods is None:
            raise ConfigError(f"{type(model).__name__} layer {layer + 1} has no query/key/value (or q/k/v) "
                              "projections: relation distillation needs a BERT- or MPNet-like attention")
        self.out: list[torch.Tensor | None] = [None, None, None]
        self.handles = [mod.register_forward_hook(self._hook(i)) for i, mod in enumerate(mods)]

    def _hook(self, i: int) -> Any:
        def keep(_mod: Any, _inp: Any, out: torch.Tensor) -> None:
            self.out[i] = out
        return keep

    def take(self) -> tuple[torch.Tensor, ...]:
        if any(o is None for o in self.out):
            raise RuntimeError("no forward pass went through the captured layer")
        q, k, v = self.out
        self.out = [None, None, None]
        return q, k, v  # type: ignore[return-value]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
