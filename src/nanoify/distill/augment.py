"""TinyBERT-style task data augmentation: variants of each training sentence with words replaced by neighbours.

TinyBERT (Jiao et al., 2020) replaces each word with probability 0.4 by one of its K nearest candidates, taken
from a masked language model for single-piece words and from GloVe neighbours otherwise, and lets the teacher
label the variants. No masked-LM head or GloVe ships with the offline encoders, so every candidate here comes
from the *teacher's own input embeddings*: the K tokens with the highest cosine similarity to the word's token.
The replacement works on token ids (the teacher's tokenizer; student and teacher must share it), only on whole
single-piece words (not special tokens, not word pieces, not a piece followed by a continuation), and is a pure
function of the seed. Variants get soft targets from the teacher only: their gold label is unknown.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

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


def augment_ids(rows: Sequence[Sequence[int]], neighbours: dict[int, np.ndarray], pieces: set[int], n: int,
                p: float, seed: int) -> list[list[int]]:
    """``n`` variants of every row (variant j of every row, then j + 1): each replaceable token replaced with
    probability ``p`` by a uniformly drawn neighbour."""
    out: list[list[int]] = []
    for j in range(n):
        for r, row in enumerate(rows):
            rng = np.random.default_rng([seed, j, r])
            new = list(row)
            for i, tok in enumerate(row):
                nb = neighbours.get(int(tok))
                if nb is None or (i + 1 < len(row) and int(row[i + 1]) in pieces):
                    continue
                if rng.random() < p:
                    new[i] = int(nb[rng.integers(len(nb))])
            out.append(new)
    return out


def augment(rows: Sequence[Sequence[int]], tokenizer: Any, embeddings: torch.Tensor, n: int, p: float = 0.4,
            k: int = 15, seed: int = 0) -> tuple[list[list[int]], dict[str, Any]]:
    """The variants of ``rows`` and what was done (for the manifest)."""
    cand, pieces = candidate_ids(tokenizer)
    used = {int(t) for row in rows for t in row}
    nb = embedding_neighbours(embeddings, used, cand, k)
    extra = augment_ids(rows, nb, pieces, n, p, seed)
    changed = sum(a != b for j in range(n) for a, b in zip(rows, extra[j * len(rows):(j + 1) * len(rows)],
                                                               strict=True))
    return extra, {"variants_per_row": n, "replace_prob": p, "neighbours": k, "source": "teacher input embeddings",
                   "rows": len(rows), "variant_rows": len(extra), "variants_changed": int(changed),
                   "words_with_neighbours": len(nb)}
