"""Sequence-length buckets and fixed buffers for the torch engine (the CUDA-graph path's bookkeeping, run eagerly
on the CPU; tests/gpu checks the captured graphs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nanoify.engines import EngineUnavailable, open_engine, parse_engine_spec
from nanoify.engines.static_shapes import StaticShapeRunner, buckets_for
from nanoify.errors import DataError


def test_buckets_stop_at_the_model_limit():
    assert buckets_for(512) == (16, 32, 64, 128, 256, 512)
    assert buckets_for(64) == (16, 32, 64) and buckets_for(100) == (16, 32, 64, 100) and buckets_for(None)[-1] == 512


def test_runner_pads_to_buckets_and_returns_only_real_rows():
    seen = []

    def fn(input_ids, attention_mask):
        seen.append(tuple(input_ids.shape))
        # a masked mean: padding must not change it
        m = attention_mask.float()
        return ((input_ids.float() * m).sum(1) / m.sum(1))[:, None]

    r = StaticShapeRunner(fn, {"input_ids": 0}, (8, 16), "cpu", graphs=False)
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    out = r({"input_ids": ids, "attention_mask": mask})
    assert torch.allclose(out[:, 0], torch.tensor([6.0, 8.5])) and seen[-1] == (2, 8)
    long = torch.ones(2, 12, dtype=torch.long)
    r({"input_ids": long, "attention_mask": long})
    r({"input_ids": ids, "attention_mask": mask})  # back to the first bucket: buffers reused, padding refilled
    assert r.captured == [(2, 8), (2, 16)] and seen[-1] == (2, 8)
    assert torch.allclose(r({"input_ids": ids, "attention_mask": mask})[:, 0], torch.tensor([6.0, 8.5]))
    with pytest.raises(DataError, match="truncate the inputs to 16 tokens"):
        r({"input_ids": torch.ones(1, 17, dtype=torch.long), "attention_mask": torch.ones(1, 17, dtype=torch.long)})
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        StaticShapeRunner(fn, {}, (8,), "cpu", graphs=True)


def test_torch_engine_with_buckets_matches_eager(tiny_teacher):
    from nanoify.data.text import collate
    from nanoify.engines.torch_engine import TorchEngine

    rng = np.random.default_rng(0)
    feeds = [collate([list(rng.integers(5, 80, size=n)) for n in lens], 0) for lens in ([3], [5, 17, 9], [30, 2])]
    with open_engine("torch", str(tiny_teacher)) as eager, \
            TorchEngine(str(tiny_teacher), attention="sdpa", buckets=(8, 32, 64)) as sdpa:
        sdpa._runner = None  # plain SDPA first
        for f in feeds:
            np.testing.assert_allclose(sdpa.infer(f)["logits"], eager.infer(f)["logits"], atol=1e-5)
    with TorchEngine(str(tiny_teacher), buckets=(8, 32, 64)) as bucketed:
        from nanoify.engines.static_shapes import StaticShapeRunner

        m = bucketed.model
        bucketed._runner = StaticShapeRunner(lambda **t: m(**t).logits, {"input_ids": 0}, (8, 32, 64), "cpu",
                                             graphs=False)
        with open_engine("torch", str(tiny_teacher)) as eager:
            for f in feeds:  # padding to the bucket changes nothing for the real tokens
                np.testing.assert_allclose(bucketed.infer(f)["logits"], eager.infer(f)["logits"], atol=1e-5)
        assert bucketed._runner.captured == [(1, 8), (2, 32), (3, 32)]


def test_engine_specs_for_compiled_cuda_graphs():
    assert parse_engine_spec("torch:cuda:fp16:graphs") == ("torch", {"device": "cuda", "dtype": "fp16",
                                                                     "graphs": True})
    assert parse_engine_spec("torch:cuda:bf16:sdpa:compile-max")[1] == {"device": "cuda", "dtype": "bf16",
                                                                        "attention": "sdpa",
                                                                        "compile": "max-autotune"}
    with pytest.raises(EngineUnavailable, match="CUDA graphs need a CUDA device"):
        parse_engine_spec("torch:cpu:graphs")
    with pytest.raises(EngineUnavailable, match="torch also: graphs"):
        parse_engine_spec("onnxruntime:graphs")
