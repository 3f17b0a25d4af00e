"""Sequence-length buckets and fixed buffers for the torch engine (the CUDA-graph path's bookkeeping, run eagerly
on the CPU; tests/gpu checks the captured graphs)."""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import pytest
import torch

from nanoify.data.text import collate
from nanoify.engines import EngineUnavailable, open_engine, parse_engine_spec, static_shapes
from nanoify.engines.static_shapes import StaticShapeRunner, buckets_for
from nanoify.engines.torch_engine import TorchEngine
from nanoify.errors import DataError
from tests.gpu.test_cuda import CAPTURES, _feeds


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
    rng = np.random.default_rng(0)
    feeds = [collate([list(rng.integers(5, 80, size=n)) for n in lens], 0) for lens in ([3], [5, 17, 9], [30, 2])]
    with open_engine("torch", str(tiny_teacher)) as eager, \
            TorchEngine(str(tiny_teacher), attention="sdpa", buckets=(8, 32, 64)) as sdpa:
        sdpa._runner = None  # plain SDPA first
        for f in feeds:
            np.testing.assert_allclose(sdpa.infer(f)["logits"], eager.infer(f)["logits"], atol=1e-5)
    with TorchEngine(str(tiny_teacher), buckets=(8, 32, 64)) as bucketed:
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


def test_the_gpu_tests_capture_list_is_what_the_buckets_give(tiny_teacher):
    """tests/gpu's expected captures, checked here where no GPU is needed: the runner's (batch, bucket) keys are
    the same eagerly as with graphs (issue 23: rows of 17 and 30 tokens both land in bucket 32)."""
    with TorchEngine(str(tiny_teacher)) as eng:
        m = eng.model
        eng._runner = StaticShapeRunner(lambda **t: m(**t).logits, {"input_ids": 0}, buckets_for(512), "cpu",
                                        graphs=False)
        for f in _feeds():
            eng.infer(f)
        assert eng._runner.captured == CAPTURES


def test_captures_run_one_at_a_time_across_threads(monkeypatch):
    """Two runners meeting new shapes in two threads capture one after the other (issue 23: entering
    torch.cuda.graph while another thread captures fails in torch 2.11). torch.cuda's capture calls are replaced
    by stand-ins that record how many captures overlap; the lock is what keeps it at one."""
    state = {"now": 0, "most": 0}
    guard = threading.Lock()

    @contextlib.contextmanager
    def graph(*a, **k):
        with guard:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.05)
        yield
        with guard:
            state["now"] -= 1

    class Stream:
        def wait_stream(self, other):
            return None

    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: object())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: Stream())

    def one() -> None:
        static_shapes.capture(lambda **t: t["x"] + 1, {"x": torch.zeros(2)}, None, 1, Stream())

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert state["most"] == 1


def test_compiled_calls_cover_every_batch_and_bucket_without_falling_back(monkeypatch, tmp_path):
    """Two batch sizes over six buckets (twelve shapes) through the runner's compiled call: a handful of graphs and
    no silent fall-back to eager past Dynamo's recompile limit (made an error here). Dynamo's own backend
    (``eager``) keeps the test free of a C++ compiler; the guards and recompiles are Dynamo's either way."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # torch sets it on first compile
    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    frames = []

    def backend(gm, example_inputs):
        frames.append(gm)
        return gm.forward

    def fn(input_ids, attention_mask):
        m = attention_mask.float()
        return ((input_ids.float() * m).sum(1) / m.sum(1))[:, None]

    call = static_shapes.compile_call(fn, "default", backend=backend)
    r = StaticShapeRunner(call, {"input_ids": 0}, buckets_for(512), "cpu", graphs=False)
    for batch in (1, 32, 3):
        for length in (5, 20, 40, 100, 200, 400):
            ids = torch.ones(batch, length, dtype=torch.long)
            out = r({"input_ids": ids, "attention_mask": ids})
            assert out.shape == (batch, 1) and torch.allclose(out, torch.ones(batch, 1))
    assert len(r.captured) == 18 and len(frames) <= 4
    torch._dynamo.reset()
