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


def test_each_variant_of_a_sentence_draws_its_own_replacements(tmp_path):
    """n variants of one sentence are n different sentences (each variant its own seeded draws), and so are the
    variants of identical rows; the draws are still a pure function of the seed."""
    tok, v = _tok(tmp_path)
    words = ["good", "bad", "play", "the", "fine", "poor", "good", "bad", "the", "play"]
    rows = [[v["[CLS]"]] + [v[w] for w in words] + [v["[SEP]"]]] * 2
    nb = {v[w]: np.array([v["great"], v["awful"], v["fine"], v["poor"]]) for w in ("good", "bad", "play", "the",
                                                                                 "fine", "poor")}
    out = augment_ids(rows, nb, set(), n=4, p=0.5, seed=3)
    assert len(out) == 8 and out == augment_ids(rows, nb, set(), n=4, p=0.5, seed=3)
    assert len({tuple(x) for x in out}) == 8  # variant j of row r is row-major: j·len(rows) + r
    assert out != augment_ids(rows, nb, set(), n=4, p=0.5, seed=4)


def test_hard_ce_skips_rows_without_a_gold_label():
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    y = torch.tensor([0, IGNORE, 1])
    assert torch.allclose(hard_ce(logits, y), hard_ce(logits[[0, 2]], y[[0, 2]]))
    assert hard_ce(logits, torch.full((3,), IGNORE)).item() == 0.0


def _mlm(v, favourite):
    """A tiny BERT masked LM whose output bias makes ``favourite`` words the most likely anywhere."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    m = BertForMaskedLM(BertConfig(vocab_size=len(v), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=32)).eval()
    with torch.no_grad():
        m.cls.predictions.decoder.weight.zero_()
        bias = torch.zeros(len(v))
        for rank, w in enumerate(favourite):
            bias[v[w]] = 10.0 - rank
        m.cls.predictions.bias.copy_(bias)
        m.cls.predictions.decoder.bias.copy_(bias)
    return m


def test_masked_lm_candidates_are_its_top_words_at_the_masked_position(tmp_path):
    from nanoify.distill.augment import mlm_candidates

    tok, v = _tok(tmp_path)
    cand, pieces = candidate_ids(tok)
    mlm = _mlm(v, ["[UNK]", "poor", "good", "fine", "great"])  # [UNK] is no candidate; "good" not for itself
    rows = [[v["[CLS]"], v["good"], v["play"], v["##ing"], v["[SEP]"]]]
    at = mlm_candidates(rows, [(0, 1)], mlm, v["[MASK]"], cand, k=2)
    assert at[(0, 1)].tolist() == [v["poor"], v["fine"]]
    extra, info = augment(rows * 50, tok, torch.randn(len(v), 8), n=2, p=1.0, k=2, seed=3, mlm=mlm, mlm_name="tiny")
    col = np.array(extra)
    assert set(col[:, 1].tolist()) <= {v["poor"], v["fine"]} and (col[:, 2] == v["play"]).all()  # play has ##ing
    assert info["source"].startswith("masked LM tiny") and info["variants_changed"] == 100
    # the same seed chooses the same positions whatever the candidates' source
    plain, _ = augment(rows * 50, tok, torch.randn(len(v), 8), n=2, p=1.0, k=2, seed=3)
    assert [r[1] != rows[0][1] for r in plain] == [r[1] != rows[0][1] for r in extra]


def test_masked_lm_with_another_vocabulary_is_one_clear_error(tmp_path):
    import pytest

    from nanoify.errors import ModelError
    from nanoify.models.load import load_masked_lm

    tok, v = _tok(tmp_path)
    other = {**v, "extra": len(v)}
    mlm = _mlm(other, ["good"])
    mlm.save_pretrained(tmp_path / "mlm")
    BertTokenizerFast(vocab=other, do_lower_case=True).save_pretrained(tmp_path / "mlm")
    with pytest.raises(ModelError, match="vocabulary differs from the teacher's tokenizer"):
        load_masked_lm(str(tmp_path / "mlm"), tok)
    same = tmp_path / "same"
    _mlm(v, ["good"]).save_pretrained(same)
    tok.save_pretrained(same)
    assert load_masked_lm(str(same), tok).config.vocab_size == len(v)
