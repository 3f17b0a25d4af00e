"""nanoify quantize end to end on the tiny exported BERT: candidates, a budget that binds, mixed precision,
TensorRT files, bad inputs; and nanoify bench over torch and the quantized model."""

from __future__ import annotations

import json
import time

import onnx
import pytest
import torch

from nanoify.bench.run import benchmark, format_table
from nanoify.cli import main
from nanoify.config import BenchConfig, DataConfig, QuantizeConfig, TimingConfig
from nanoify.quant import steps
from nanoify.quant.calibrate import Range, calibrate_onnx, choose_ranges
from nanoify.quant.choose import choose
from nanoify.quant.qdq import weight_node_inputs
from nanoify.quant.run import quantize
from nanoify.quant.schemes import Float, QuantPlan, StaticQDQ, apply_plan
from nanoify.quant.steps import (
    MIN_SCREEN_ROWS,
    MIN_SENSITIVITY_ROWS,
    Candidate,
    Clock,
    _smallest_k,
    calibrate,
    evaluate_candidate,
    local_errors,
    measure_reference,
    mixed_precision,
    prepare,
    quick_rows,
    sensitivity_rows,
    units_of,
)
from nanoify.quant.targets import get_target
from nanoify.quant.tensorrt import read_calibration_cache
from nanoify.runtime.cpu import int8_report
from nanoify.tasks.resolve import resolve

FAST = TimingConfig(latency_rows=16, throughput_rows=64, rounds=1)


def _data(tiny_data):
    return DataConfig(data=str(tiny_data), max_length=32)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, tiny_export, tiny_data):
    out = tmp_path_factory.mktemp("q") / "q"
    man = quantize(tiny_export, out, calib=_data(tiny_data), progress=False,
                   config=QuantizeConfig(budget=100.0, methods=("minmax", "percentile"), calib_samples=64,
                                         timing=FAST, cpu_engine="onnxruntime",  # ORT (the choice: test_openvino)
                                         optimize="size"))  # an INT8 pick on any machine (speed could pick FP32)
    return out, man


def test_quantize_tries_every_candidate_and_writes_a_runnable_folder(quantized):
    out, man = quantized
    w7 = "-w7" if int8_report()["static_weight_bits"] == 7 else ""
    names = [c["name"] for c in man["candidates"]]
    dyn = ["dynamic-per-channel", "dynamic-per-channel-reduce-range", "dynamic-stock"]
    assert names == dyn + [f"{n}-unfused" for n in dyn] + [f"static-minmax{w7}", f"static-percentile{w7}",
                                                           "float-fp32", f"static-minmax{w7}-smooth",
                                                           f"static-percentile{w7}-smooth"]  # SmoothQuant twins
    by = {c["name"]: c for c in man["candidates"]}
    assert by["dynamic-stock"]["scheme"] == {"type": "DynamicInt8", "per_channel": False, "reduce_range": False,
                                             "graph": "fused"}
    assert man["budget_met"] and man["chosen"] in names and man["metric"] == "accuracy"
    for c in man["candidates"]:
        assert c["drop_pts"] == pytest.approx((man["reference"]["accuracy"] - c["accuracy"]) * 100)
        assert 0 <= c["top1_agreement"] <= 1 and c["file_mb"] > 0 and c["latency_ms_p50"] > 0
    ops = {n.op_type for n in onnx.load(out / man["model_file"]).graph.node}
    assert ops & {"DynamicQuantizeLinear", "QuantizeLinear"}
    ranges = json.loads((out / "ranges.json").read_text())
    assert ranges.keys() == {"minmax", "percentile"}
    assert all({"amax", "unsigned"} <= set(r) for r in ranges["minmax"].values())
    assert "(chosen)" in (out / "report.md").read_text() and (out / "hf" / "label_map.json").is_file()
    assert not (out / "candidates").exists()
    assert resolve(out).path.name == "model.int8.onnx"
    assert man["int8_cpu"]["cpu_flags"] == man["machine"]["cpu_flags"]  # CPU features in every manifest


def test_choice_follows_the_optimize_goal():

    ref = {"accuracy": 0.90, "latency_ms_p50": 10.0, "throughput_b32": 100.0, "file_mb": 100.0}
    recs = [  # a: small and quick at batch 1; b: fastest at batch 32 but big; c: out of budget
        {"accuracy": 0.897, "meets_budget": True, "latency_ms_p50": 4.0, "throughput_b32": 200.0, "file_mb": 25.0},
        {"accuracy": 0.899, "meets_budget": True, "latency_ms_p50": 6.0, "throughput_b32": 230.0, "file_mb": 60.0},
        {"accuracy": 0.850, "meets_budget": False, "latency_ms_p50": 1.0, "throughput_b32": 900.0, "file_mb": 5.0},
    ]
    assert choose(recs, ref, "balanced", "accuracy")[0] == 0  # (2.5·2·4)^⅓ = 2.71 against (1.67·2.3·1.67)^⅓ = 1.86
    assert choose(recs, ref, "latency", "accuracy")[0] == 0
    assert choose(recs, ref, "throughput", "accuracy")[0] == 1  # 230 against 200: beyond the 5% tie band
    assert choose(recs, ref, "size", "accuracy")[0] == 0
    tie = [dict(recs[0]), dict(recs[0], accuracy=0.898, throughput_b32=196.0)]  # 2% slower, more accurate
    assert choose(tie, ref, "throughput", "accuracy")[0] == 0  # a tie on fidelity: the faster one
    n = {"n": 1000}  # 10 vs 30 changed predictions is beyond noise (2·√40 = 12.6); 10 vs 14 is not
    far = [dict(recs[0], **n, top1_agreement=0.970), dict(recs[0], **n, top1_agreement=0.990, throughput_b32=196.0)]
    assert choose(far, ref, "throughput", "accuracy")[0] == 1
    near = [dict(recs[0], **n, top1_agreement=0.986), dict(recs[0], **n, top1_agreement=0.990, throughput_b32=196.0)]
    assert choose(near, ref, "throughput", "accuracy")[0] == 0
    # a detector's agreement is over its FP32 boxes, not its images: 397 of 14,000 boxes changed on 128 images is
    # far from FP32's 0 (counted in images it read 3.6 and tied), so an as-fast FP32 row wins the tie
    boxes = {"n": 128, "reference_boxes": 14000}
    det = [dict(recs[0], **boxes, box_agreement=0.9717), dict(recs[0], **boxes, box_agreement=1.0, file_mb=26.0)]
    assert choose(det, ref, "balanced", "accuracy", agree_key="box_agreement")[0] == 1
    # the tie band hangs from the fastest: a candidate half as fast is outside it, however few predictions it changes
    slow = [dict(recs[0], **n, top1_agreement=0.970), dict(recs[0], **n, top1_agreement=0.990, throughput_b32=100.0,
                                                            latency_ms_p50=8.0)]
    for goal in ("throughput", "latency", "balanced"):
        assert choose(slow, ref, goal, "accuracy")[0] == 0, goal
    idx, why = choose([recs[2]], ref, "balanced", "accuracy")
    assert idx == 0 and "NO candidate met the budget" in why
    # never slower than FP32 (size excepted): a small INT8 model that runs slower (balanced (0.625·0.75·4)^⅓ =
    # 1.23, its file size carrying it) loses to the FP32 row, and the reason says so
    small_slow = dict(recs[0], latency_ms_p50=16.0, throughput_b32=75.0, file_mb=25.0)
    fp32 = dict(recs[0], accuracy=0.90, latency_ms_p50=10.0, throughput_b32=100.0, file_mb=100.0,
                scheme={"type": "Float"})
    idx, why = choose([small_slow, fp32], ref, "balanced", "accuracy")
    assert idx == 1 and "no INT8 candidate within the budget runs faster than FP32" in why
    assert choose([small_slow, fp32], ref, "size", "accuracy")[0] == 0
    assert choose([small_slow, recs[1]], ref, "balanced", "accuracy")[0] == 1  # a faster one is preferred


def _missing_candidate(tiny_export, tiny_data, tmp_path):
    """The tiny text model's static INT8 with ranges 30× too narrow: heavy clipping makes it miss a zero-point
    budget. (src, eval rows, reference, the bad ranges, the evaluated candidate)."""
    src = prepare(tiny_export, tmp_path, get_target("cpu"))
    calib = src.task.calib_set(_data(tiny_data), 64)
    ev = src.task.eval_set(_data(tiny_data))
    hists = calibrate_onnx(src.plain, (f for _, f in src.task.batches(calib, 16)),
                           tensors=weight_node_inputs(src.graphs["plain"]))
    bad = {"minmax": {k: Range(r.amax / 30) for k, r in choose_ranges(hists, "minmax").items()}}
    ref = measure_reference(src, ev, None)
    scheme = StaticQDQ("minmax", "cpu", "weights", 8)
    cand = Candidate("static-bad", QuantPlan.uniform(scheme, units_of(src, scheme)))
    evaluate_candidate(cand, src, ev, ref, bad, tmp_path, 0.0, None)
    return src, ev, ref, bad, cand


def test_a_budget_that_binds_triggers_mixed_precision(tiny_export, tiny_data, tmp_path):
    src, ev, ref, bad, cand = _missing_candidate(tiny_export, tiny_data, tmp_path)
    assert cand.metrics["accuracy"] < ref.metrics["accuracy"] and cand.metrics["meets_budget"] is False
    mixed, plan = mixed_precision(cand, src, ev, ref, bad, tmp_path, 0.0, None, sens_rows=64)
    err = [r["output_error"] for r in plan["ranking"]]
    assert err == sorted(err, reverse=True) and len(err) == len(cand.plan.units)
    assert plan["budget_met"] and 1 <= len(mixed.plan.float_nodes) <= len(cand.plan.units)
    assert set(mixed.plan.float_nodes) == {r["node"] for r in plan["ranking"][:len(mixed.plan.float_nodes)]}
    evaluate_candidate(mixed, src, ev, ref, bad, tmp_path, 0.0, None)
    assert mixed.metrics["meets_budget"] and mixed.metrics["accuracy"] >= ref.metrics["accuracy"]
    k = len(mixed.plan.float_nodes)
    if k > 1:  # one fewer kept node misses the budget (the search is minimal)
        assert plan["metric_by_kept"][str(k - 1)] < ref.metrics["accuracy"]
    # every node kept float is the FP32 model, not "quantize everything" (ONNX Runtime's empty-list meaning)
    apply_plan(cand.plan.keep_float(cand.plan.units), src.sources, tmp_path / "none.onnx", bad)
    assert "QuantizeLinear" not in {n.op_type for n in onnx.load(tmp_path / "none.onnx").graph.node}


def test_mixed_precision_searches_on_fewer_rows_when_the_clock_is_short_and_checks_on_every_row(
        tiny_export, tiny_data, tmp_path):
    """Forced: a clock with nothing left, so the doubling and bisection run on the floor of quick rows; the answer
    is then evaluated on every row (and searched further there if it missed), and is minimal on the quick rows."""
    src, ev, ref, bad, cand = _missing_candidate(tiny_export, tiny_data, tmp_path)
    assert len(ev) > MIN_SCREEN_ROWS and not cand.metrics["meets_budget"]
    spent = Clock(1.0, start=time.time() - 10)
    assert spent.left() == 0 == spent.avail()
    mixed, plan = mixed_precision(cand, src, ev, ref, bad, tmp_path, 0.0, None, sens_rows=64, clock=spent)
    assert plan["quick_rows"] == MIN_SCREEN_ROWS and plan["quick_answer"] is not None
    k = len(mixed.plan.float_nodes)
    assert plan["budget_met"] and k >= plan["quick_answer"]
    assert str(k) in plan["metric_by_kept"]  # the answer was measured on every row
    evaluate_candidate(mixed, src, ev, ref, bad, tmp_path, 0.0, None)
    assert mixed.metrics["meets_budget"] and mixed.metrics["n"] == len(ev)
    sub = src.task.subset(ev, range(MIN_SCREEN_ROWS))  # one fewer node misses on the quick rows
    fewer = Candidate("fewer", cand.plan.keep_float([r["node"] for r in plan["ranking"]][:plan["quick_answer"] - 1]))
    evaluate_candidate(fewer, src, sub, measure_reference(src, sub, None), bad, tmp_path, 0.0, None)
    assert plan["quick_answer"] == 1 or not fewer.metrics["meets_budget"]
    # with time to spare the search runs on every row, as before
    _, full = mixed_precision(cand, src, ev, ref, bad, tmp_path, 0.0, None, sens_rows=64, clock=Clock(1e6))
    assert "quick_rows" not in full


def test_the_fp32_float_row_reuses_the_reference_pass_on_the_same_rows(tiny_export, tiny_data, tmp_path,
                                                                       monkeypatch):
    """The FP32 float candidate of the graph the reference ran, on the reference's rows, is the reference: its
    predictions are taken, not recomputed (a full pass of a 640² detector); on other rows it runs."""
    src = prepare(tiny_export, tmp_path, get_target("cpu"))
    ev = src.task.eval_set(_data(tiny_data))
    ref = measure_reference(src, ev, None)
    fp32 = Float("fp32", "fused")
    cand = Candidate(fp32.name, QuantPlan.uniform(fp32, units_of(src, fp32)))

    def no_engine(*a, **k):
        raise AssertionError("the reference's own pass ran again")

    monkeypatch.setattr(steps, "_engine", no_engine)
    evaluate_candidate(cand, src, ev, ref, {}, tmp_path, 0.0, None)
    assert cand.preds is ref.preds and cand.metrics["meets_budget"] and cand.metrics["drop_pts"] == 0
    sub = src.task.subset(ev, range(8))
    with pytest.raises(AssertionError, match="ran again"):  # other rows than the reference's: a real pass
        evaluate_candidate(cand, src, sub, ref, {}, tmp_path, 0.0, None)


def test_the_smallest_k_search_doubles_then_bisects_and_stops_early_with_a_k_that_holds():
    for need in (1, 2, 3, 5, 8, 13, 40, 41):
        calls: list[int] = []

        def ok(k: int, need: int = need, calls: list[int] = calls) -> bool:
            calls.append(k)
            return k >= need
        assert _smallest_k(ok, 41, 0, 1, None) == need
        assert len(calls) <= 2 * 6 + 2  # logarithmic in 41
    assert _smallest_k(lambda k: False, 41, 0, 1, None) is None
    assert _smallest_k(lambda k: k >= 7, 41, 5, 6, None) == 7  # a start from a hint
    assert _smallest_k(lambda k: k >= 3, 41, 0, 1, lambda: True) == 4  # stopped: the first k that held
    assert quick_rows(225, 0.15, 128, 1e9) == 128 and quick_rows(225, 0.15, 128, 0.0) == MIN_SCREEN_ROWS
    assert quick_rows(225, 0.15, 128, 60.0) == 22  # 18 evaluations × 0.15 s × 22 rows = 59.4 s
    # each evaluation also writes and compiles a graph: 18 × (1 s + 0.15 s × 37 rows) = 117.9 s ≤ 120 s
    assert quick_rows(225, 0.15, 128, 120.0) == 44 and quick_rows(225, 0.15, 128, 120.0, per_model=1.0) == 37


def test_the_sensitivity_search_shrinks_its_rows_to_fit_its_time(tiny_export, tiny_data, tmp_path):
    """Rows per node fit the time share (a 640² YOLO's 225 nodes at 60 ms a row get 22 rows in 300 s, not 128);
    forced here with a share no row fits: the floor of 8 rows, every node still ranked, the manifest says so."""
    assert sensitivity_rows(225, 0.06, 128, 300.0) == 22
    assert sensitivity_rows(10, 0.001, 256, 300.0) == 256 and sensitivity_rows(1000, 1.0, 256, 300.0) == 8
    assert sensitivity_rows(5, 1.0, 4, 1.0) == 4  # never more rows than there are
    src = prepare(tiny_export, tmp_path, get_target("cpu"))
    ev = src.task.eval_set(_data(tiny_data))
    ref = measure_reference(src, ev, None)
    scheme = StaticQDQ("minmax", "cpu", "weights", 8)
    cand = Candidate("static", QuantPlan.uniform(scheme, units_of(src, scheme)))
    calib = src.task.calib_set(_data(tiny_data), 32)
    ranges, _ = calibrate(src, calib, ("minmax",), ("weights",), True, None, False)
    evaluate_candidate(cand, src, ev, ref, ranges, tmp_path, 0.0, None)
    _, plan = mixed_precision(cand, src, ev, ref, ranges, tmp_path, 0.0, None, sens_seconds=1e-9)
    assert len(ev) > MIN_SENSITIVITY_ROWS and plan["sensitivity_rows"] == MIN_SENSITIVITY_ROWS
    assert len(plan["ranking"]) == len(cand.plan.units) and plan["sensitivity_seconds"] >= 0
    _, full = mixed_precision(cand, src, ev, ref, ranges, tmp_path, 0.0, None, sens_rows=64)
    assert full["sensitivity_rows"] == min(64, len(ev))  # the default share fits this tiny model's rows


def test_tensorrt_target_writes_qdq_cache_and_trtexec(tmp_path, tiny_export, tiny_data):
    out = tmp_path / "trt"
    man = quantize(tiny_export, out, calib=_data(tiny_data), progress=False,
                   config=QuantizeConfig(budget=100.0, target="tensorrt", methods=("percentile",), calib_samples=32))
    assert [c["name"] for c in man["candidates"]] == ["qdq-percentile", "qdq-percentile-smooth"]  # + SmoothQuant
    header, ranges = read_calibration_cache(out / "calibration.cache")
    assert header.endswith("-EntropyCalibration2") and ranges
    saved = json.loads((out / "ranges.json").read_text())["percentile"]
    for k, v in ranges.items():
        assert v == pytest.approx(saved[k]["amax"], rel=1e-6) and saved[k]["unsigned"] is False
    zps = [i for i in onnx.load(out / "model.qdq.onnx").graph.initializer if i.data_type == onnx.TensorProto.UINT8]
    assert not zps  # signed INT8 only
    sh = (out / "trtexec.sh").read_text()
    assert "--int8 --fp16" in sh and "--minShapes=input_ids:1x1," in sh and man["tensorrt"]["verified"] is False
    assert not (out / "model.int8.onnx").exists() and resolve(out).path.name == "model.qdq.onnx"


def test_quantize_bad_inputs_are_one_line_and_keep_previous_output(tmp_path, tiny_export, tiny_data, capsys,
                                                                     quantized):
    prev, man = quantized
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
    # an already quantized model: one line, not a traceback from calibration
    assert main(["quantize", str(prev), "--calib", str(tiny_data), "--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err.strip()
    assert "already quantized" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in prev.iterdir()) == before


def test_bench_torch_against_quantized(tmp_path, tiny_teacher, tiny_data, quantized, capsys):
    qout, _ = quantized
    out = tmp_path / "bench"
    assert main(["bench", str(tiny_teacher), str(qout), "--data", str(tiny_data), "--out", str(out),
                 "--streams", "2", "--latency-rows", "20", "--throughput-rows", "64", "--max-length", "32",
                 "--rounds", "1"]) == 0
    table = capsys.readouterr().out
    for row in ("latency b1 p99 (ms)", "throughput b32 fixed shape", "peak RSS (MB)", "energy (mJ/row) | n/a",
                "top-1 agreement with baseline", "predictions changed vs baseline", "streams: rows/s", "change"):
        assert row in table, row
    rep = json.loads((out / "report.json").read_text())
    base, q = rep["models"]
    assert base["engine"] == "torch" and q["engine"] == "onnxruntime"
    assert q["top1_agreement"] >= 0.9 and q["streams"]["requests"] == 20
    assert q["predictions_changed"] == round((1 - q["top1_agreement"]) * base["n"])
    assert base["peak_rss_mb"] > 0 and q["file_mb"] < base["file_mb"] * 1.5
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_restores_torch_threads_and_reports_noise(tiny_teacher, tiny_data):
    torch.set_num_threads(1)
    rep = benchmark([str(tiny_teacher)], _data(tiny_data), progress=False,
                    config=BenchConfig(isolate=False, repeats=3, timing=TimingConfig(8, 32, rounds=2)))
    assert torch.get_num_threads() == 1  # what bench changes, it restores
    m = rep["models"][0]
    assert len(m["throughput_runs"]) == 3 and m["throughput_b32"] == sorted(m["throughput_runs"])[1]
    assert "median of 3 interleaved runs" in format_table(rep)
    noisy = dict(rep, models=[dict(m, noise=["batch throughput varied 40% between rounds"])])
    assert "Noisy machine" in format_table(noisy) and "40%" in format_table(noisy)


def test_bench_errors(tmp_path, tiny_teacher, tiny_data, capsys):
    assert main(["bench", str(tiny_teacher), "--data", str(tiny_data), "--max-length", "100"]) == 2
    assert "longer than" in capsys.readouterr().err
    assert main(["bench", str(tiny_teacher), "--data", str(tiny_data), "--engine", "tensorrt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nanoify: error:") and len(err.strip().splitlines()) == 1
    assert main(["bench", str(tmp_path / "nope"), "--data", str(tiny_data)]) == 2


def test_one_split_rule_for_data_with_train_and_test_only(tmp_path, tiny_teacher, tiny_export, tiny_data, capsys):
    """TREC ships train and test files only: every command evaluates on test (validation, else test)."""
    import shutil

    d = tmp_path / "trec_like"
    d.mkdir()
    shutil.copy(tiny_data / "train.tsv", d / "train.tsv")
    shutil.copy(tiny_data / "validation.tsv", d / "test.tsv")
    assert main(["evaluate", str(tiny_teacher), "--data", str(d), "--max-length", "32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["split"] == "test"
    man = quantize(tiny_export, tmp_path / "q", calib=DataConfig(data=str(d), max_length=32), progress=False,
                   config=QuantizeConfig(budget=100.0, methods=("minmax",), calib_samples=32, timing=FAST))
    assert man["data"]["eval"].endswith("(test)") and man["data"]["calibration"].endswith("(train)")
    assert main(["bench", str(tmp_path / "q"), "--data", str(d), "--max-length", "32", "--json", "--rounds", "1",
                 "--latency-rows", "8", "--throughput-rows", "32"]) == 0
    assert json.loads(capsys.readouterr().out)["split"] == "test"


def test_one_pass_ranking_puts_the_node_that_adds_the_error_first(tiny_export, tiny_data, tmp_path):
    """When per-node trials cannot fit their time (forced: a share no trial fits), every node is ranked from one
    pass of the fully quantized graph by the error it adds; a node whose input range is planted 50× too narrow
    must come first."""

    src = prepare(tiny_export, tmp_path, get_target("cpu"))
    calib = src.task.calib_set(_data(tiny_data), 64)
    ev = src.task.eval_set(_data(tiny_data))
    hists = calibrate_onnx(src.plain, (f for _, f in src.task.batches(calib, 16)),
                           tensors=weight_node_inputs(src.graphs["plain"]))
    good = choose_ranges(hists, "minmax")
    scheme = StaticQDQ("minmax", "cpu", "weights", 8)
    cand = Candidate("static", QuantPlan.uniform(scheme, units_of(src, scheme)))
    nodes = {n.name: n for n in src.graphs["plain"].graph.node}
    readers = {}
    for n in src.graphs["plain"].graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    # a node that alone reads its input (Q, K and V share theirs: a narrow range there hurts all three)
    victim = [u for u in cand.plan.units if readers[nodes[u].input[0]] == 1][1]
    planted = {"minmax": {**good, nodes[victim].input[0]: Range(good[nodes[victim].input[0]].amax / 50)}}
    ranking = local_errors(cand, src, src.task.subset(ev, range(16)), planted, tmp_path, None)
    assert [u for u, _ in ranking][0] == victim and len(ranking) == len(cand.plan.units)
    ref = measure_reference(src, ev, None)
    evaluate_candidate(cand, src, ev, ref, planted, tmp_path, 0.0, None)
    _, plan = mixed_precision(cand, src, ev, ref, planted, tmp_path, 0.0, None, sens_seconds=1e-9)
    assert plan["ranking_method"].startswith("one pass") and plan["ranking"][0]["node"] == victim
