"""nanoify quantize end to end on the tiny exported BERT: candidates, choice, mixed precision, TensorRT
files, bad inputs; and nanoify bench over torch and the quantized model."""

from __future__ import annotations

import json

import onnx
import pytest

from nanoify.cli import main
from nanoify.config import DataConfig
from nanoify.models.resolve import resolve
from nanoify.quant.run import Candidate, _load_sets, measure, mixed_precision, quantize
from nanoify.quant.tensorrt import read_calibration_cache


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, tiny_export, tiny_data):
    out = tmp_path_factory.mktemp("q") / "q"
    man = quantize(tiny_export, out, calib=DataConfig(data=str(tiny_data), max_length=32), budget=100.0,
                   methods=("minmax", "percentile"), calib_samples=64, progress=False)
    return out, man


def test_quantize_tries_every_candidate_and_keeps_the_fastest_within_budget(quantized):
    out, man = quantized
    names = [c["name"] for c in man["candidates"]]
    assert names == ["dynamic-per-channel", "dynamic-per-channel-reduce-range", "dynamic-stock",
                     "static-minmax", "static-percentile"]
    ok = [c for c in man["candidates"] if c["meets_budget"]]
    top = max(c["throughput_b32"] for c in ok)
    band = [c for c in ok if c["throughput_b32"] >= top * 0.95]  # speed ties go to the smaller file
    want = min(band, key=lambda c: (round(c["file_mb"], 1), -c["accuracy"]))
    assert man["budget_met"] and man["chosen"] == want["name"] and "within 5% of the fastest" in man["why"]
    for c in man["candidates"]:
        assert c["accuracy_drop_pts"] == pytest.approx((man["reference"]["accuracy"] - c["accuracy"]) * 100)
        assert 0 <= c["top1_agreement"] <= 1 and c["file_mb"] > 0
    ops = {n.op_type for n in onnx.load(out / man["model_file"]).graph.node}
    assert ops & {"DynamicQuantizeLinear", "QuantizeLinear"}
    assert json.loads((out / "ranges.json").read_text()).keys() == {"minmax", "percentile"}
    assert "(chosen)" in (out / "report.md").read_text() and (out / "hf" / "label_map.json").is_file()
    assert not (out / "candidates").exists()
    assert resolve(out).path.name == "model.int8.onnx"


def test_mixed_precision_keeps_sensitive_nodes_until_the_budget_holds(tiny_export, tiny_data, tmp_path):
    from nanoify.quant.calibrate import calibrate_onnx, choose_ranges
    from nanoify.quant.qdq import quantizable_nodes, quantize_static_qdq, weight_node_inputs

    ref = resolve(tiny_export)
    calib, ev = _load_sets(ref.tokenizer_dir, ref.label_map.names, DataConfig(data=str(tiny_data), max_length=32),
                           DataConfig(data=str(tiny_data), max_length=32), 64, ref.max_sequence, None)
    plain = tiny_export / "model.onnx"
    model = onnx.load(plain)
    from nanoify.bench.latency import make_batches

    hists = calibrate_onnx(plain, make_batches(calib, 16, ev.pad_id), tensors=weight_node_inputs(model))
    # ranges 30× too narrow: heavy clipping makes the all-INT8 model miss a zero-point budget
    bad = {k: v / 30 for k, v in choose_ranges(hists, "minmax").items()}

    def make(excl, dst):
        quantize_static_qdq(plain, dst, bad, exclude_nodes=excl)

    cand = Candidate("static-bad", "static-qdq", {}, make, quantizable_nodes(model))
    fp32 = measure(plain, ev, None)
    ev.reference = fp32.pop("_logits")
    make([], tmp_path / "all.onnx")
    assert measure(tmp_path / "all.onnx", ev, None)["accuracy"] < fp32["accuracy"]
    mixed, plan = mixed_precision(cand, ev, fp32["accuracy"], 0.0, tmp_path, None, sens_rows=64)
    mse = [r["logit_mse"] for r in plan["ranking"]]
    assert mse == sorted(mse, reverse=True) and len(mse) == len(cand.units)
    assert plan["budget_met"] and 1 <= len(mixed.excluded) <= len(cand.units)
    assert mixed.excluded == [r["node"] for r in plan["ranking"][:len(mixed.excluded)]]
    make(mixed.excluded, tmp_path / "mixed.onnx")
    assert measure(tmp_path / "mixed.onnx", ev, None)["accuracy"] >= fp32["accuracy"]
    if len(mixed.excluded) > 1:  # one fewer kept node misses the budget (the search is minimal)
        assert plan["accuracy_by_kept"][str(len(mixed.excluded) - 1)] < fp32["accuracy"]


def test_tensorrt_target_writes_qdq_cache_and_trtexec(tmp_path, tiny_export, tiny_data):
    out = tmp_path / "trt"
    man = quantize(tiny_export, out, calib=DataConfig(data=str(tiny_data), max_length=32), budget=100.0,
                   target="tensorrt", methods=("percentile",), calib_samples=32, progress=False)
    assert [c["name"] for c in man["candidates"]] == ["qdq-percentile"]
    header, ranges = read_calibration_cache(out / "calibration.cache")
    assert header.endswith("-EntropyCalibration2") and ranges
    saved = json.loads((out / "ranges.json").read_text())["percentile"]
    for k, v in ranges.items():
        assert v == pytest.approx(saved[k], rel=1e-6)
    zps = [i for i in onnx.load(out / "model.qdq.onnx").graph.initializer if i.data_type == onnx.TensorProto.UINT8]
    assert not zps  # signed INT8 only
    assert "--int8 --fp16" in (out / "trtexec.sh").read_text() and man["tensorrt"]["verified"] is False
    assert not (out / "model.int8.onnx").exists() and resolve(out).path.name == "model.qdq.onnx"


def test_quantize_bad_inputs_are_one_line_and_keep_previous_output(tmp_path, tiny_export, tiny_data, capsys,
                                                                     quantized):
    prev, _ = quantized
    before = sorted(p.name for p in prev.iterdir())
    args = ["quantize", str(tiny_export), "--calib", str(tiny_data), "--out", str(prev)]
    assert main(args + ["--max-length", "100"]) == 2  # the tiny model has 64 positions
    err = capsys.readouterr().err.strip()
    assert "longer than the model allows (64 positions)" in err and len(err.splitlines()) == 1
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.onnx").write_bytes(b"garbage")
    import shutil

    shutil.copytree(tiny_export / "hf", bad / "hf")
    assert main(["quantize", str(bad / "model.onnx"), "--calib", str(tiny_data), "--out", str(prev)]) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err
    assert main(args + ["--methods", "kl"]) == 2
    assert "unknown calibration method" in capsys.readouterr().err
    assert sorted(p.name for p in prev.iterdir()) == before


def test_bench_torch_against_quantized(tmp_path, tiny_teacher, tiny_data, quantized, capsys):
    qout, _ = quantized
    out = tmp_path / "bench"
    assert main(["bench", str(tiny_teacher), str(qout), "--data", str(tiny_data), "--out", str(out),
                 "--streams", "2", "--latency-rows", "20", "--throughput-rows", "64", "--max-length", "32"]) == 0
    table = capsys.readouterr().out
    for row in ("latency b1 p99 (ms)", "throughput b32 len 128", "peak RSS (MB)", "energy (mJ/row) | n/a",
                "top-1 agreement with baseline", "streams: rows/s", "change"):
        assert row in table
    rep = json.loads((out / "report.json").read_text())
    base, q = rep["models"]
    assert base["engine"] == "torch" and q["engine"] == "onnxruntime"
    assert q["top1_agreement"] >= 0.9 and q["streams"]["requests"] == 20
    assert base["peak_rss_mb"] > 0 and q["file_mb"] < base["file_mb"] * 1.5
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_errors(tmp_path, tiny_teacher, tiny_data, capsys):
    assert main(["bench", str(tiny_teacher), "--data", str(tiny_data), "--max-length", "100"]) == 2
    assert "longer than" in capsys.readouterr().err
    assert main(["bench", str(tiny_teacher), "--data", str(tiny_data), "--engine", "tensorrt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nanoify: error:") and len(err.strip().splitlines()) == 1
    assert main(["bench", str(tmp_path / "nope"), "--data", str(tiny_data)]) == 2


def test_bench_repeats_are_interleaved_and_reported_as_medians(tiny_teacher, tiny_data):
    from nanoify.bench.run import benchmark, format_table

    rep = benchmark([str(tiny_teacher)], DataConfig(data=str(tiny_data), max_length=32), repeats=3,
                    latency_rows=8, throughput_rows=32, isolate=False, progress=False)
    m = rep["models"][0]
    assert len(m["throughput_b32_runs"]) == 3 and m["throughput_b32"] == sorted(m["throughput_b32_runs"])[1]
    assert "medians of 3 interleaved runs" in format_table(rep)
