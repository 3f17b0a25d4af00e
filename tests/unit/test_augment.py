"""TinyBERT-style augmentation from the teacher's input embeddings; hard-label CE skips the variants."""

from __future__ import annotations

import numpy as np
import torch
from transformers import BertTokenizerFast

from nanoify.distill.augment import IGNORE, augment, augment_ids, candidate_ids, embedding_neighbours
from nanoify.distill.losses import hard_ce


def _tok(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "great", "fine", "bad", "awful", "poor", "play",
             "##ing", "!", "the"]
    v = {w: i for i, w in enumerate(vocab)}
    return BertTokenizerFast(vocab=v, do_lower_case=True), v


def test_neighbours_are_the_nearest_words_by_cosine(tmp_path):
    tok, v = _tok(tmp_path)
    cand, pieces = candidate_ids(tok)
    assert v["##ing"] in pieces and v["!"] not in cand and v["[CLS]"] not in cand and v["good"] in cand
    emb = torch.zeros(len(v), 4)
    for w, vec in {"good": [1, 0, 0, 0], "great": [0.9, 0.1, 0, 0], "fine": [0.7, 0.3, 0, 0],
                   "bad": [-1, 0, 0, 0], "awful": [-0.9, 0, 0.1, 0], "poor": [-0.7, 0, 0.3, 0],
                   "play": [0, 0, 0, 1], "the": [0, 1, 0, 0]}.items():
        emb[v[w]] = torch.tensor(vec)
    nb = embedding_neighbours(emb, [v["good"], v["bad"], v["!"]], cand, k=2)
    assert list(nb) == sorted([v["good"], v["bad"]])  # "!" is not a word: never replaced
    assert nb[v["good"]].tolist() == [v["great"], v["fine"]] and nb[v["bad"]].tolist() == [v["awful"], v["poor"]]


def test_variants_replace_only_whole_words_seeded(tmp_path):
    tok, v = _tok(tmp_path)
    rows = [[v["[CLS]"], v["good"], v["play"], v["##ing"], v["!"], v["[SEP]"]]] * 200
    nb = {v["good"]: np.array([v["great"]]), v["play"]: np.array([v["the"]])}
    out = augment_ids(rows, nb, {v["##ing"]}, n=1, p=0.4, seed=0)
    assert out == augment_ids(rows, nb, {v["##ing"]}, n=1, p=0.4, seed=0)  # a pure function of the seed
    col = np.array(out)
    assert (col[:, [0, 2, 3, 4, 5]] == np.array(rows)[:, [0, 2, 3, 4, 5]]).all()  # "play" has a ##continuation
    share = (col[:, 1] == v["great"]).mean()
    assert 0.3 < share < 0.5  # replaced with probability 0.4
    extra, info = augment(rows[:3], tok, torch.randn(len(v), 8), n=2, p=1.0, k=3, seed=1)
    assert len(extra) == 6 and info["variant_rows"] == 6 and info["variants_changed"] == 6


def test_hard_ce_skips_rows_without_a_gold_label():
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    y = torch.tensor([0, IGNORE, 1])
    assert torch.allclose(hard_ce(logits, y), hard_ce(logits[[0, 2]], y[[0, 2]]))
    assert hard_ce(logits, torch.full((3,), IGNORE)).item() == 0.0
