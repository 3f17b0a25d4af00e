"""CNN image classifiers through the chain, on a ResNet-8 trained in-process on a colour task: export (BatchNorm
folded, validated), quantize (static INT8 of every op, TensorRT files with NCHW profiles, unlabelled data),
bench (images/s, predictions changed), compress (a vision recipe without distillation), bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from nanoify.bench.run import benchmark, format_table
from nanoify.cli import main
from nanoify.config import BenchConfig, QuantizeConfig, TimingConfig
from nanoify.engines import open_engine
from nanoify.quant.calibrate import calibrate_onnx, choose_ranges
from nanoify.quant.profile import slow_int8_nodes
from nanoify.quant.qdq import calibration_tensors
from nanoify.quant.run import quantize
from nanoify.quant.steps import prepare
from nanoify.quant.targets import get_target
from nanoify.quant.tensorrt import read_calibration_cache
from nanoify.tasks.resolve import resolve
from tests.conftest import CLASSES, TINY_CNN, TINY_CNN_KWARGS, TINY_PRE, image_recipe, make_images

NEAREST = ("nearest",)  # learned rounding, bias correction: own tests (numerical/), skip their cost
PLAIN = {"rounding": NEAREST, "bias_correction": False}  # nearest rounding, biases as they are

FAST = TimingConfig(latency_rows=16, throughput_rows=64, rounds=1)


def test_export_folds_batchnorm_is_dynamic_and_matches_pytorch(tiny_cnn, tiny_cnn_export):
    man = json.loads((tiny_cnn_export / "manifest.json").read_text())
    assert man["task"] == "image-classification" and man["batchnorm"]["modules"] == 7
    assert man["batchnorm"]["onnx_nodes_saved"] == 0 and man["ops"]["saved"].get("BatchNormalization", 0) == 0
    assert max(man["validation"]["max_rel_output_diff"].values()) <= 1e-4
    g = onnx.load(tiny_cnn_export / "model.onnx").graph
    dims = [d.dim_param or d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 16, 16]
    for f in ("preprocess.json", "label_map.json", "torch/module.json", "torch/model.safetensors"):
        assert (tiny_cnn_export / f).is_file(), f
    ref = resolve(tiny_cnn_export)
    assert ref.task == "image-classification" and ref.labels == CLASSES and ref.preprocess["size"] == [16, 16]
    x = np.random.default_rng(0).normal(size=(5, 3, 16, 16)).astype(np.float32)
    onnx_file = str(tiny_cnn_export / "model.onnx")
    with open_engine("torch", str(tiny_cnn)) as pt, open_engine("onnxruntime", onnx_file) as o:
        got, want = o.infer({"input": x}), pt.infer({"input": x})
        np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-4)
        assert set(want) == {"logits"}
        with pytest.raises(Exception, match="axis 2 is 17 but the model was built for 16"):
            o.infer({"input": np.zeros((1, 3, 17, 16), dtype=np.float32)})
        with pytest.raises(Exception, match="rank 3"):
            o.infer({"input": np.zeros((3, 16, 16), dtype=np.float32)})


def test_export_cli_from_an_import_path(tmp_path, tiny_cnn, capsys):
    pre = tmp_path / "pre.json"
    pre.write_text(json.dumps(TINY_PRE))
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(CLASSES) + "\n")
    out = tmp_path / "x"
    args = ["export", "--module", TINY_CNN, "--module-kwargs", json.dumps(TINY_CNN_KWARGS), "--weights",
            str(tiny_cnn / "model.safetensors"), "--input-shape", "3,16,16", "--preprocess", str(pre), "--labels",
            str(labels), "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "dynamic batch" in text and "7 module(s) folded" in text
    assert json.loads((out / "label_map.json").read_text())["names"] == CLASSES
    assert json.loads((out / "preprocess.json").read_text())["size"] == [16, 16]
    bad_pre = tmp_path / "bad.json"
    bad_pre.write_text(json.dumps({"size": [16, 16], "normalize": True}))
    assert main(args[:-4] + ["--preprocess", str(bad_pre), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown key(s) normalize" in err and len(err.splitlines()) == 1
    assert main(["export", "--module", "nanoify.models.vision:nope", "--weights", "w", "--input-shape", "3,8,8",
                 "--out", str(tmp_path / "y")]) == 2
    assert "has no 'nope'" in capsys.readouterr().err
    assert (out / "model.onnx").is_file()  # the good export survived the failed ones


@pytest.fixture(scope="module")
def cnn_quantized(tmp_path_factory, tiny_cnn_export, tiny_images):
    out = tmp_path_factory.mktemp("cq") / "q"
    man = quantize(tiny_cnn_export, out, calib=str(tiny_images), progress=False,
                   config=QuantizeConfig(budget=2.0, methods=("mse", "minmax"), timing=FAST, optimize="size",
                                         cpu_engine="onnxruntime"))  # size: INT8 anywhere; ORT (choice: test_openvino)
    return out, man


def test_quantize_cnn_static_int8_of_every_op(cnn_quantized):
    out, man = cnn_quantized
    names = [c["name"] for c in man["candidates"]]
    w7 = "-w7" if man["int8_cpu"]["static_weight_bits"] == 7 else ""
    assert names[:4] == [f"static-mse{w7}", f"static-minmax{w7}", f"static-mse-all-ops{w7}",
                         f"static-minmax-all-ops{w7}"]
    assert names[4] == "float-fp32"  # the FP32 row: chosen when no INT8 candidate is faster here
    assert names[5:9] == [f"{n}-adaround" for n in names[:4]]  # learned rounding: a scheme option for CNNs
    # bias correction: a twin of the best of each kind (weights/all ops × nearest/learned rounding)
    twins = names[9:13]
    assert all(t.endswith("-bc") and t[:-3] in names[:9] for t in twins) and len(twins) == 4
    assert {("all-ops" in t, "adaround" in t) for t in twins} == {(a, b) for a in (0, 1) for b in (0, 1)}
    # at most one more: a static candidate with the nodes whose INT8 kernels profiled slower kept float
    sp = man["speed_fallback"]
    assert sp["base"] in names[:13] and names[13:] == ([sp["candidate"]] if sp["nodes"] else [])
    assert not any(n.startswith("dynamic") for n in names)  # dynamic INT8 of convolutions is not tried
    assert man["data"]["calibration"].endswith("(train)") and man["data"]["eval"].endswith("(test)")
    assert man["calibration"]["samples"] == 100 and man["metric"] == "accuracy"
    assert man["calibration"]["unsigned_tensors"] > 0  # post-ReLU tensors get [0, amax]
    chosen = next(c for c in man["candidates"] if c["name"] == man["chosen"])
    assert chosen["meets_budget"] and chosen["top1_agreement"] > 0.9
    ops = {n.op_type for n in onnx.load(out / "model.int8.onnx").graph.node}
    assert "QuantizeLinear" in ops and "Conv" in ops
    graph_out = onnx.load(out / "model.int8.onnx").graph.output[0].name
    producers = {o: n.op_type for n in onnx.load(out / "model.int8.onnx").graph.node for o in n.output}
    assert producers[graph_out] != "DequantizeLinear"  # the logits are not rounded to 8 bits
    ref = resolve(out)
    assert ref.task == "image-classification" and ref.labels == CLASSES and (out / "preprocess.json").is_file()


def test_quantize_cnn_for_tensorrt_has_nchw_profiles(tmp_path, tiny_cnn_export, tiny_images):
    out = tmp_path / "trt"
    man = quantize(tiny_cnn_export, out, calib=str(tiny_images), progress=False,
                   config=QuantizeConfig(**PLAIN, budget=100.0, target="tensorrt", methods=("entropy",)))
    assert [c["name"] for c in man["candidates"]] == ["qdq-entropy", "qdq-entropy-all-ops"]
    sh = (out / "trtexec.sh").read_text()
    assert "--minShapes=input:1x3x16x16" in sh and "--maxShapes=input:32x3x16x16" in sh
    zps = [i for i in onnx.load(out / "model.qdq.onnx").graph.initializer if i.data_type == onnx.TensorProto.UINT8]
    assert not zps
    # TensorRT's INT8 is signed and symmetric: every range is chosen for ±127 levels, never for the 255 of an
    # unsigned (post-ReLU) range, which would come out about twice too wide when written as ±amax

    src = prepare(tiny_cnn_export, tmp_path / "prep", get_target("cpu"))
    calib = src.task.calib_set(str(tiny_images), man["calibration"]["samples"])
    bs = src.task.batch_for(src.task.calib_batch)  # quantize's batches: other batch sizes take other kernel paths
    hists = calibrate_onnx(src.plain, (f for _, f in src.task.batches(calib, bs)),  # (AVX-512: maxima moved 0.05%)
                           tensors=calibration_tensors(src.graphs["plain"], "all"))
    signed = choose_ranges(hists, "entropy")
    unsigned = choose_ranges(hists, "entropy", allow_unsigned=True, asymmetric=True)
    _, cache = read_calibration_cache(out / "calibration.cache")
    assert set(cache) == set(signed)
    assert any(abs(unsigned[k].amax - signed[k].amax) > 0.05 * signed[k].amax for k in cache)  # a test with teeth
    for k, amax in cache.items():
        assert amax == pytest.approx(signed[k].amax, rel=1e-5), k


def test_unlabelled_evaluation_counts_agreement_points(tmp_path, tiny_cnn_export, tiny_images):
    photos = tmp_path / "photos"
    photos.mkdir()
    x, _ = make_images(40, 7, size=24)  # another size: resized to the model's 16×16 by the preprocessing
    for i, im in enumerate(x):
        Image.fromarray(im).save(photos / f"p{i}.png")
    man = quantize(tiny_cnn_export, tmp_path / "q", calib=str(photos), eval_data=str(photos), progress=False,
                   config=QuantizeConfig(**PLAIN, budget=5.0, methods=("mse",), timing=FAST))
    assert man["metric"] == "top1_agreement" and man["reference"]["top1_agreement"] == 1.0
    assert "accuracy" not in man["reference"]
    for c in man["candidates"]:
        assert c["drop_pts"] == pytest.approx((1 - c["top1_agreement"]) * 100)


def test_bench_and_json_contract_for_images(tmp_path, tiny_cnn, tiny_images, cnn_quantized, capsys):
    from tests.conftest import raise_peak_rss

    qout, _ = cnn_quantized
    parent = raise_peak_rss(2500)  # far above what measuring a tiny model needs
    assert main(["bench", str(tiny_cnn), str(qout), "--data", str(tiny_images), "--json", "--latency-rows", "16",
                 "--throughput-rows", "64", "--rounds", "1", "--streams", "2"]) == 0
    rep = json.loads(capsys.readouterr().out)
    base, q = rep["models"]
    # each model is measured in a fresh process of its own: its peak is not this (bigger) process's
    assert 0 < base["peak_rss_mb"] < parent and 0 < q["peak_rss_mb"] < parent, (base["peak_rss_mb"], parent)
    assert rep["task"] == "image-classification" and rep["split"] == "test"
    for key in ("accuracy", "latency_ms_p50", "throughput_b32", "peak_rss_mb"):
        assert isinstance(base[key], float) and isinstance(q[key], float), key
    assert base["engine"] == "torch" and q["engine"] == "onnxruntime"
    assert 0.9 <= q["top1_agreement"] <= 1 and q["predictions_changed"] == round((1 - q["top1_agreement"]) * 200)
    assert q["streams"]["streams"] == 2

    table = format_table(rep)
    assert "throughput b32 (images/s)" in table and "predictions changed vs baseline" in table


def test_compress_vision_recipe_has_no_distillation(tmp_path, tiny_cnn, tiny_images, capsys):
    recipe = image_recipe(tmp_path, tiny_cnn, tiny_images, "{budget: 3.0, methods: [mse], cpu_engine: onnxruntime, "
                          "rounding: [nearest], "
                          "timing: {latency_rows: 16, throughput_rows: 64, rounds: 1}}")
    assert main(["compress", str(recipe)]) == 0
    text = capsys.readouterr().out
    assert "[1/3] export: done" in text and "[3/3] bench: done" in text and "student" not in text
    rep = (tmp_path / "out" / "report.md").read_text()
    assert "model (PyTorch FP32)" in rep and "compressed (ONNX Runtime INT8)" in rep
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert set(man["stages"]) == {"export", "quantized", "bench"} and man["summary"]["metric"] == "accuracy"
    assert main(["compress", str(recipe)]) == 0
    assert "export: reused" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text().replace("task: image-classification", "task: image-classification\n"
                                                                            "student: half"))
    assert main(["compress", str(bad), "--out", str(tmp_path / "o2")]) == 2
    assert "distillation of image models is not built" in capsys.readouterr().err


def test_wrong_inputs_for_the_task_are_one_line(tmp_path, tiny_cnn_export, tiny_export, tiny_images, capsys):
    # a text model asked to run as an image classifier
    assert main(["quantize", str(tiny_export / "model.onnx"), "--task", "image-classification", "--calib",
                 str(tiny_images), "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err.strip()
    assert "one float image input" in err and len(err.splitlines()) == 1
    # an image model whose dynamic H/W no preprocess.json sizes
    x = tmp_path / "dyn"
    x.mkdir()
    m = onnx.load(tiny_cnn_export / "model.onnx")
    for d, name in zip(m.graph.input[0].type.tensor_type.shape.dim[2:], ("height", "width"), strict=True):
        d.dim_param = name
    onnx.save(m, x / "model.onnx")
    assert main(["bench", str(x / "model.onnx"), "--data", str(tiny_images)]) == 2
    assert "no preprocess.json says which" in capsys.readouterr().err
    # an image that does not decode
    bad = tmp_path / "bad"
    shutil.copytree(tiny_images, bad)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "x.jpg").write_bytes(b"garbage")
    assert main(["quantize", str(tiny_cnn_export), "--calib", str(tiny_images), "--eval", str(tmp_path / "photos"),
                 "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err.strip()
    assert "x.jpg does not decode" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "q").exists()


def test_torch_engine_runs_the_module_folder(tiny_cnn):
    with open_engine("torch", str(tiny_cnn)) as e:
        assert e.input_spec() == {"input": ("float32", ["batch", 3, 16, 16])}
        out = e.infer({"input": np.zeros((2, 3, 16, 16), dtype=np.float32)})
    assert out["logits"].shape == (2, 4)
    assert torch.get_num_threads() >= 1


def test_bench_engines_checked_against_their_own_spec(tiny_cnn_export, tiny_images):

    rep = benchmark([str(tiny_cnn_export)], str(tiny_images), progress=False,
                    config=BenchConfig(isolate=False, timing=FAST))
    m = rep["models"][0]
    assert m["accuracy"] > 0.8 and m["task"] == "image-classification" and "fixed_shape" not in m


def test_a_model_exported_with_batch_one_is_run_and_timed_at_batch_one(tmp_path, tiny_cnn_export, tiny_images):

    m = onnx.load(tiny_cnn_export / "model.onnx")
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # as many ONNX zoo models ship
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    d = tmp_path / "b1"
    d.mkdir()
    onnx.save(m, d / "model.onnx")
    for f in ("preprocess.json", "label_map.json"):
        shutil.copy(tiny_cnn_export / f, d / f)
    q = quantize(d / "model.onnx", tmp_path / "q", calib=str(tiny_images), progress=False,
                 config=QuantizeConfig(**PLAIN, budget=5.0, methods=("mse",), timing=FAST))
    assert q["reference"]["throughput_batch"] == 1 and "throughput_b32" not in q["reference"]
    rep = benchmark([str(d / "model.onnx"), str(tmp_path / "q")], str(tiny_images), progress=False,
                    config=BenchConfig(isolate=False, timing=FAST))
    base, comp = rep["models"]
    assert base["throughput_b1"] > 0 and "throughput_b32" not in base and "throughput_b8" not in base
    assert comp["accuracy"] > 0.8


def test_profiler_maps_int8_kernels_back_to_their_graph_nodes(tmp_path, cnn_quantized, tiny_cnn_export):

    out, man = cnn_quantized
    plain = onnx.load(tiny_cnn_export / "model.onnx")
    chosen = next(c for c in man["candidates"] if c["name"] == man["chosen"])
    convs = [n.name for n in plain.graph.node if n.op_type == "Conv" and n.name not in chosen["fp32_nodes"]]
    feeds = [{"input": np.random.default_rng(i).random((1, 3, 16, 16), dtype=np.float32)} for i in range(6)]
    rows = slow_int8_nodes(out / "model.int8.onnx", tiny_cnn_export / "model.onnx", convs, feeds, 1, tmp_path,
                           share=-1e9)  # every quantized node found in both profiles
    assert {r["node"] for r in rows} == set(convs)
    assert all(r["int8_ms"] > 0 and r["float_ms"] > 0 for r in rows)


def test_an_onnx_runtime_measurement_does_not_load_torch(tiny_cnn_export, tiny_images):
    """bench measures each model in a fresh process so that its peak RSS is that model's own: a process that
    measures an ONNX model in ONNX Runtime must not import torch or transformers (about 190 MB of RSS on their
    own). The modules bench's child imports keep those frameworks inside the functions that need them
    (docs/design.md, "Imports")."""
    code = ("import json, sys\n"
            "from nanoify.bench.run import measure_model\n"
            "from nanoify.config import TimingConfig\n"
            f"res, _ = measure_model({str(tiny_cnn_export / 'model.onnx')!r}, {str(tiny_images)!r},"
            " timing=TimingConfig(4, 8, rounds=1, batch=4))\n"
            "print(json.dumps({'engine': res['engine'], 'loaded': sorted(m for m in ('torch', 'transformers')"
            " if m in sys.modules)}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"engine": "onnxruntime", "loaded": []}, got
