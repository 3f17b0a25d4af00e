"""nanoify compress on tiny in-process models: the whole chain, resume by hash, a failing stage."""

from __future__ import annotations

import dataclasses
import json

import pytest

from nanoify.cli import main
from nanoify.config import BenchConfig, DataConfig, DistillConfig, QuantizeConfig, TimingConfig, TrainConfig
from nanoify.pipeline import CompressConfig, StageError, compress, stage_plan


def _cfg(teacher, data, budget=100.0):
    return CompressConfig(
        teacher=str(teacher), data=DataConfig(data=str(data), max_length=32),
        distill=DistillConfig(student="layers=2,hidden=16,heads=2,intermediate=32", init="teacher-pca",
                              train=TrainConfig(max_steps=8, batch_size=32, lr=1e-3, checkpoint_every=4)),
        quantize=QuantizeConfig(budget=budget, methods=("minmax",), calib_samples=32, cpu_engine="onnxruntime",
                                timing=TimingConfig(8, 32, rounds=1)),  # ORT here; the choice: test_openvino.py
        bench=BenchConfig(isolate=False, timing=TimingConfig(8, 32, rounds=1)))


def _statuses(out):
    return {k: v["status"] for k, v in json.loads((out / "manifest.json").read_text())["stages"].items()}


def test_compress_runs_resumes_by_hash_and_reruns_changed_stages(tmp_path, tiny_teacher, tiny_data):
    out = tmp_path / "run"
    cfg = _cfg(tiny_teacher, tiny_data)
    seen = []
    man = compress(cfg, out, progress=False, on_stage=lambda s, st: seen.append((s, st)))
    assert _statuses(out) == {"student": "done", "export": "done", "quantized": "done", "bench": "done"}
    assert [s for s, st in seen if st == "done"] == ["student", "export", "quantized", "bench"]
    s = man["summary"]
    assert 0 <= s["compressed_accuracy"] <= 1 and s["budget_met"] == (s["drop_pts"] <= 100.0)
    # quantization gets what distillation left of the total budget (at least min_budget)
    val = json.loads((out / "student" / "manifest.json").read_text())["metrics"]["validation"]
    gap = (val["teacher_accuracy"] - val["accuracy"]) * 100
    q_budget = json.loads((out / "quantized" / "manifest.json").read_text())["config"]["budget"]
    assert q_budget == pytest.approx(max(100.0 - gap, 0.5)) and s["quantize_budget_pts"] == q_budget
    report = (out / "report.md").read_text()
    assert "teacher (PyTorch FP32)" in report and "compressed (ONNX Runtime INT8)" in report
    assert "change" in report and (out / "report.png").is_file() and (out / "report.json").is_file()
    stamp = (out / "student" / "model.safetensors").stat().st_mtime_ns

    compress(cfg, out, progress=False)  # same config: nothing runs again
    assert set(_statuses(out).values()) == {"reused"}
    assert (out / "student" / "model.safetensors").stat().st_mtime_ns == stamp

    cfg2 = dataclasses.replace(cfg, quantize=dataclasses.replace(cfg.quantize, budget=50.0))
    assert stage_plan(cfg2)["export"] == stage_plan(cfg)["export"]
    assert stage_plan(cfg2)["quantized"] != stage_plan(cfg)["quantized"]
    compress(cfg2, out, progress=False)  # a changed stage and everything after it rerun
    assert _statuses(out) == {"student": "reused", "export": "reused", "quantized": "done", "bench": "done"}

    # a failing stage: corrupt the export, change the quantize config
    for f in ("model.onnx", "model.fused.onnx"):
        (out / "export" / f).write_bytes(b"broken")
    cfg3 = dataclasses.replace(cfg, quantize=dataclasses.replace(cfg.quantize, budget=40.0))
    with pytest.raises(StageError, match=r"stage quantized failed: .*not a readable ONNX model.*completed stages kept: "
                                         r"student, export"):
        compress(cfg3, out, progress=False)
    st = _statuses(out)
    assert st["quantized"] == "failed" and "bench" not in st
    assert (out / "student" / "model.safetensors").stat().st_mtime_ns == stamp
    assert (out / "quantized" / "manifest.json").is_file()  # the previous quantize output is intact


def test_headline_ratios_say_how_many_times_better(tmp_path):
    """The summary line and report.json's summary: baseline 10 ms → compressed 2 ms is 5× faster, 100 → 400 rows/s
    4× the throughput, 90 → 9 MB 10× smaller, 800 → 200 MB 4× less memory; 0.90 → 0.89 is −1 point."""
    from nanoify.pipeline import _summary, _write_report

    out = tmp_path / "run"
    (out / "bench").mkdir(parents=True)
    (out / "quantized").mkdir()
    common = {"throughput_batch": 32}
    models = [dict(common, name="teacher (PyTorch FP32)", engine="torch", accuracy=0.90, latency_ms_p50=10.0,
                   throughput=100.0, file_mb=90.0, peak_rss_mb=800.0),
              dict(common, name="compressed", engine="onnxruntime", accuracy=0.89, latency_ms_p50=2.0,
                   throughput=400.0, file_mb=9.0, peak_rss_mb=200.0, predictions_changed=3)]
    (out / "bench" / "report.json").write_text(json.dumps({"models": models, "metric": "accuracy"}))
    (out / "bench" / "report.md").write_text("| metric | teacher | compressed |\n")
    (out / "bench" / "report.png").write_bytes(b"\x89PNG")
    (out / "quantized" / "manifest.json").write_text(json.dumps({"chosen": "static-mse", "config": {"budget": 2.0}}))
    cfg = dataclasses.replace(_cfg(tmp_path / "teacher", tmp_path / "data", budget=2.0), distill=None)
    s = _summary(cfg, out)
    assert (s["latency_speedup_b1"], s["throughput_speedup_b32"], s["size_ratio"], s["memory_ratio"]) == \
        pytest.approx((5.0, 4.0, 10.0, 4.0))
    assert s["drop_pts"] == pytest.approx(1.0) and s["budget_met"] and s["metric"] == "accuracy"
    _write_report(out, s)
    head = (out / "report.md").read_text().splitlines()[2]
    assert "0.9000 → 0.8900 (-1.00 pt; budget 2.0 pt: met)" in head
    assert "latency 5.0× faster" in head and "throughput 4.0×" in head and "10.0× smaller" in head
    assert "memory 4.0× lower" in head
    rep = json.loads((out / "report.json").read_text())
    assert rep["summary"]["latency_speedup_b1"] == pytest.approx(5.0) and rep["models"] == models
    # the verdict is check_budget's on the metric the bench report names (unlabelled data: agreement), never a
    # metric guessed from the keys present
    models[0].update(top1_agreement=1.0)
    models[1].update(top1_agreement=0.97)
    (out / "bench" / "report.json").write_text(json.dumps({"models": models, "metric": "top1_agreement"}))
    s = _summary(cfg, out)
    assert s["metric"] == "top1_agreement" and s["drop_pts"] == pytest.approx(3.0) and not s["budget_met"]


def test_compress_cli_with_recipe_fine_tunes_the_teacher(tmp_path, tiny_encoder, tiny_data, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
teacher: {tiny_encoder}
finetune_teacher: true
finetune: {{max_steps: 30, lr: 3.0e-3, batch_size: 32}}
data: {{data: {tiny_data}, max_length: 32}}
student: layers=2,hidden=16,heads=2,intermediate=32
init: teacher-pca
distill: {{train: {{max_steps: 5}}}}
quantize: {{methods: [percentile], calib_samples: 32, timing: {{latency_rows: 8, throughput_rows: 32, rounds: 1}}}}
bench: {{isolate: false, timing: {{latency_rows: 8, throughput_rows: 32, rounds: 1}}}}
out: {tmp_path / 'out'}
""")
    assert main(["compress", str(recipe), "--budget", "100"]) == 0
    text = capsys.readouterr().out
    assert "[1/5] teacher: running" in text and "[5/5] bench: done" in text and "| accuracy |" in text
    assert (tmp_path / "out" / "teacher" / "manifest.json").is_file()
    assert main(["compress", str(recipe), "--budget", "100"]) == 0
    assert "teacher: reused" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: x\nquantize: {budgett: 1}\n")
    assert main(["compress", str(bad), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "unknown QuantizeConfig key(s): budgett" in err and len(err.strip().splitlines()) == 1


def test_compress_for_the_gpu_formats_runs_the_chain_in_the_torch_engine(tmp_path, tiny_teacher, tiny_data,
                                                                          tiny_cnn_export, tiny_images):
    """--target cuda: quantize's GPU formats (text) or precisions (CNN), then bench with the torch engine on
    both sides — here on the CPU kernels of the same ops (--device cpu), so accuracy holds and speed means
    nothing; on a GPU the compressed side runs with CUDA graphs."""
    cfg = _cfg(tiny_teacher, tiny_data)
    cfg = dataclasses.replace(cfg, quantize=QuantizeConfig(target="cuda", device="cpu", budget=100.0,
                                                           calib_samples=32, eval_rows=64,
                                                           timing=TimingConfig(4, 16, rounds=1)))
    man = compress(cfg, tmp_path / "text", progress=False)
    s = man["summary"]
    assert s["compressed_engine"].startswith("torch") and s["quantized_format"] in ("fp16", "int8", "int8-static",
                                                                                     "fp8", "int8-weight-only")
    rep = (tmp_path / "text" / "report.md").read_text()
    assert f"compressed ({s['quantized_format']}, torch on cpu)" in rep and "ONNX Runtime" not in rep.splitlines()[2]
    img = CompressConfig(task="image-classification", teacher=str(tiny_cnn_export),
                         data=DataConfig(data=str(tiny_images)),
                         quantize=QuantizeConfig(target="cuda", device="cpu", budget=5.0, eval_rows=64,
                                                 timing=TimingConfig(4, 16, rounds=1)),
                         bench=BenchConfig(isolate=False, timing=TimingConfig(4, 16, rounds=1)))
    man = compress(img, tmp_path / "img", progress=False)
    s = man["summary"]
    assert s["quantized_format"] in ("fp16", "bf16") and s["metric"] == "accuracy" and s["drop_pts"] <= 5.0
    models = json.loads((tmp_path / "img" / "report.json").read_text())["models"]
    assert [m["engine"] for m in models] == ["torch:cpu:fp32", "torch:cpu"]
