"""MiniLM-v2 relation loss: what it compares, across widths, with padding masked; the Q/K/V capture."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from nanoify.distill.relations import QKVCapture, relation_heads, relation_kl
from nanoify.errors import ConfigError


def _qkv(b, seq, d, seed):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, seq, d, generator=g) for _ in range(3))


def test_zero_for_identical_relations_positive_otherwise_and_width_free():
    mask = torch.ones(2, 7)
    t = _qkv(2, 7, 32, 0)
    assert relation_kl(t, t, mask, 4).item() == pytest.approx(0.0, abs=1e-6)
    s = _qkv(2, 7, 16, 1)  # a narrower student: no projection needed
    loss = relation_kl(s, t, mask, 4)
    assert loss.item() > 0.01
    # scaling a head's vectors by c changes its relations (temperature); a permutation of the width inside a
    # relation head does not: the relation only sees dot products
    perm = torch.cat([torch.randperm(8, generator=torch.Generator().manual_seed(2)) + 8 * h for h in range(4)])
    t_perm = tuple(x[..., perm] for x in t)
    assert relation_kl(t_perm, t, mask, 4).item() == pytest.approx(0.0, abs=1e-5)


def test_padding_never_counts_and_gradients_reach_the_student():
    t = _qkv(1, 6, 8, 0)
    s = tuple(x.clone().requires_grad_(True) for x in _qkv(1, 6, 8, 1))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    base = relation_kl(s, t, mask, 2)
    noisy_t = tuple(x.clone() for x in t)
    for x in noisy_t:
        x[:, 4:] = 100.0  # whatever sits at padded positions
    assert relation_kl(s, noisy_t, mask, 2).item() == pytest.approx(base.item(), rel=1e-5)
    # the same four tokens without any padding: the loss is a mean over real queries, so padding cannot dilute it
    unpadded = relation_kl(tuple(x[:, :4] for x in s), tuple(x[:, :4] for x in t), torch.ones(1, 4), 2)
    assert unpadded.item() == pytest.approx(base.item(), rel=1e-5)
    base.backward()
    assert all(x.grad is not None and x.grad[:, :4].abs().sum() > 0 for x in s)


def test_relation_heads_default_and_errors():
    assert relation_heads(192, 384, 4) == 4
    assert relation_heads(312, 384, 12) == 12  # 312 = 12 × 26, 384 = 12 × 32
    assert relation_heads(100, 384, 3) == 4  # gcd 4
    with pytest.raises(ConfigError, match="must divide both"):
        relation_heads(192, 384, 4, asked=5)


def test_capture_reads_the_layer_projections():
    torch.manual_seed(0)
    m = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                                 num_attention_heads=2, intermediate_size=32)).eval()
    cap = QKVCapture(m, 1)
    ids = torch.tensor([[1, 5, 7, 2]])
    with torch.no_grad():
        m(input_ids=ids)
    q, k, v = cap.take()
    assert q.shape == k.shape == v.shape == (1, 4, 16)
    layer = m.bert.encoder.layer[1].attention.self
    with torch.no_grad():
        h = m(input_ids=ids, output_hidden_states=True).hidden_states[1]
    assert torch.allclose(q, layer.query(h), atol=1e-6)
    cap.remove()
    with pytest.raises(ConfigError, match="out of range"):
        QKVCapture(m, 2)
