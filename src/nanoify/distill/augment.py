"""TinyBERT-style task data augmentation: variants of each training sentence with words replaced by neighbours.

TinyBERT (Jiao et al., 2020) replaces each word with probability 0.4 by one of its K nearest candidates, taken
from a masked language model for single-piece words and from GloVe neighbours otherwise, and lets the teacher
label the variants. No masked-LM head or GloVe ships with the offline encoders, so every candidate here comes
from the *teacher's own input embeddings*: the K tokens with the highest cosine similarity to the word's token.
The replacement works on token ids (the teacher's tokenizer; student and teacher must share it), only on whole
single-piece words (not special tokens, not word pieces, not a piece followed by a continuation), and is a pure
function of the seed. Variants get soft targets from the teacher only: their gold label is unknown.

With a masked language model that shares the teacher's vocabulary (``--augment-mlm``, e.g. bert-base-uncased
for a MiniLM teacher), a chosen word's candidates are, as in TinyBERT, the masked LM's K most likely words at
that position with the word masked (one masked copy of the sentence per replaced position, batched); the
random choices of which words to replace are the same as with embedding neighbours.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from ..data.text import collate

IGNORE = -100  # the gold label of a variant: cross-entropy skips it


def candidate_ids(tokenizer: Any) -> tuple[np.ndarray, set[int]]:
    """(token ids that may replace or be replaced: alphabetic single-piece words, continuation-piece ids)."""
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_ids)
    pieces = {i for t, i in vocab.items() if t.startswith("##")}
    words = sorted(i for t, i in vocab.items() if i not in special and i not in pieces and t.isalpha())
    return np.asarray(words, dtype=np.int64), pieces


def embedding_neighbours(emb: torch.Tensor, sources: Iterable[int], candidates: np.ndarray, k: int,
                         chunk: int = 1024) -> dict[int, np.ndarray]:
    """The ``k`` candidates nearest (cosine) to each source token's embedding, itself excluded."""
    e = torch.nn.functional.normalize(emb.detach().float(), dim=-1)
    cand = torch.from_numpy(candidates)
    ce = e[cand]  # (C, D)
    src = sorted(set(int(s) for s in sources) & set(candidates.tolist()))
    out: dict[int, np.ndarray] = {}
    for i in range(0, len(src), chunk):
        ids = torch.tensor(src[i:i + chunk])
        sim = e[ids] @ ce.T  # (n, C)
        sim[ids[:, None] == cand[None, :]] = -2.0  # never itself
        top = sim.topk(min(k, len(candidates) - 1), dim=-1).indices
        for s, row in zip(ids.tolist(), cand[top].numpy(), strict=True):
            out[s] = row
    return out


def replacement_plan(rows: Sequence[Sequence[int]], replaceable: set[int], pieces: set[int], n: int, p: float,
                     seed: int, choices: int) -> list[list[tuple[int, int]]]:
    """For variant j of row r (list index j·len(rows) + r): the positions to replace, each with the index of the
    candidate to take (of ``choices``). Whole single-piece words in ``replaceable`` are replaced with
    probability ``p``; the draws depend only on the seed, not on where the candidates come from."""
    plan = []
    for j in range(n):
        for r, row in enumerate(rows):
            rng = np.random.default_rng([seed, j, r])
            chosen = []
            for i, tok in enumerate(row):
                if int(tok) not in replaceable or (i + 1 < len(row) and int(row[i + 1]) in pieces):
                    continue
                if rng.random() < p:
                    chosen.append((i, int(rng.integers(choices))))
            plan.append(chosen)
    return plan


def augment_ids(rows: Sequence[Sequence[int]], neighbours: dict[int, np.ndarray], pieces: set[int], n: int,
                p: float, seed: int) -> list[list[int]]:
    """``n`` variants of every row (variant j of every row, then j + 1): each replaceable token replaced with
    probability ``p`` by a uniformly drawn neighbour."""
    choices = min((len(v) for v in neighbours.values()), default=1)
    plan = replacement_plan(rows, set(neighbours), pieces, n, p, seed, choices)
    return _apply(rows, plan, lambda r, i, tok: neighbours[tok])


def _apply(rows: Sequence[Sequence[int]], plan: list[list[tuple[int, int]]], cands: Any) -> list[list[int]]:
    out = []
    for k, chosen in enumerate(plan):
        r = k % len(rows)
        new = [int(t) for t in rows[r]]
        for i, pick in chosen:
            new[i] = int(cands(r, i, new[i])[pick])
        out.append(new)
    return out


def mlm_candidates(rows: Sequence[Sequence[int]], positions: Iterable[tuple[int, int]], mlm: Any, mask_id: int,
                   candidates: np.ndarray, k: int, batch: int = 64) -> dict[tuple[int, int], np.ndarray]:
    """For each (row, position): the ``k`` words the masked LM finds most likely there with that word masked,
    among ``candidates`` (whole alphabetic words), the original word excluded."""

    allowed = torch.full((mlm.config.vocab_size,), float("-inf"))
    allowed[torch.from_numpy(candidates)] = 0.0
    pos = sorted(set(positions))
    out: dict[tuple[int, int], np.ndarray] = {}
    mlm.eval()
    with torch.inference_mode():
        for s in range(0, len(pos), batch):
            chunk = pos[s:s + batch]
            ids = []
            for r, i in chunk:
                row = [int(t) for t in rows[r]]
                row[i] = mask_id
                ids.append(row)
            feed = {k_: torch.from_numpy(v) for k_, v in collate(ids, 0).items()}
            logits = mlm(input_ids=feed["input_ids"], attention_mask=feed["attention_mask"]).logits
            at = torch.stack([logits[b, i] for b, (_, i) in enumerate(chunk)]) + allowed
            for b, (r, i) in enumerate(chunk):
                at[b, int(rows[r][i])] = float("-inf")
            top = at.topk(k, dim=-1).indices.numpy()
            for b, key in enumerate(chunk):
                out[key] = top[b]
    return out


def augment(rows: Sequence[Sequence[int]], tokenizer: Any, embeddings: torch.Tensor, n: int, p: float = 0.4,
            k: int = 15, seed: int = 0, mlm: Any = None,
            mlm_name: str | None = None) -> tuple[list[list[int]], dict[str, Any]]:
    """The variants of ``rows`` and what was done (for the manifest); candidates from ``mlm`` (a masked LM on
    the tokenizer's vocabulary) when given, else from the teacher's input ``embeddings``."""
    cand, pieces = candidate_ids(tokenizer)
    used = {int(t) for row in rows for t in row}
    if mlm is not None:
        plan = replacement_plan(rows, set(cand.tolist()), pieces, n, p, seed, k)
        wanted = {(j % len(rows), i) for j, chosen in enumerate(plan) for i, _ in chosen}
        at = mlm_candidates(rows, wanted, mlm, int(tokenizer.mask_token_id), cand, k)
        extra = _apply(rows, plan, lambda r, i, tok: at[(r, i)])
        nb: dict[Any, Any] = at
        source = f"masked LM {mlm_name or type(mlm).__name__} ({len(at)} masked positions scored)"
    else:
        nb = embedding_neighbours(embeddings, used, cand, k)
        extra = augment_ids(rows, nb, pieces, n, p, seed)
        source = "teacher input embeddings"
    changed = sum(a != b for j in range(n) for a, b in zip(rows, extra[j * len(rows):(j + 1) * len(rows)],
                                                               strict=True))
    return extra, {"variants_per_row": n, "replace_prob": p, "neighbours": k, "source": source,
                   "rows": len(rows), "variant_rows": len(extra), "variants_changed": int(changed),
                   "words_with_neighbours" if mlm is None else "positions_with_candidates": len(nb)}
