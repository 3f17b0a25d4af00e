"""Checkpoints hold no pickle: safetensors + JSON, exact round trip, damaged files are one clear error."""

from __future__ import annotations

import pickle

import pytest
import torch

from nanoify.distill.checkpoint import load_state, save_state
from nanoify.errors import ConfigError


def _trained():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    for _ in range(3):
        model(torch.randn(5, 4)).square().sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, opt, sched


def test_round_trip_is_exact_and_resumes_identically(tmp_path):
    model, opt, sched = _trained()
    path = tmp_path / "state.safetensors"
    save_state(path, run_key="k", model=model.state_dict(), aux={}, opt=opt.state_dict(), sched=sched.state_dict(),
               rng=torch.get_rng_state(), stage=1, step=3, history=[{"loss": 0.5}], window={"ce": [0.25]})
    st = load_state(path)
    assert st["run_key"] == "k" and (st["stage"], st["step"]) == (1, 3) and st["window"] == {"ce": [0.25]}
    assert torch.equal(st["rng"], torch.get_rng_state())
    m2, o2, s2 = _trained()
    m2.load_state_dict(st["model"])
    o2.load_state_dict(st["opt"])
    s2.load_state_dict(st["sched"])
    x = torch.randn(5, 4)
    for m, o, s in ((model, opt, sched), (m2, o2, s2)):  # one more step each: the same result, bit for bit
        m(x).square().sum().backward()
        o.step()
        s.step()
    for a, b in zip(model.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert s2.get_last_lr() == sched.get_last_lr()


def test_a_damaged_or_foreign_checkpoint_is_one_clear_error(tmp_path):
    bad = tmp_path / "state.safetensors"
    bad.write_bytes(pickle.dumps({"model": "x"}))  # what an attacker would plant: never unpickled
    with pytest.raises(ConfigError, match="not a readable nanoify checkpoint"):
        load_state(bad)
