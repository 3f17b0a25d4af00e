"""Detectors through the chain: a random-weight Ultralytics-layout network exported with dynamic batch and H/W;
any frame size; the stock-INT8 failure (every score rounded to zero) and nanoify's rescue; bench's detector
contract with four streams; a detection recipe; FastestDet on a slice of COCO128 (shared data)."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import onnx
import pytest
from PIL import Image

from nanoify.cli import main
from nanoify.config import QuantizeConfig, TimingConfig
from nanoify.engines import open_engine
from nanoify.quant.run import quantize
from nanoify.tasks import make_task
from nanoify.tasks.resolve import resolve
from tests.conftest import DET_CLASSES, SHARED

NEAREST = ("nearest",)  # learned rounding, bias correction: own tests (numerical/), skip their cost
PLAIN = {"rounding": NEAREST, "bias_correction": False}  # nearest rounding, biases as they are

FAST = TimingConfig(latency_rows=8, throughput_rows=16, rounds=1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, det_data):
    """The validation images of the shape set as a plain, unlabelled folder."""
    d = tmp_path_factory.mktemp("photos")
    for p in sorted((det_data / "images" / "val").iterdir()):
        shutil.copy(p, d / p.name)
    return d


def test_detector_export_is_dynamic_and_resolves_with_its_decoder(tiny_yolo_export):
    man = json.loads((tiny_yolo_export / "manifest.json").read_text())
    assert man["task"] == "detection" and man["inputs"]["input"] == ["batch", 3, "height", "width"]
    assert [672, 704] in [f[2:] for f in man["validation"]["feeds"]]  # checked at another size too
    assert max(man["validation"]["max_rel_output_diff"].values()) <= 1e-4
    assert json.loads((tiny_yolo_export / "detection.json").read_text()) == {"decoder": "yolov8"}
    ref = resolve(tiny_yolo_export)
    assert ref.task == "detection" and ref.settings["decoder"] == "yolov8" and ref.settings["dynamic_hw"]
    assert ref.labels == DET_CLASSES and resolve(tiny_yolo_export / "torch").task == "detection"


def _frames_run(folder, model_dir, sizes, seed):
    """Random frames of ``sizes`` (h, w) written to ``folder``; the task, their eval set, an ORT engine's run
    that records every feed's shape, and that list."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)).save(folder / f"f{i}.png")
    task = make_task(resolve(model_dir))
    eng = open_engine("onnxruntime", str(model_dir / "model.onnx"))
    shapes = []

    def run(feed):
        shapes.append(feed["input"].shape)
        return eng.infer(feed)

    return task, task.eval_set(str(folder)), eng, run, shapes


def _rectangles_come_back(tmp_path, model_dir, sizes, batch_size):
    """Frames of ``sizes`` with one drawn rectangle each, through the model's own task and engine at the feed
    shapes it gets; a stand-in detector that finds the rectangle in each feed answers for the random-weight net.
    Every rectangle must come back where it was drawn, within 1.5 input pixels of resampling."""
    from tests.conftest import rectangle_frames, rectangle_oracle

    rects = rectangle_frames(tmp_path / "rects", sizes)
    task = make_task(resolve(model_dir))
    sees = rectangle_oracle(task.preprocess)
    with open_engine("onnxruntime", str(model_dir / "model.onnx")) as eng:
        dets = task.predict(lambda feed: (eng.infer(feed), sees(feed))[1], task.eval_set(str(tmp_path / "rects")),
                            batch_size=batch_size)
    for (h, w), rect, det in zip(sizes, rects, dets, strict=True):
        assert len(det.scores) == 1, (h, w)
        np.testing.assert_allclose(det.boxes[0], rect, atol=1.5 / min(640 / h, 640 / w) + 0.5, err_msg=f"{h}x{w}")


@pytest.mark.parametrize("hw", [(320, 320), (641, 641), (480, 1280), (1280, 480), (2160, 3840)])
def test_any_frame_size_gives_boxes_in_original_pixels(tmp_path, tiny_yolo_export, hw):
    task, es, eng, run, seen = _frames_run(tmp_path / "frames", tiny_yolo_export, [hw], 0)
    with eng:
        (det,) = task.predict(run, es)
    _, _, ih, iw = seen[0]
    assert ih % 32 == 0 and iw % 32 == 0 and max(ih, iw) == 640  # letterboxed, padded to the stride only
    assert len(det.scores) > 0  # the model ran at that shape and its outputs decoded
    _rectangles_come_back(tmp_path, tiny_yolo_export, [hw], None)  # boxes come back to the frame's own pixels


def test_batched_frames_share_the_full_letterbox_and_map_back(tmp_path, tiny_yolo_export):
    """Dynamic H/W at batch > 1: frames of different sizes share one 640×640 letterbox (batch-1 pads each only to
    its stride multiple), and boxes map back through the geometry that made them."""
    sizes = [(320, 480), (641, 641), (480, 1280), (900, 300)]
    task, es, eng, run, shapes = _frames_run(tmp_path / "frames", tiny_yolo_export, sizes, 1)
    with eng:
        one = task.predict(run, es)  # the default for dynamic H/W: one frame per batch
        four = task.predict(run, es, batch_size=4)
    assert len(shapes) == 5 and shapes[-1] == (4, 3, 640, 640) and shapes[0][2:] != (640, 640)
    assert task.feeds(es, 4)[0]["input"].shape == (4, 3, 640, 640)
    from nanoify.tasks.detect import box_agreement

    # the same boxes up to the padding's effect on a random-weight net, whose scores near a frame's edge move
    # with the extent of the grey around it (0.55-0.97 of the confident boxes kept for TinyYolo seeds 0-4, the
    # kept ones at mean IoU ≥ 0.998: benchmarks/padding_boxes.py); a geometry error would shift or scale every box
    # and keep none
    agree = box_agreement(one, four)
    assert agree["box_agreement"] >= 0.5 and agree["mean_iou"] >= 0.99, agree
    _rectangles_come_back(tmp_path, tiny_yolo_export, sizes, 4)  # and each box lands where it was in its frame


def test_stock_int8_loses_every_box_and_nanoify_keeps_them(tmp_path, tiny_yolo_export, det_data, photos, caplog):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    task = make_task(resolve(tiny_yolo_export))
    feeds = [f for _, f in task.batches(task.calib_set(str(det_data), 16), 1)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    caplog.set_level(logging.ERROR)  # ORT's quantizer warns about every tensor it leaves alone
    quantize_static(str(tiny_yolo_export / "model.onnx"), str(tmp_path / "stock.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    es = task.eval_set(str(photos))
    with open_engine("onnxruntime", str(tiny_yolo_export / "model.onnx")) as e:
        ref = task.predict(e.infer, es)
    with open_engine("onnxruntime", str(tmp_path / "stock.onnx")) as e:
        stock = task.predict(e.infer, es)
    assert task.agreement(ref, stock)["box_agreement"] == 0.0  # one scale for pixels and scores: all scores 0
    # nanoify, unlabelled evaluation: the budget counts agreement points (5 = keep 95% of the FP32 boxes)
    man = quantize(tiny_yolo_export, tmp_path / "q", calib=str(det_data), eval_data=str(photos), progress=False,
                   config=QuantizeConfig(**PLAIN, budget=5.0, methods=("percentile", "mse"), calib_samples=16,
                                         timing=FAST, cpu_engine="onnxruntime"))
    assert man["metric"] == "box_agreement" and man["budget_met"]
    chosen = next(c for c in man["candidates"] if c["name"] == man["chosen"])
    assert chosen["box_agreement"] >= 0.95
    assert man["calibration"]["kept_float_by_rule"]  # the box/score Concat never shares a scale
    assert json.loads((tmp_path / "q" / "detection.json").read_text())["decoder"] == "yolov8"
    assert resolve(tmp_path / "q").task == "detection"


def test_bench_detector_contract_with_four_streams(tmp_path, tiny_yolo_export, det_data, capsys):
    assert main(["bench", str(tiny_yolo_export / "torch"), str(tiny_yolo_export), "--data", str(det_data), "--json",
                 "--streams", "4", "--latency-rows", "8", "--throughput-rows", "16", "--rounds", "1"]) == 0
    rep = json.loads(capsys.readouterr().out)
    base, onnx_fp32 = rep["models"]
    assert rep["task"] == "detection" and rep["split"] == "validation"
    for key in ("map50", "map50_95", "latency_ms_p50", "throughput_b32", "throughput_b8", "peak_rss_mb"):
        assert isinstance(onnx_fp32[key], float), key
    assert 0 <= onnx_fp32["map50_95"] <= onnx_fp32["map50"] <= 1
    assert onnx_fp32["box_agreement"] >= 0.99  # ONNX Runtime FP32 against PyTorch FP32
    assert onnx_fp32["streams"]["streams"] == 4 and onnx_fp32["streams"]["requests"] == 8
    assert base["engine"] == "torch" and onnx_fp32["engine"] == "onnxruntime"


def test_detection_recipe_for_an_onnx_model_without_preprocess_json(tmp_path, tiny_yolo_export, det_data, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_yolo_export / "model.onnx", bare / "detector.onnx")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
task: detection
teacher: {bare / 'detector.onnx'}
preprocess: {{size: [640, 640], resize: letterbox}}
decoder: yolov8
data: {{data: {det_data}}}
quantize: {{budget: 100, methods: [minmax], calib_samples: 8, rounding: [nearest], cpu_engine: onnxruntime,
           timing: {{latency_rows: 4, throughput_rows: 8, rounds: 1}}}}
bench: {{isolate: false, timing: {{latency_rows: 4, throughput_rows: 8, rounds: 1}}}}
out: {tmp_path / 'out'}
""")
    assert main(["compress", str(recipe)]) == 0
    text = capsys.readouterr().out
    assert "[3/3] bench: done" in text and "model (ONNX Runtime FP32)" in text
    export_dir = tmp_path / "out" / "export"
    assert json.loads((export_dir / "preprocess.json").read_text())["resize"] == "letterbox"
    assert json.loads((export_dir / "detection.json").read_text())["decoder"] == "yolov8"
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["summary"]["metric"] == "map50_95"


FASTESTDET = SHARED / "models" / "fastestdet" / "FastestDet.onnx"
COCO128 = SHARED / "data" / "vision" / "coco128"


@pytest.mark.shared_data
def test_fastestdet_on_a_coco128_slice(tmp_path):
    if not FASTESTDET.is_file() or not (COCO128 / "images").is_dir():
        pytest.skip("shared FastestDet or COCO128 not found")
    d = tmp_path / "fd"
    d.mkdir()
    shutil.copy(FASTESTDET, d / "model.onnx")  # opset 11, batch 1, 352×352, BGR, area resize, /255 (DATA.md)
    (d / "preprocess.json").write_text(json.dumps({"size": [352, 352], "interpolation": "area", "channels": "bgr"}))
    (d / "label_map.json").write_text(json.dumps({"names": (COCO128 / "names.txt").read_text().split("\n")[:80]}))
    ref = resolve(d / "model.onnx")
    assert ref.settings["decoder"] == "fastestdet" and ref.info["max_batch"] == 1  # told by the output shape
    man = quantize(d, tmp_path / "q", calib=str(COCO128), progress=False,
                   config=QuantizeConfig(**PLAIN, budget=100.0, methods=("minmax",), calib_samples=16,
                                         eval_rows=32,
                                         timing=FAST))
    assert man["data"]["eval"].endswith("val2017 (validation)") and man["data"]["calibration"].endswith("(train)")
    assert 0.1 < man["reference"]["map50_95"] < man["reference"]["map50"] < 0.7
    q = onnx.load(tmp_path / "q" / "model.int8.onnx")
    assert any(o.domain in ("", "ai.onnx") and o.version >= 13 for o in q.opset_import)  # upgraded from 11
    assert all(c["box_agreement"] > 0.5 for c in man["candidates"])
