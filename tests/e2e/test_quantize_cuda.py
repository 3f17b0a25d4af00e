"""``quantize --target cuda`` end to end on the CPU kernels of the same ops (the GPU run is tests/gpu and
benchmarks/gpu_check.sh): every format measured against FP32, the chosen one written and loadable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nanoify.cli import main
from nanoify.config import DataConfig, QuantizeConfig, TimingConfig
from nanoify.engines import open_engine
from nanoify.models.quantized import FORMATS
from nanoify.quant.run import quantize_cuda


def test_every_gpu_format_is_measured_and_the_choice_loads(tmp_path, tiny_teacher, tiny_data):
    data = DataConfig(data=str(tiny_data), max_length=32)
    cfg = QuantizeConfig(target="cuda", budget=2.0, calib_samples=64, timing=TimingConfig(20, 64, rounds=1))
    man = quantize_cuda(tiny_teacher, tmp_path / "q", data, data, cfg, device="cpu", progress=False)
    names = [r["name"] for r in man["candidates"]]
    assert names == ["fp16", *FORMATS] and man["chosen"] in names and man["speed_note"]
    for r in man["candidates"]:
        assert r["drop_pts"] <= 2.0 and r["top1_agreement"] >= 0.95, r
    out = tmp_path / "q"
    if man["chosen"] != "fp16":
        assert json.loads((out / "quantization.json").read_text())["format"] == man["chosen"]
    with open_engine("torch", str(out)) as q, open_engine("torch", str(tiny_teacher)) as ref:
        ids = torch.randint(5, 80, (3, 20)).numpy()
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        a, b = q.infer(feed)["logits"], ref.infer(feed)["logits"]
        assert a.shape == b.shape and (a.argmax(1) == b.argmax(1)).mean() >= 2 / 3


def test_target_cuda_without_a_gpu_is_one_line(tmp_path, tiny_teacher, tiny_data, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["quantize", str(tiny_teacher), "--calib", str(tiny_data), "--target", "cuda",
                 "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--target cuda needs a CUDA GPU" in err[0] and not (tmp_path / "q").exists()


def test_gpu_artifacts_are_benchmarked_by_the_torch_engine(tmp_path, tiny_teacher, tiny_data):
    """The folder quantize --target cuda writes (and any saved quantized folder) resolves to the torch engine,
    not to an ONNX file, and bench scores it."""
    from nanoify.bench.run import benchmark
    from nanoify.config import BenchConfig
    from nanoify.models.load import load_classifier
    from nanoify.models.quantized import quantizable_linears, quantize_model, save_quantized
    from nanoify.tasks.resolve import resolve

    data = DataConfig(data=str(tiny_data), max_length=32)
    cfg = QuantizeConfig(target="cuda", budget=5.0, calib_samples=32, eval_rows=64,
                         timing=TimingConfig(5, 32, rounds=1))
    quantize_cuda(tiny_teacher, tmp_path / "q", data, data, cfg, device="cpu", formats=("int8",), progress=False)
    model, tok, lm = load_classifier(str(tiny_teacher))
    names = quantizable_linears(model)
    quantize_model(model, "int8", names)
    save_quantized(model, tok, lm.names, tmp_path / "int8", "int8", names)
    for folder in (tmp_path / "q", tmp_path / "int8"):
        assert resolve(folder).engine == "torch"
    rep = benchmark([str(tiny_teacher), str(tmp_path / "int8")], data, progress=False,
                    config=BenchConfig(isolate=False, timing=TimingConfig(5, 32, rounds=1)))
    assert rep["models"][1]["accuracy"] > 0.7 and rep["models"][1]["top1_agreement"] >= 0.9


def test_cnn_and_onnx_only_detector_get_a_precision_and_load_with_it(tmp_path, tiny_cnn_export, tiny_images,
                                                                     tiny_yolo_export, det_data):
    """CNNs and detectors: FP16 and BF16 against FP32 eager (on the CPU kernels here), the chosen precision
    written beside the model as it came — the export's torch module, or an ONNX file alone with its
    preprocessing — and used by default by the torch engine that bench picks for the folder."""
    import shutil

    from nanoify.bench.run import measure_model
    from nanoify.tasks.resolve import resolve

    cfg = QuantizeConfig(target="cuda", budget=5.0, eval_rows=64, timing=TimingConfig(4, 16, rounds=1))
    man = quantize_cuda(tiny_cnn_export, tmp_path / "cnn", str(tiny_images), str(tiny_images), cfg, device="cpu",
                        progress=False)
    assert [r["name"] for r in man["candidates"]] == ["fp16", "bf16"] and man["task"] == "image-classification"
    assert all(r["top1_agreement"] >= 0.9 for r in man["candidates"]), man["candidates"]
    out = tmp_path / "cnn"
    assert (out / "module.json").is_file() and (out / "preprocess.json").is_file()
    assert json.loads((out / "quantization.json").read_text())["format"] == man["chosen"]
    ref = resolve(out)
    assert ref.engine == "torch" and ref.task == "image-classification"
    with open_engine("torch", str(out)) as eng:
        assert eng._dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[man["chosen"]]
    res, _ = measure_model(str(out), str(tiny_images), timing=TimingConfig(4, 16, rounds=1))
    assert res["engine"] == "torch" and res["accuracy"] > 0.8

    bare = tmp_path / "bare"  # an ONNX-only detector: the torch engine runs the graph
    bare.mkdir()
    for f in ("model.onnx", "preprocess.json", "detection.json", "label_map.json"):
        shutil.copy(tiny_yolo_export / f, bare / f)
    cfg = QuantizeConfig(target="cuda", budget=100.0, eval_rows=6, timing=TimingConfig(2, 4, rounds=1))
    man = quantize_cuda(bare / "model.onnx", tmp_path / "det", str(det_data), str(det_data), cfg, device="cpu",
                        progress=False)
    assert man["task"] == "detection" and all("box_agreement" in r for r in man["candidates"])
    out = tmp_path / "det"
    assert (out / "model.onnx").is_file() and (out / "detection.json").is_file()
    assert resolve(out).engine == "torch"
