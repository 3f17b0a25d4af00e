"""Structured pruning (models/prune.py): slicing is exact where nothing that matters is removed, units made
dead are the ones removed, the result loads with plain ``from_pretrained``, and shapes the teacher cannot take
are one line. BERT and MPNet (relative position bias)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, MPNetConfig

from nanoify.errors import ConfigError
from nanoify.models.load import encoder_layers
from nanoify.models.prune import carve, check_shape, environment_kept, importance, layer_parts

H, L, A, F = 32, 4, 4, 64  # hidden, layers, heads (of 8 dimensions), FFN


def _teacher(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(vocab_size=60, hidden_size=H, num_hidden_layers=L, num_attention_heads=A, intermediate_size=F,
                  num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg = (BertConfig(max_position_embeddings=40, **common) if kind == "bert" else
           MPNetConfig(max_position_embeddings=42, pad_token_id=1, **common))
    with environment_kept():
        return AutoModelForSequenceClassification.from_config(cfg, attn_implementation="eager").eval()


def _batches(n: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, 60, (8, 12), generator=g)
        mask = torch.ones_like(ids)
        mask[:4, 9:] = 0  # padded rows: their tokens must not count
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _logits(model, batches):
    with torch.no_grad():
        return torch.cat([model(**b).logits for b in batches])


@pytest.mark.parametrize("kind", ["bert", "mpnet"])
def test_keeping_everything_reproduces_the_teacher(kind):
    teacher = _teacher(kind)
    student, kept, _ = carve(teacher, _batches(), L, H, A, F)
    assert kept.layers == list(range(L)) and kept.channels == list(range(H))
    torch.testing.assert_close(_logits(student, _batches()), _logits(teacher, _batches()), rtol=1e-5, atol=1e-5)


def _kill(teacher, head: int, neurons: list[int]) -> None:
    """Head ``head`` gets zero values (its context is 0, it contributes nothing) and the FFN ``neurons`` zero
    input rows with a bias far below zero (GELU(−30) = 0): dead in every layer."""
    d = H // A
    with torch.no_grad():
        for layer in encoder_layers(teacher):
            p = layer_parts(layer)
            p.v.weight[head * d:(head + 1) * d] = 0
            p.v.bias[head * d:(head + 1) * d] = 0
            p.ffn_in.weight[neurons] = 0
            p.ffn_in.bias[neurons] = -30.0


@pytest.mark.parametrize("kind", ["bert", "mpnet"])
def test_dead_heads_and_neurons_are_the_ones_removed_and_removing_them_changes_nothing(kind):
    teacher = _teacher(kind, seed=2)
    _kill(teacher, head=2, neurons=[5, 17, 40])
    # hidden = heads × head size in transformers' configs: a head can only go with hidden width, so the exact
    # check drops the dead neurons alone, and the dead head is checked by its score and by the 24-wide student
    imp = importance(teacher, _batches())
    assert int(imp.heads.argmin(dim=1).unique().item()) == 2 and float(imp.heads[:, 2].max()) == 0.0
    student, kept, _ = carve(teacher, _batches(), L, H, A, F - 3)
    assert all(set(n) == set(range(F)) - {5, 17, 40} for n in kept.neurons)
    torch.testing.assert_close(_logits(student, _batches()), _logits(teacher, _batches()), rtol=1e-5, atol=1e-5)
    small, kept, _ = carve(teacher, _batches(), L, 24, 3, F - 3)  # 3 heads of 8: the dead one goes
    assert all(2 not in hs for hs in kept.heads) and kept.head_size == 8
    if kind == "mpnet":  # one shared position bias: the same heads in every layer
        assert all(hs == kept.heads[0] for hs in kept.heads)
        bias = small.base_model.encoder.relative_attention_bias.weight
        torch.testing.assert_close(bias, teacher.base_model.encoder.relative_attention_bias.weight[:, kept.heads[0]])


def test_padding_does_not_count_and_a_layer_that_changes_nothing_goes_first():
    teacher = _teacher("bert", seed=3)
    with torch.no_grad():  # layer 1 adds nothing to its input: both residual branches give 0
        p = layer_parts(encoder_layers(teacher)[1])
        for lin in (p.o, p.ffn_out):
            lin.weight.zero_()
            lin.bias.zero_()
    imp = importance(teacher, _batches())
    assert int(imp.layers.argmin()) == 1 and float(imp.layers[1]) < 1e-6
    _, kept, _ = carve(teacher, _batches(), L - 1, H, A, F)
    assert kept.layers == [0, 2, 3]
    padded = _batches()
    for b in padded:  # change only what padded tokens hold: the importance must not move
        b["input_ids"][:4, 9:] = 7
    torch.testing.assert_close(importance(teacher, padded).channels, imp.channels)


@pytest.mark.parametrize("kind", ["bert", "mpnet"])
def test_a_pruned_model_saves_and_loads_with_plain_transformers(kind, tmp_path):
    teacher = _teacher(kind, seed=4)
    student, kept, _ = carve(teacher, _batches(), 2, 16, 4, 24)  # heads of 4 dimensions: narrowed from 8
    assert kept.head_size == 4 and len(kept.qk_dims[0][0]) == 4
    student.save_pretrained(tmp_path / "s")
    with environment_kept():
        loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "s").eval()
    c = loaded.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (2, 16, 4, 24)
    torch.testing.assert_close(_logits(loaded, _batches()), _logits(student, _batches()))


def test_shapes_the_teacher_cannot_take_are_one_line():
    cfg = _teacher("bert").config
    for args, words in (((L + 1, H, A, F), "larger than the teacher"), ((L, 30, 4, F), "not divisible"),
                        ((L, 32, 2, F), "need wider heads than the teacher's 8"), ((0, H, A, F), "positive")):
        with pytest.raises(ConfigError, match=words):
            check_shape(cfg, *args)
