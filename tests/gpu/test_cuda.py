"""GPU checks: run where CUDA (and for the last one TensorRT) is present; skipped elsewhere, so CI on the
CPU machines skips them. Tolerances: FP32 on CUDA within 1e-3 of CPU logits; BF16 within cosine 0.99."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


CAPTURES = [(1, 16), (3, 32)]  # (batch, bucket) of _feeds() under the default buckets


def _feeds():
    from nanoify.data.text import collate

    rng = np.random.default_rng(0)
    return [collate([list(rng.integers(5, 80, size=n)) for n in lens], 0) for lens in ([3], [5, 17, 9], [30, 2, 12])]


def test_torch_engine_on_cuda_matches_cpu(tiny_teacher):
    from nanoify.engines import open_engine
    from nanoify.tasks.classify import cosine

    with open_engine("torch", str(tiny_teacher)) as cpu, \
            open_engine("torch", str(tiny_teacher), device="cuda") as gpu, \
            open_engine("torch", str(tiny_teacher), device="cuda", dtype="bf16") as half:
        for f in _feeds():
            ref = cpu.infer(f)["logits"]
            np.testing.assert_allclose(gpu.infer(f)["logits"], ref, atol=1e-3)
            assert cosine(ref, half.infer(f)["logits"]) >= 0.99


def test_bench_on_cuda_reports_gpu_memory_and_energy_when_readable(tiny_teacher, tiny_data):
    from nanoify.bench.run import benchmark
    from nanoify.config import BenchConfig, DataConfig, TimingConfig

    rep = benchmark([str(tiny_teacher), str(tiny_teacher)], DataConfig(data=str(tiny_data), max_length=32),
                    config=BenchConfig(engines=("torch", "torch:cuda:bf16"), isolate=False,
                                       timing=TimingConfig(20, 64, rounds=1)), progress=False)
    cpu, gpu = rep["models"]
    assert gpu["device"] == "cuda" and gpu["gpu_peak_mb"] > 0 and gpu["top1_agreement"] >= 0.95
    if importlib.util.find_spec("pynvml") is not None:  # Volta and newer report total energy through NVML
        assert gpu["energy_mj_per_row"] is not None and gpu["energy_mj_per_row"] > 0 and gpu["power_w"] > 0


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="TensorRT is not installed")
def test_tensorrt_engine_runs_the_qdq_graph(tiny_export, tiny_data, tmp_path):
    from nanoify.config import DataConfig, QuantizeConfig
    from nanoify.engines import open_engine
    from nanoify.quant.run import quantize
    from nanoify.tasks.classify import cosine

    out = tmp_path / "trt"
    quantize(tiny_export, out, calib=DataConfig(data=str(tiny_data), max_length=32), progress=False,
             config=QuantizeConfig(budget=100.0, target="tensorrt", methods=("percentile",), calib_samples=32))
    with open_engine("onnxruntime", str(out / "model.qdq.onnx")) as ort, \
            open_engine("tensorrt", str(out / "model.qdq.onnx"),
                        axes={"batch": (1, 4, 8), "sequence": (1, 32, 64)}) as trt:
        for f in _feeds():
            assert cosine(ort.infer(f)["logits"], trt.infer(f)["logits"]) >= 0.99
    assert (out / "model.qdq.plan").is_file()


def test_cuda_graphs_and_compile_match_eager(tiny_teacher):
    from nanoify.engines import open_engine, parse_engine_spec
    from nanoify.tasks.classify import cosine

    with open_engine("torch", str(tiny_teacher)) as cpu, \
            open_engine("torch", str(tiny_teacher), **parse_engine_spec("torch:cuda:graphs")[1]) as graphs, \
            open_engine("torch", str(tiny_teacher), **parse_engine_spec("torch:cuda:fp16:sdpa:graphs")[1]) as half:
        for _ in range(2):  # the second pass replays the graphs captured by the first
            for f in _feeds():
                ref = cpu.infer(f)["logits"]
                np.testing.assert_allclose(graphs.infer(f)["logits"], ref, atol=1e-3)
                assert cosine(ref, half.infer(f)["logits"]) >= 0.99
        # rows of 17 and of 30 tokens both pad to bucket 32: two captures (tests/unit/test_static_shapes.py checks
        # the same list on the CPU, so this expectation no longer waits for a GPU to be found wrong)
        assert graphs._runner.captured == CAPTURES


def test_distillation_trains_on_cuda_in_bf16(tmp_path, tiny_teacher, tiny_data):
    from nanoify.config import DataConfig, DistillConfig, TrainConfig
    from nanoify.distill.run import distill

    cfg = DistillConfig(teacher=str(tiny_teacher), student="layers=2,hidden=16,heads=2,intermediate=32",
                        data=DataConfig(data=str(tiny_data), max_length=32),
                        train=TrainConfig(epochs=5, batch_size=32, lr=3e-3, min_steps=0, device="cuda",
                                          precision="bf16"))
    man = distill(cfg, tmp_path / "gpu", progress=False)
    assert man["metrics"]["validation"]["accuracy"] > 0.6 and man["config"]["train"]["device"] == "cuda"


def test_engines_on_their_own_streams_serve_threads_concurrently(tiny_teacher):
    import threading

    from nanoify.engines import open_engine, parse_engine_spec

    feeds = _feeds() * 8
    opts = parse_engine_spec("torch:cuda:fp16:graphs")[1]
    with open_engine("torch", str(tiny_teacher), **opts) as serial:
        want = [serial.infer(f)["logits"] for f in feeds]
    with open_engine("torch", str(tiny_teacher), **opts) as a, open_engine("torch", str(tiny_teacher), **opts) as b:
        assert a._stream is not None and a._stream != b._stream
        # both start cold, so their threads capture graphs at the same time: each on its runner's own stream
        assert a._runner.capture_stream != b._runner.capture_stream
        got: dict[int, np.ndarray] = {}

        def work(e, idx):
            for i in idx:
                got[i] = e.infer(feeds[i])["logits"]

        ts = [threading.Thread(target=work, args=(e, range(k, len(feeds), 2))) for k, e in enumerate((a, b))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    for i, w in enumerate(want):
        np.testing.assert_allclose(got[i], w, atol=1e-3)


def test_onnx_detector_and_cnn_through_torch_with_cuda_graphs(tiny_yolo_export, tiny_cnn_export):
    """An ONNX-only model on the GPU path: eager FP32 on CUDA (pinned buffers) within 1e-3 of ONNX Runtime on the
    CPU, one CUDA graph per input shape replaying the eager result, FP16 within 1e-2 relative."""
    from nanoify.engines import open_engine

    rng = np.random.default_rng(0)
    for path, shapes in ((tiny_yolo_export / "model.onnx", [(1, 3, 320, 480), (2, 3, 640, 640)]),
                         (tiny_cnn_export / "model.onnx", [(1, 3, 16, 16), (8, 3, 16, 16)])):
        with open_engine("onnxruntime", str(path)) as cpu, \
                open_engine("torch", str(path), device="cuda") as eager, \
                open_engine("torch", str(path), device="cuda", graphs=True) as graphs, \
                open_engine("torch", str(path), device="cuda", dtype="fp16", graphs=True) as half:
            for shape in shapes * 2:  # the second pass replays the captured graphs
                feed = {"input": rng.random(shape, dtype=np.float32)}
                ref = cpu.infer(feed)
                for name, eng, tol in (("eager", eager, 1e-3), ("graphs", graphs, 1e-3), ("fp16", half, 2e-2)):
                    got = eng.infer(feed)
                    for k in ref:
                        scale = float(np.abs(ref[k]).max()) or 1.0
                        assert float(np.abs(got[k] - ref[k]).max()) <= tol * max(1.0, scale), (path, name, k)
            assert len(graphs._runner.captured) == len(shapes)


def test_cnn_precision_on_the_gpu(tmp_path, tiny_cnn_export, tiny_images):
    """quantize --target cuda for a CNN on the GPU: FP16/BF16 with CUDA graphs against FP32 eager; the chosen
    folder loads on CUDA in that precision and agrees with FP32."""
    from nanoify.config import QuantizeConfig, TimingConfig
    from nanoify.engines import open_engine
    from nanoify.quant.run import quantize_cuda

    cfg = QuantizeConfig(target="cuda", budget=2.0, eval_rows=256, timing=TimingConfig(20, 64, rounds=1))
    man = quantize_cuda(tiny_cnn_export, tmp_path / "q", str(tiny_images), str(tiny_images), cfg, progress=False)
    assert man["chosen"] in ("fp16", "bf16") and not man["speed_note"]
    assert all(r["top1_agreement"] >= 0.97 for r in man["candidates"]), man["candidates"]
    feed = {"input": np.random.default_rng(0).random((8, 3, 16, 16), dtype=np.float32)}
    with open_engine("torch", str(tmp_path / "q"), device="cuda", graphs=True) as q, \
            open_engine("onnxruntime", str(tiny_cnn_export / "model.onnx")) as ref:
        a, b = q.infer(feed), ref.infer(feed)
        k = next(iter(b))
        assert (a[k].argmax(1) == b[k].argmax(1)).mean() >= 7 / 8
