"""The OpenVINO engine and ``quantize --target openvino`` on the tiny CNN (in-process data, no ../shared):
the engine agrees with ONNX Runtime on the FP32 graph, the target's candidates are measured in OpenVINO, the
chosen Q/DQ graph is written with its IR, the IR runs the same numbers, INT8 is read from what OpenVINO compiled,
and bench runs the output on OpenVINO by default."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import nanoify.quant.engine_choice as ec
import nanoify.quant.run as run
import nanoify.quant.steps as steps
from nanoify.bench.run import measure_model
from nanoify.cli import main
from nanoify.config import QuantizeConfig, TimingConfig
from nanoify.engines import EngineUnavailable, open_engine, parse_engine_spec
from nanoify.errors import ConfigError, ModelError
from nanoify.quant.calibrate import Range
from nanoify.quant.run import quantize
from nanoify.quant.schemes import Float, QuantPlan, StaticQDQ, apply_plan
from nanoify.quant.steps import Candidate, calibrate, prepare, units_of
from nanoify.quant.targets import get_target
from nanoify.runtime.cpu import int8_report
from nanoify.tasks import make_task
from nanoify.tasks.resolve import resolve

NEAREST = ("nearest",)  # learned rounding, bias correction: own tests (numerical/), skip their cost
PLAIN = {"rounding": NEAREST, "bias_correction": False}  # nearest rounding, biases as they are

pytest.importorskip("openvino")
# the optional backend itself: importable only where openvino is (the skip above)
from nanoify.engines.openvino_engine import (  # noqa: E402
    compiled_info,
    cpu_capabilities,
    int8_compute_layers,
    save_ir,
)

FAST = TimingConfig(latency_rows=8, throughput_rows=32, rounds=1)


def _feed(rows: int = 3) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(0).normal(size=(rows, 3, 16, 16)).astype(np.float32)}  # tiny CNN: 16²


def test_openvino_engine_agrees_with_onnxruntime(tiny_cnn_export):
    path = str(tiny_cnn_export / "model.onnx")
    with open_engine("openvino", path, threads=1) as ov_eng, open_engine("onnxruntime", path) as ort_eng:
        assert {k: v[1] for k, v in ov_eng.input_spec().items()} == {k: v[1] for k, v in ort_eng.input_spec().items()}
        for rows in (1, 3):  # a dynamic batch
            a, b = ov_eng.infer(_feed(rows)), ort_eng.infer(_feed(rows))
            assert a.keys() == b.keys()
            for k in a:
                np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-4)
        first = ov_eng.infer(_feed())["logits"]
        ov_eng.infer({"input": np.zeros((3, 3, 16, 16), np.float32)})
        np.testing.assert_array_equal(first, ov_eng.infer(_feed())["logits"])  # outputs are copies, not views
        precs = ov_eng.layer_precisions()
        assert precs.get("Convolution") and not {"Input", "Const"} & set(precs), precs  # compute layers only
        assert not any(p in ("u8", "i8") for c in precs.values() for p in c)  # an FP32 graph runs no INT8 layer


def test_an_fp32_encoder_counts_no_int8_compute_layer(tiny_export):
    """An FP32 encoder's mask arithmetic runs on u8/i8 data in OpenVINO; only convolutions and matrix multiplies
    count as INT8 layers, so an FP32 model reads 0 (it read 8 for the FP32 MiniLM before)."""

    with open_engine("openvino", str(tiny_export / "model.onnx"), threads=1) as eng:
        precs = eng.layer_precisions()
        int8, compute = eng.int8_counts()
    assert compute > 0 and int8 == 0, precs
    assert int8_compute_layers({"MatMul": {"u8": 2, "f32": 1}, "Convert": {"u8": 5}}) == (2, 3)


def test_openvino_options_and_bad_input_are_one_line(tiny_cnn_export, monkeypatch, tmp_path):

    assert parse_engine_spec("openvino:bf16") == ("openvino", {"dtype": "bf16"})
    path = str(tiny_cnn_export / "model.onnx")
    with pytest.raises(EngineUnavailable, match="fp32 or bf16"), open_engine("openvino", path, dtype="fp16"):
        pass
    if "BF16" not in cpu_capabilities():
        with pytest.raises(EngineUnavailable, match="no BF16"), open_engine("openvino", path, dtype="bf16"):
            pass
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="OpenVINO cannot read"), open_engine("openvino", str(bad)):
        pass
    import openvino as ov

    def no_kernel(*args, **kwargs):
        raise RuntimeError("Unsupported operation Foo of type Bar\n(a long OpenVINO trace)")

    with monkeypatch.context() as m:  # an operation the CPU plugin cannot compile: one line, the way out named
        m.setattr(ov.Core, "compile_model", no_kernel)
        with pytest.raises(ModelError, match=r"cannot compile .*Unsupported operation Foo.*onnxruntime$"), \
                open_engine("openvino", path):
            pass
    real = ("Exception from src/inference/src/cpp/core.cpp:84:\nCheck 'false' failed at src/frontends/common_"
            "translators/src/unconverted_ops_report.cpp:151:\nFrontEnd API failed with OpConversionFailure:\nModel "
            "wasn't fully converted.\nSummary:\n-- No conversion rule found for operations: com.microsoft.QAttention\n")

    def no_rule(*args, **kwargs):  # OpenVINO 2026.4's words for ONNX Runtime's dynamic-INT8 attention
        raise RuntimeError(real)

    with monkeypatch.context() as m:  # the line that says what is wrong, not the source location before it
        m.setattr(ov.Core, "read_model", no_rule)
        with pytest.raises(ModelError, match=r"cannot read .*: No conversion rule found for operations: "
                                             r"com\.microsoft\.QAttention$"), open_engine("openvino", path):
            pass
    chosen_bf16 = tmp_path / "bf16"  # a folder whose quantization.json names BF16 runs in BF16 by default
    chosen_bf16.mkdir()
    shutil.copy(path, chosen_bf16 / "model.onnx")
    (chosen_bf16 / "quantization.json").write_text(json.dumps({"kind": "precision", "format": "bf16"}))
    bf16_model = str(chosen_bf16 / "model.onnx")
    if "BF16" in cpu_capabilities():
        with open_engine("openvino", bf16_model) as eng:
            assert eng.dtype == "bf16"
    else:
        with pytest.raises(EngineUnavailable, match="no BF16"), open_engine("openvino", bf16_model):
            pass
    monkeypatch.setitem(sys.modules, "nanoify.engines.openvino_engine", None)  # as if openvino were missing
    with pytest.raises(EngineUnavailable, match="pip install openvino"):
        open_engine("openvino", path)


def test_quantize_for_openvino_writes_qdq_and_ir_measured_in_openvino(tmp_path, tiny_cnn_export, tiny_images,
                                                                     monkeypatch):

    real = run.choose  # the pick forced to a Q/DQ candidate: its writing is under test (the BF16 row is an IR)
    monkeypatch.setattr(run, "choose", lambda recs, *a, **k: (
        next(i for i, r in enumerate(recs) if r["name"].startswith("static-")), real(recs, *a, **k)[1]))
    out = tmp_path / "ov"
    man = quantize(tiny_cnn_export, out, calib=str(tiny_images), progress=False, target="openvino",
                   config=QuantizeConfig(**PLAIN, budget=2.0, methods=("mse", "minmax"), timing=FAST))
    names = [c["name"] for c in man["candidates"]]
    w7 = "-w7" if int8_report()["static_weight_bits"] == 7 else ""  # the probe's width: OpenVINO saturates alike
    assert names[:4] == [f"static-mse{w7}", f"static-minmax{w7}", f"static-mse-all-ops{w7}",
                         f"static-minmax-all-ops{w7}"], names
    assert "float-fp32" in names and ("float-bf16" in names) == ("BF16" in cpu_capabilities())  # float rows too
    fp32 = next(c for c in man["candidates"] if c["name"] == "float-fp32")
    assert fp32["fp32_nodes"] == [] and fp32["top1_agreement"] >= 0.99  # OpenVINO FP32 ≈ ONNX Runtime FP32
    assert all("latency_ms_p50" in c for c in man["candidates"])  # timed, in OpenVINO
    assert man["engine"] == "openvino" and man["model_file"] == "model.qdq.onnx"
    assert (out / "model.qdq.onnx").is_file() and (out / "model.xml").is_file() and (out / "model.bin").is_file()
    info = man["openvino"]
    assert info["ir"] == "model.xml" and info["int8_layers"] > 0  # INT8 read from the compiled model
    assert any("u8" in c or "i8" in c for c in info["layer_precisions"].values())
    with open_engine("openvino", str(out / "model.xml")) as ir, \
            open_engine("openvino", str(out / "model.qdq.onnx")) as qdq:
        np.testing.assert_allclose(ir.infer(_feed())["logits"], qdq.infer(_feed())["logits"], rtol=1e-5, atol=1e-5)
    assert resolve(out).engine == "openvino"
    res, _ = measure_model(str(out), str(tiny_images), timing=FAST)
    assert res["engine"] == "openvino" and res["accuracy"] > 0.8
    assert res["int8_layers"] > 0 and res["precision"] == "fp32"  # bench reads what OpenVINO compiled too


def test_an_openvino_measurement_does_not_load_torch(tiny_cnn_export, tiny_images):
    """As for ONNX Runtime (test_vision.py): bench's process measuring a model in OpenVINO carries no torch."""
    code = ("import json, sys\n"
            "from nanoify.bench.run import measure_model\n"
            "from nanoify.config import TimingConfig\n"
            f"res, _ = measure_model({str(tiny_cnn_export / 'model.onnx')!r}, {str(tiny_images)!r}, engine='openvino',"
            " timing=TimingConfig(4, 8, rounds=1, batch=4))\n"
            "print(json.dumps({'engine': res['engine'], 'torch': 'torch' in sys.modules}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"engine": "openvino", "torch": False}


def test_an_openvino_ir_resolves_and_benches_on_openvino(tmp_path, tiny_cnn_export, tiny_images):
    """An IR file (NNCF's output, or nanoify's) is a model argument like an ONNX file: its task told from its
    inputs, run by OpenVINO by default, its preprocessing and labels read from beside it."""
    import openvino as ov

    folder = tmp_path / "ir"
    folder.mkdir()
    ov.save_model(ov.Core().read_model(str(tiny_cnn_export / "model.onnx")), str(folder / "model.xml"))
    for f in ("preprocess.json", "label_map.json"):
        shutil.copy(tiny_cnn_export / f, folder / f)
    ref = resolve(folder / "model.xml")
    assert ref.engine == "openvino" and ref.task == "image-classification" and ref.labels
    res, _ = measure_model(str(folder / "model.xml"), str(tiny_images), timing=FAST)
    ort, _ = measure_model(str(tiny_cnn_export / "model.onnx"), str(tiny_images), timing=FAST)
    assert res["engine"] == "openvino" and abs(res["accuracy"] - ort["accuracy"]) <= 0.02
    ir_bytes = (folder / "model.xml").stat().st_size + (folder / "model.bin").stat().st_size
    assert res["file_mb"] == ir_bytes / 1e6  # the size column counts the weights in the .bin


def test_compress_on_the_openvino_target(tmp_path, tiny_cnn, tiny_images, capsys):
    """The whole chain with ``quantize.target: openvino``: the quantized stage holds the IR, bench runs the
    compressed model on OpenVINO against the PyTorch baseline, and the report says so."""
    from tests.conftest import image_recipe

    recipe = image_recipe(tmp_path, tiny_cnn, tiny_images, "{target: openvino, rounding: [nearest], budget: 3.0, "
                          "methods: [mse], "
                          "timing: {latency_rows: 8, throughput_rows: 32, rounds: 1}}")
    assert main(["compress", str(recipe)]) == 0
    out = tmp_path / "out"
    assert (out / "quantized" / "model.xml").is_file()
    man = json.loads((out / "manifest.json").read_text())
    assert man["summary"]["compressed_engine"] == "openvino"
    rep = (out / "report.md").read_text()
    assert ", OpenVINO)" in rep and "ONNX Runtime INT8" not in rep


def test_bench_streams_on_openvino_use_its_async_queue(tiny_cnn_export, tiny_images):
    """``bench --streams N`` on OpenVINO: one model compiled for N streams (THROUGHPUT hint) serving every request
    through an AsyncInferQueue, with the same result fields as the thread-per-engine path."""
    res, _ = measure_model(str(tiny_cnn_export / "model.onnx"), str(tiny_images), engine="openvino", streams=2,
                           timing=FAST)
    s = res["streams"]
    assert s["streams"] == 2 and "AsyncInferQueue" in s["served_by"] and s["requests"] == FAST.latency_rows
    assert s["throughput_rows_s"] > 0 and 0 < s["latency_ms_p50"] <= s["latency_ms_p99"]


def test_target_openvino_without_openvino_is_one_line(tmp_path, tiny_cnn_export, tiny_images, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    assert main(["quantize", str(tiny_cnn_export), "--calib", str(tiny_images), "--target", "openvino",
                 "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--target openvino needs OpenVINO" in err[0] and not (tmp_path / "q").exists()


def test_nncf_rows_are_measured_beside_nanoify_and_a_chosen_nncf_model_is_its_ir(tmp_path, tiny_cnn_export,
                                                                                  tiny_images, monkeypatch):
    """With nncf installed the openvino target measures NNCF's own INT8 (default and MIXED presets) on nanoify's
    calibration rows beside its candidates; when the chooser picks one, the output is NNCF's IR (no Q/DQ ONNX
    exists for it), named by the manifest, resolved and benched on OpenVINO like any output."""
    pytest.importorskip("nncf")
    real = run.choose
    monkeypatch.setattr(run, "choose", lambda recs, *a, **k: (  # force the pick: what is written is under test
        next(i for i, r in enumerate(recs) if r["name"] == "nncf-default"), real(recs, *a, **k)[1]))
    out = tmp_path / "ov-nncf"
    man = quantize(tiny_cnn_export, out, calib=str(tiny_images), progress=False, target="openvino",
                   config=QuantizeConfig(**PLAIN, budget=5.0, methods=("minmax",), timing=FAST))
    rows = {c["name"]: c for c in man["candidates"]}
    assert {"nncf-default", "nncf-mixed"} <= set(rows) and man["own_formats"]["nncf_failed"] == []
    made = rows["nncf-default"]["scheme"]
    assert made["made_by"] == "nncf.quantize" and made["preset"] == "PERFORMANCE" and made["model_type"] is None
    assert made["calibration_rows"] == man["calibration"]["samples"]  # nanoify's calibration rows, not NNCF's own
    assert rows["nncf-mixed"]["scheme"]["preset"] == "MIXED" and "latency_ms_p50" in rows["nncf-mixed"]  # timed
    assert man["chosen"] == "nncf-default" and man["model_file"] == "model.xml" and man["engine"] == "openvino"
    assert (out / "model.xml").is_file() and (out / "model.bin").is_file() and not (out / "model.qdq.onnx").exists()
    assert man["openvino"]["made_by"] == "nncf.quantize" and man["openvino"]["int8_layers"] > 0
    assert resolve(out).engine == "openvino" and resolve(out).path.name == "model.xml"
    res, _ = measure_model(str(out), str(tiny_images), timing=FAST)
    assert res["engine"] == "openvino" and res["int8_layers"] > 0
    assert abs(res["accuracy"] - rows["nncf-default"]["accuracy"]) <= 0.02
    assert "nncf-default **(chosen)**" in (out / "report.md").read_text()


def test_the_bf16_row_is_an_ir_with_fp16_weights_measured_and_written_as_such(tmp_path, tiny_cnn_export,
                                                                             tiny_images, monkeypatch):
    """OpenVINO's BF16 row is the IR OpenVINO itself would save (weights stored FP16: half the FP32 file), and that
    very file is what is evaluated, timed and — when chosen — written and benched in BF16. Writing it needs no BF16
    CPU (checked everywhere); running it does (the rest is skipped on CPUs without AVX512-BF16 or AMX)."""
    import onnx


    src = prepare(tiny_cnn_export, tmp_path / "src", get_target("openvino"))
    weights = sum(i.ByteSize() for i in onnx.load(str(src.plain)).graph.initializer)
    c = Candidate("float-bf16", QuantPlan.uniform(Float("bf16"), []))
    path = get_target("openvino").write_candidate(c, src, tmp_path, {})
    assert path.suffix == ".xml" and not (tmp_path / "float-bf16.onnx").exists()
    assert abs(path.with_suffix(".bin").stat().st_size - weights / 2) < 0.05 * weights  # FP16-stored weights
    fp32 = get_target("openvino").write_candidate(Candidate("float-fp32", QuantPlan.uniform(Float("fp32"), [])),
                                                  src, tmp_path, {})
    assert fp32.suffix == ".onnx"  # the FP32 row stays the graph the reference ran
    if "BF16" not in cpu_capabilities():
        pytest.skip("this CPU has no BF16 (AVX512-BF16 or AMX): OpenVINO cannot run the BF16 row here")
    real = run.choose
    monkeypatch.setattr(run, "choose", lambda recs, *a, **k: (  # force the pick: what is written is under test
        next(i for i, r in enumerate(recs) if r["name"] == "float-bf16"), real(recs, *a, **k)[1]))
    monkeypatch.setitem(sys.modules, "nncf", None)  # no NNCF rows: not under test here
    out = tmp_path / "ov-bf16"
    man = quantize(tiny_cnn_export, out, calib=str(tiny_images), progress=False, target="openvino",
                   config=QuantizeConfig(**PLAIN, budget=5.0, methods=("minmax",), timing=FAST))
    rows = {c["name"]: c for c in man["candidates"]}
    assert rows["float-bf16"]["file_mb"] < rows["float-fp32"]["file_mb"]  # (the tiny CNN's .xml is most of it)
    assert abs((out / "model.bin").stat().st_size - weights / 2) < 0.05 * weights
    assert man["chosen"] == "float-bf16" and man["model_file"] == "model.xml" and man["engine"] == "openvino"
    assert not (out / "model.qdq.onnx").exists() and man["openvino"]["weights"] == "fp16"
    assert man["openvino"]["precision"] == "bf16" and json.loads((out / "quantization.json").read_text())[
        "format"] == "bf16"
    res, _ = measure_model(str(out), str(tiny_images), timing=FAST)
    assert res["engine"] == "openvino" and res["precision"] == "bf16"
    assert res["accuracy"] == rows["float-bf16"]["accuracy"]  # the written file is the one measured


def test_without_nncf_the_openvino_search_says_there_is_no_nncf_row(tmp_path, tiny_cnn_export, tiny_images,
                                                                    monkeypatch):
    monkeypatch.setitem(sys.modules, "nncf", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "nanoify.quant.nncf_int8", raising=False)
    monkeypatch.delattr("nanoify.quant.nncf_int8", raising=False)
    man = quantize(tiny_cnn_export, tmp_path / "q", calib=str(tiny_images), progress=False, target="openvino",
                   config=QuantizeConfig(**PLAIN, budget=5.0, methods=("minmax",), timing=FAST))
    assert not any(c["name"].startswith("nncf") for c in man["candidates"])
    assert "pip install nncf" in man["own_formats"]["skipped"]
    assert "no NNCF row" in (tmp_path / "q" / "report.md").read_text()


def test_nncf_ignored_scope_takes_onnx_node_names(tmp_path, tiny_cnn_export, tiny_images):
    """nanoify names nodes as the ONNX graph does; NNCF's ignored scope must keep exactly those float in what
    OpenVINO compiles (a Conv with a bias is two OpenVINO ops: both are ignored)."""
    pytest.importorskip("nncf")
    import onnx

    from nanoify.quant.nncf_int8 import quantize_ir

    src = tiny_cnn_export / "model.onnx"
    convs = tuple(n.name for n in onnx.load(str(src)).graph.node if n.op_type == "Conv")
    task = make_task(resolve(tiny_cnn_export))
    feeds = [f for _, f in task.batches(task.calib_set(str(tiny_images), 16), 1)]
    quantize_ir(src, feeds, tmp_path / "a" / "m.xml")
    # NNCF's default quantizes every convolution
    assert compiled_info(tmp_path / "a" / "m.xml", quantized=convs)["kept_float"] == []
    made = quantize_ir(src, feeds, tmp_path / "b" / "m.xml", ignored=convs[:2])
    part = compiled_info(tmp_path / "b" / "m.xml", quantized=convs)
    assert made["ignored_scope"] == list(convs[:2]) and part["kept_float"] == list(convs[:2])


def test_a_quantized_node_openvino_keeps_float_is_named(tmp_path, tiny_cnn_export, tiny_images):
    """The check behind the manifest's warning: of the compute nodes a graph is said to quantize, those OpenVINO
    compiled in float are named (here one Conv left without Q/DQ, claimed as quantized)."""

    src = prepare(tiny_cnn_export, tmp_path, get_target("openvino"))
    calib = src.task.calib_set(str(tiny_images), 32)
    ranges, _ = calibrate(src, calib, ("minmax",), ("weights",), True, None, False)
    scheme = StaticQDQ("minmax", "cpu", "weights", 8)
    units = units_of(src, scheme)
    c = Candidate("one-float", QuantPlan.uniform(scheme, units).keep_float(units[:1]))
    apply_plan(c.plan, src.sources, tmp_path / "q.onnx", ranges)
    info = save_ir(tmp_path / "q.onnx", tmp_path / "q.xml", quantized=tuple(units))
    assert info["kept_float"] == units[:1] and info["int8_layers"] > 0
    assert compiled_info(tmp_path / "q.xml", quantized=tuple(units[1:]))["kept_float"] == []


def test_mixed_precision_runs_on_the_openvino_target_and_feeds_nncf_ignored_scope(tmp_path, tiny_cnn_export,
                                                                                   tiny_images, monkeypatch):
    """A float row meets any budget; it must not stop the sensitivity search when no INT8 candidate does (forced
    here with ranges 30× too narrow); the nodes it keeps float become NNCF's ignored scope in a third NNCF row."""
    real = steps.choose_ranges
    monkeypatch.setattr(steps, "choose_ranges", lambda *a, **k: {
        t: Range(r.amax / 30) for t, r in real(*a, **k).items()})
    man = quantize(tiny_cnn_export, tmp_path / "q", calib=str(tiny_images), progress=False, target="openvino",
                   config=QuantizeConfig(**PLAIN, budget=0.0, methods=("minmax",), timing=FAST))
    int8 = [c for c in man["candidates"] if c["name"].startswith("static-minmax") and "+fp32" not in c["name"]]
    assert int8 and not any(c["meets_budget"] for c in int8)  # the forced situation
    mp = man["mixed_precision"]
    assert mp is not None and mp["kept_fp32"] and any("+fp32[" in c["name"] for c in man["candidates"])
    if importlib.util.find_spec("nncf") is not None:
        ign = [c for c in man["candidates"] if c["name"].startswith("nncf-default+ignored")]
        assert len(ign) == 1 and set(mp["kept_fp32"]) <= set(ign[0]["scheme"]["ignored_scope"])


def _speeds(ort_ms: float, ov_ms: float, met: bool = True) -> dict:
    return {"onnxruntime": {"latency_ms_p50": ort_ms, "throughput": 100.0 / ort_ms, "throughput_batch": 32},
            "openvino": {"latency_ms_p50": ov_ms, "throughput": 100.0 / ov_ms, "throughput_batch": 32,
                         "accuracy": 0.9, "drop_pts": 0.1 if met else 9.0, "meets_budget": met}}


def test_the_cpu_target_deploys_on_openvino_only_when_it_is_faster_within_the_budget(tmp_path, tiny_cnn_export,
                                                                                     tiny_images, monkeypatch):
    """``--target cpu`` runs its chosen graph in OpenVINO too: OpenVINO deploys it (manifest engine, IR beside,
    bench runs it there) when it is faster beyond the noise band and meets the budget; otherwise ONNX Runtime
    does. The measured speeds are forced here (a machine decides them); the measuring itself runs once for real."""
    cfg = QuantizeConfig(**PLAIN, budget=5.0, methods=("minmax",), timing=FAST, optimize="size")  # INT8
    out = tmp_path / "real"
    man = quantize(tiny_cnn_export, out, calib=str(tiny_images), progress=False, target="cpu", config=cfg)
    got = man["engine_choice"]
    assert set(got) >= {"chosen", "why", "gain", "onnxruntime", "openvino"}  # both engines measured, same rows
    assert got["openvino"]["latency_ms_p50"] > 0 and "top1_agreement" in got["openvino"]
    assert (man.get("engine") == "openvino") == (got["chosen"] == "openvino") == (out / "model.xml").is_file()
    assert resolve(out).engine == got["chosen"] and "deploys the chosen graph" in (out / "report.md").read_text()
    for ort_ms, ov_ms, met, want in ((2.0, 1.0, True, "openvino"), (1.02, 1.0, True, "onnxruntime"),
                                     (2.0, 1.0, False, "onnxruntime")):
        monkeypatch.setattr(ec, "_measure", lambda *a, o=ort_ms, v=ov_ms, m=met: _speeds(o, v, m))
        dst = tmp_path / f"forced-{ort_ms}-{met}"
        man = quantize(tiny_cnn_export, dst, calib=str(tiny_images), progress=False, target="cpu", config=cfg)
        assert man["engine_choice"]["chosen"] == want, (ort_ms, met, man["engine_choice"]["why"])
        assert man.get("engine", "onnxruntime") == want and (dst / "model.xml").is_file() == (want == "openvino")
        assert resolve(dst).engine == want
        if not met:
            assert "misses the budget" in man["engine_choice"]["why"]
    res, _ = measure_model(str(tmp_path / "forced-2.0-True"), str(tiny_images), timing=FAST)
    assert res["engine"] == "openvino" and res["int8_layers"] > 0  # bench follows the manifest


def test_cpu_engine_setting_fixes_or_skips_the_engine_choice(tmp_path, tiny_cnn_export, tiny_images, monkeypatch,
                                                             capsys):
    cfg = QuantizeConfig(**PLAIN, budget=5.0, methods=("minmax",), timing=FAST, cpu_engine="onnxruntime")
    man = quantize(tiny_cnn_export, tmp_path / "ort", calib=str(tiny_images), progress=False, config=cfg)
    assert "openvino" not in man["engine_choice"] and "engine" not in man
    with pytest.raises(ConfigError, match="--cpu-engine must be one of"):
        QuantizeConfig(cpu_engine="tvm")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed: auto stays on ONNX Runtime
    monkeypatch.setitem(sys.modules, "nanoify.engines.openvino_engine", None)
    man = quantize(tiny_cnn_export, tmp_path / "auto", calib=str(tiny_images), progress=False,
                   config=dataclasses.replace(cfg, cpu_engine="auto"))
    assert man["engine_choice"]["chosen"] == "onnxruntime" and "pip install openvino" in man["engine_choice"]["why"]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else _spec(name))
    assert main(["quantize", str(tiny_cnn_export), "--calib", str(tiny_images), "--cpu-engine", "openvino",
                 "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cpu-engine openvino needs OpenVINO" in err[0] and not (tmp_path / "q").exists()


_spec = importlib.util.find_spec
