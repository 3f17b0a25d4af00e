"""Every loss against a hand computation: masks, T² scaling, projections, head averaging."""

import math

import numpy as np
import pytest
import torch

from nanoify.distill import losses as L


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_kd_kl_matches_hand_computation_and_scales_by_t_squared():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    for temp in (1.0, 2.0, 4.0):
        ps, pt = _softmax(s.numpy() / temp), _softmax(t.numpy() / temp)
        want = float(np.mean((pt * (np.log(pt) - np.log(ps))).sum(-1))) * temp**2
        assert L.kd_kl(s, t, temp).item() == pytest.approx(want, rel=1e-5)
    assert L.kd_kl(t, t, 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_kl_gradient_scale_is_temperature_independent_for_large_t():
    # With the T² factor the logit gradient tends to (s - t)/(C·B) for large T instead of vanishing.
    s = torch.tensor([[0.3, -0.2, 0.1]], requires_grad=True)
    t = torch.tensor([[0.1, 0.4, -0.3]])
    grads = []
    for temp in (10.0, 100.0):
        s.grad = None
        L.kd_kl(s, t, temp).backward()
        grads.append(s.grad.clone())
    assert torch.allclose(grads[0], grads[1], rtol=0.05, atol=1e-4)
    assert grads[1].abs().max() > 1e-2


def test_hard_ce():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0])
    p = _softmax(logits.numpy())
    want = -(math.log(p[0, 0]) + math.log(p[1, 0])) / 2
    assert L.hard_ce(logits, y).item() == pytest.approx(want, rel=1e-6)


def test_attention_mse_ignores_padding_pairs():
    torch.manual_seed(0)
    b, h, n = 2, 3, 4
    s, t = torch.rand(b, h, n, n), torch.rand(b, h, n, n)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    total, count = 0.0, 0
    for i in range(b):
        k = int(mask[i].sum())
        total += float(((s[i, :, :k, :k] - t[i, :, :k, :k]) ** 2).sum())
        count += h * k  # rows (head, real query); keys are summed
    assert L.attention_mse(s, t, mask).item() == pytest.approx(total / count, rel=1e-5)
    # garbage in padded positions changes nothing
    s2 = s.clone()
    s2[0, :, 3, :] = 99.0
    s2[1, :, :, 2:] = -5.0
    assert L.attention_mse(s2, t, mask).item() == pytest.approx(total / count, rel=1e-5)


def test_attention_mse_averages_heads_when_counts_differ():
    torch.manual_seed(1)
    s, t = torch.rand(1, 2, 3, 3), torch.rand(1, 6, 3, 3)
    mask = torch.ones(1, 3)
    want = float(((s.mean(1) - t.mean(1)) ** 2).sum(-1).mean())
    assert L.attention_mse(s, t, mask).item() == pytest.approx(want, rel=1e-5)


def test_hidden_mse_with_projection_and_mask():
    torch.manual_seed(2)
    s, t = torch.randn(2, 5, 4), torch.randn(2, 5, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    proj = torch.nn.Linear(4, 6)
    ps = proj(s).detach()
    sel = mask.bool()
    want = float(((ps[sel] - t[sel]) ** 2).mean())
    assert L.hidden_mse(s, t, mask, proj).item() == pytest.approx(want, rel=1e-5)
    assert L.embedding_loss(s, t, mask, proj).item() == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError):
        L.hidden_mse(s, t, mask)


def test_hidden_mse_gradient_reaches_projection():
    s, t = torch.randn(1, 3, 4, requires_grad=True), torch.randn(1, 3, 8)
    proj = torch.nn.Linear(4, 8)
    L.hidden_mse(s, t, torch.ones(1, 3), proj).backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    assert s.grad is not None


def test_registry_names_every_loss():
    assert set(L.LOSSES) == {"kd_kl", "hard_ce", "attention_mse", "hidden_mse", "embedding_loss"}
