"""Distillation losses as pure functions of tensors. Masks are honoured: padding never counts.

Shapes: B batch, L sequence, C classes, H heads, D hidden width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft-target loss: KL(softmax(t/T) ‖ softmax(s/T)) · T², averaged over the batch.

    Args:
        student_logits, teacher_logits: (B, C).
        temperature: T > 0; higher T spreads the teacher's probability mass over more classes.

    The T² factor (Hinton et al., 2015) keeps the gradient scale independent of T: the gradient of the
    softened KL w.r.t. the logits shrinks as 1/T², so without it raising T would silently down-weight the
    soft term against the hard-label term.
    """
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    return kl.mean() * t * t


def hard_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with the gold labels. logits (B, C), labels (B,) int64; a label < 0 (an augmented row,
    whose gold label is unknown) does not count, and a batch of such rows contributes 0."""
    known = labels >= 0
    if bool(known.all()):
        return F.cross_entropy(logits, labels)
    if not bool(known.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[known], labels[known])


def attention_mse(student_att: torch.Tensor, teacher_att: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Squared error between attention maps, summed over keys and averaged over real queries and heads.

    Args:
        student_att: (B, Hs, L, L) attention probabilities; teacher_att: (B, Ht, L, L).
        mask: (B, L) 1 for real tokens, 0 for padding; padded queries and keys never count.

    Each attention row is a distribution over keys with entries near 1/L, so a mean over all L×L entries
    shrinks like 1/L² and its gradient vanishes next to the other terms; summing over keys gives the
    squared distance between two distributions, whose scale does not depend on the sequence length.
    (TinyBERT matches pre-softmax scores; Hugging Face models expose probabilities, so we match those.)
    When head counts differ, each side is averaged over its heads first (one map per layer), so a student
    with fewer heads learns the teacher's mean attention pattern.
    """
    if student_att.shape[1] != teacher_att.shape[1]:
        student_att = student_att.mean(1, keepdim=True)
        teacher_att = teacher_att.mean(1, keepdim=True)
    m = mask.to(student_att.dtype)
    pair = (m[:, :, None] * m[:, None, :])[:, None]  # (B, 1, L, L)
    sq = (student_att - teacher_att) ** 2 * pair
    queries = m.sum() * student_att.shape[1]
    return sq.sum() / queries.clamp_min(1.0)


def hidden_mse(student_h: torch.Tensor, teacher_h: torch.Tensor, mask: torch.Tensor,
               proj: torch.nn.Module | None = None) -> torch.Tensor:
    """MSE between hidden states at real tokens, through a learned projection when widths differ.

    Args:
        student_h: (B, L, Ds); teacher_h: (B, L, Dt); mask: (B, L).
        proj: maps Ds → Dt (required when Ds ≠ Dt).
    """
    if proj is not None:
        student_h = proj(student_h)
    if student_h.shape[-1] != teacher_h.shape[-1]:
        raise ValueError(f"hidden widths differ ({student_h.shape[-1]} vs {teacher_h.shape[-1]}): pass proj")
    m = mask.to(student_h.dtype)[..., None]
    sq = (student_h - teacher_h) ** 2 * m
    return sq.sum() / (m.sum() * student_h.shape[-1]).clamp_min(1.0)


def embedding_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor, mask: torch.Tensor,
                   proj: torch.nn.Module | None = None) -> torch.Tensor:
    """Embedding-layer loss (TinyBERT): hidden_mse on the embedding outputs (hidden state 0)."""
    return hidden_mse(student_emb, teacher_emb, mask, proj)


LOSSES = {
    "kd_kl": kd_kl,
    "hard_ce": hard_ce,
    "attention_mse": attention_mse,
    "hidden_mse": hidden_mse,
    "embedding_loss": embedding_loss,
}
