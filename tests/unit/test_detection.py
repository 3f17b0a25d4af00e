"""Detection pieces on hand-built outputs: decoders, NMS, mAP by pycocotools, box agreement, letterbox geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nanoify.data.images import Preprocess
from nanoify.errors import ConfigError
from nanoify.tasks.decoders import fastestdet, get_decoder, guess_decoder, nms, yolov5, yolov8
from nanoify.tasks.detect import Detections, Truth, box_agreement, coco_map


def test_yolov8_and_yolov5_layouts_decode_to_xyxy_pixels():
    # one box at centre (50, 40), 20×10, class 2 with 0.9; everything else faint
    nc, n = 3, 5
    y8 = np.zeros((1, 4 + nc, n), dtype=np.float32)
    y8[0, :4, 1] = [50, 40, 20, 10]
    y8[0, 4 + 2, 1] = 0.9
    y8[0, 4:, :] += 0.0005
    b, s, c = yolov8({"out": y8}, (64, 64), 0.001)
    assert len(s) == 1 and c[0] == 2 and s[0] == pytest.approx(0.9005, abs=1e-4)
    np.testing.assert_allclose(b[0], [40, 35, 60, 45])
    y5 = np.zeros((1, n, 5 + nc), dtype=np.float32)
    y5[0, 3, :5] = [10, 10, 4, 8, 0.5]
    y5[0, 3, 5:] = [0.1, 0.8, 0.1]
    b, s, c = yolov5({"out": y5}, (64, 64), 0.01)
    got = sorted(zip(c.tolist(), s.tolist(), strict=True))
    assert [k for k, _ in got] == [0, 1, 2] and [v for _, v in got] == pytest.approx([0.05, 0.4, 0.05])
    np.testing.assert_allclose(b[0], [8, 6, 12, 14])


def test_fastestdet_decoding_follows_its_documentation():
    """One confident cell of a 4×6 grid over a 64×96 (h×w) input: centre = (cell + tanh(offset)) / grid, size =
    sigmoid(raw) × input; a non-zero offset and a non-square input, so a missing tanh or swapped axes show."""
    nc, gh, gw, (h, w) = 2, 4, 6, (64, 96)
    y = np.zeros((1, 5 + nc, gh, gw), dtype=np.float32)
    y[0, 0, 1, 2] = 0.81  # objectness in cell (row 1, col 2)
    y[0, 1:5, 1, 2] = [0.5, -0.3, 1.0, -0.5]  # x, y offsets (tanh); width, height (sigmoid)
    y[0, 5 + 1, 1, 2] = 1.0
    b, s, c = fastestdet({"out": y}, (h, w), 0.5)
    assert len(s) == 1 and c[0] == 1 and s[0] == pytest.approx(0.81 ** 0.6)
    cx, cy = (2 + math.tanh(0.5)) / gw * w, (1 + math.tanh(-0.3)) / gh * h
    bw, bh = w / (1 + math.exp(-1.0)), h / (1 + math.exp(0.5))
    np.testing.assert_allclose(b[0], [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], rtol=1e-5)


def test_decoder_choice_by_shape_name_or_hook():
    assert guess_decoder([[1, 84, 8400]]) == "yolov8" and guess_decoder([[1, 25200, 85]]) == "yolov5"
    assert guess_decoder([[1, 85, 22, 22]]) == "fastestdet" and guess_decoder([[1, 84, 8400]], 80) == "yolov8"
    assert guess_decoder([[1, 84, 8400]], 20) is None  # 84 ≠ 4 + 20: ambiguous, so the user must say
    assert get_decoder("nanoify.tasks.decoders:yolov8") is yolov8
    with pytest.raises(ConfigError, match="unknown decoder"):
        get_decoder("yolo")
    with pytest.raises(ConfigError, match="cannot import"):
        get_decoder("nanoify.nope:decode")


def test_nms_is_class_aware_and_keeps_the_best_first():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], dtype=np.float32)
    classes = np.array([0, 0, 1, 0])
    b, s, c = nms(boxes, scores, classes, iou=0.45)
    # box 1 overlaps box 0 in the same class (IoU 0.68): gone; box 2 overlaps it in another class: kept
    assert s.tolist() == pytest.approx([0.9, 0.7, 0.6]) and c.tolist() == [0, 1, 0]
    b, s, c = nms(boxes, scores, classes, max_det=2)
    assert len(s) == 2
    empty = nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    assert all(len(x) == 0 for x in empty)


def test_map_by_pycocotools_and_box_agreement():
    truth = Truth([np.array([[10, 10, 50, 50], [60, 60, 90, 100]], np.float32)], [np.array([0, 1])])
    perfect = [Detections(truth.boxes[0].copy(), np.array([0.9, 0.8], np.float32), np.array([0, 1]))]
    m = coco_map(truth, perfect, [(120, 120)])
    assert m["map50_95"] == pytest.approx(1.0) and m["map50"] == pytest.approx(1.0)
    wrong_class = [Detections(truth.boxes[0].copy(), np.array([0.9, 0.8], np.float32), np.array([1, 0]))]
    assert coco_map(truth, wrong_class, [(120, 120)])["map50"] == pytest.approx(0.0)
    shifted = [Detections(truth.boxes[0] + np.array([8, 0, 8, 0], np.float32), np.array([0.9, 0.8], np.float32),
                          np.array([0, 1]))]
    m2 = coco_map(truth, shifted, [(120, 120)])
    assert m2["map50"] == pytest.approx(1.0) and m2["map50_95"] < 0.9  # still found at IoU .5, not at .95
    a = box_agreement(perfect, shifted)
    assert a["box_agreement"] == 1.0 and 0.6 < a["mean_iou"] < 0.9 and a["reference_boxes"] == 2
    assert box_agreement(perfect, wrong_class)["box_agreement"] == 0.0
    assert coco_map(truth, [Detections(np.zeros((0, 4), np.float32), np.zeros(0), np.zeros(0, np.int64))],
                    [(120, 120)])["map50_95"] == 0.0


def _yolov8_out(boxes_xyxy, scores):
    """A one-class YOLOv8 output (1, 5, N) holding the given input-pixel boxes and scores."""
    b = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
    cxcywh = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]])
    return np.concatenate([cxcywh, np.asarray(scores, np.float32)[None]])[None]


class _Sizes:
    def __init__(self, *sizes):
        self.sizes = sizes

    def size(self, i):
        return self.sizes[i]


LETTERBOX_640 = {"size": [640, 640], "resize": "letterbox"}


@pytest.mark.parametrize("frame, dynamic, in_input, original", [
    # portrait 1280×640 (h×w) into 640×640: scale 0.5, content in columns 160..480 (the horizontal pad)
    ((1280, 640), False, [200, 100, 260, 300], [80, 200, 200, 600]),
    # landscape 320×1280: scale 0.5, content in rows 240..400 (the vertical pad)
    ((320, 1280), False, [100, 250, 300, 390], [200, 20, 600, 300]),
    # dynamic H/W, one frame: 1280×640 becomes a 640×320 input, no pad at all
    ((1280, 640), True, [40, 100, 100, 300], [80, 200, 200, 600]),
    # dynamic H/W: 900×300 scales by 640/900 to 640×213, padded to the stride (224): 5 columns of pad on the left
    ((900, 300), True, [76, 64, 147, 640], [100, 90, 200, 900]),
])
def test_boxes_map_back_to_the_original_image(frame, dynamic, in_input, original):
    """Boxes found in input pixels come back, through the task's own output path, at hand-computed original
    coordinates: portrait and landscape frames (so both pads count), scales other than 1."""
    from nanoify.tasks.detect import Detection

    task = Detection(Preprocess.from_dict(LETTERBOX_640), ["a"], "input", "yolov8", dynamic_hw=dynamic)
    state = task.start(type("ES", (), {"rows": _Sizes(frame)})(), 1)
    task.add(state, np.array([0]), {"output0": _yolov8_out([in_input], [0.9])})
    (det,) = task.finish(state)
    np.testing.assert_allclose(det.boxes, [original], atol=1e-3)


@pytest.mark.parametrize("dynamic", [False, True])
def test_a_rectangle_in_the_frame_comes_back_where_it_was(tmp_path, dynamic):
    """Frames → the task's preprocessing (letterbox, per-channel mean/std) → a stand-in detector that finds the
    drawn rectangle in the feed → the task's output path: each rectangle comes back where it was drawn, within
    1.5 input pixels of resampling blur, for portrait, landscape and odd frames, one per batch and batched."""
    from nanoify.tasks.detect import Detection
    from tests.conftest import rectangle_frames, rectangle_oracle

    frames = [(1280, 640), (480, 1280), (900, 300), (333, 517)]
    rects = rectangle_frames(tmp_path / "frames", frames)
    pre = Preprocess.from_dict({**LETTERBOX_640, "mean": [0.1, 0.4, 0.7], "std": [0.2, 0.25, 0.3]})
    task = Detection(pre, ["a"], "input", "yolov8", dynamic_hw=dynamic)
    es = task.eval_set(str(tmp_path / "frames"))
    for batch in (1, 4):
        dets = task.predict(rectangle_oracle(pre), es, batch_size=batch)
        for (h, w), rect, det in zip(frames, rects, dets, strict=True):
            assert len(det.scores) == 1, ((h, w), batch)
            tol = 1.5 / min(640 / h, 640 / w) + 0.5
            np.testing.assert_allclose(det.boxes[0], rect, atol=tol, err_msg=f"frame {h}x{w}, batch {batch}")


def test_default_score_threshold_keeps_the_low_tail_map_needs():
    """COCO mAP is computed over the whole ranked list: the task's default threshold (0.001) keeps a 0.01 box."""
    from nanoify.tasks.detect import Detection

    task = Detection(Preprocess.from_dict(LETTERBOX_640), ["a"], "input", "yolov8")
    state = task.start(type("ES", (), {"rows": _Sizes((640, 640))})(), 1)
    boxes = [[10, 10, 50, 50], [200, 200, 260, 260], [400, 400, 420, 440], [500, 100, 520, 140]]
    task.add(state, np.array([0]), {"output0": _yolov8_out(boxes, [0.9, 0.2, 0.01, 0.0005])})
    (det,) = task.finish(state)
    assert det.scores.tolist() == pytest.approx([0.9, 0.2, 0.01])  # only the 0.0005 box is below it


def test_detection_layouts_yolo_coco_and_plain_folders(tmp_path):
    import json

    from PIL import Image

    from nanoify.data.detection import detection_splits, load_detection

    def img(path, h=20, w=30):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)

    img(tmp_path / "plain" / "images" / "a.png")  # images/ without split folders: every split
    assert load_detection(str(tmp_path / "plain"), None).boxes is None
    img(tmp_path / "yolo" / "images" / "val2017" / "b.png")
    (tmp_path / "yolo" / "labels" / "val2017").mkdir(parents=True)
    (tmp_path / "yolo" / "labels" / "val2017" / "b.txt").write_text("1 0.5 0.5 0.2 0.5\n")
    (tmp_path / "yolo" / "names.txt").write_text("a\nb\n")
    layout, splits = detection_splits(str(tmp_path / "yolo"))
    sp = load_detection(str(tmp_path / "yolo"), "validation")
    assert layout == "yolo" and set(splits) == {"validation"} and sp.names == ["a", "b"]
    np.testing.assert_allclose(sp.boxes[0], [[12, 5, 18, 15]])
    assert sp.classes[0].tolist() == [1]
    img(tmp_path / "coco" / "images" / "val2017" / "c.png", 40, 50)
    (tmp_path / "coco" / "annotations").mkdir()
    (tmp_path / "coco" / "annotations" / "instances_val2017.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "c.png", "height": 40, "width": 50}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 18, "bbox": [5, 6, 10, 20], "iscrowd": 0},
                        {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 4, 4], "iscrowd": 1}],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]}))
    sp = load_detection(str(tmp_path / "coco"), "validation")
    assert sp.names == ["person", "dog"] and sp.classes[0].tolist() == [1]  # the crowd region is left out
    np.testing.assert_allclose(sp.boxes[0], [[5, 6, 15, 26]])


def test_boxes_wholly_in_the_letterbox_padding_are_dropped_before_nms():
    """A 320×640 (h×w) image letterboxed into 640×640 sits in rows 160..480. A confident box in the grey above it
    shows nothing of the image: it would clip to zero height; it is dropped, takes no max_det place and suppresses
    nothing, and a box straddling the edge is kept, clipped."""
    from nanoify.tasks.detect import Detection

    class Rows:
        def size(self, i):
            return 320, 640

    task = Detection(Preprocess.from_dict({"size": [640, 640], "resize": "letterbox"}), ["a"], "input", "yolov8",
                     max_det=2)
    # yolov8 layout (1, 4 + nc, N): centre x, centre y, w, h in input pixels, then one class score
    cands = np.array([[100, 50, 40, 40, 0.99],    # wholly in the padding above the image
                      [300, 300, 40, 40, 0.90],   # inside
                      [500, 165, 40, 40, 0.80],   # straddles the top edge (rows 145..185)
                      [300, 302, 40, 40, 0.70]],  # overlaps the inside box: suppressed
                     np.float32)
    state = task.start(type("ES", (), {"rows": Rows()})(), 1)
    task.add(state, np.array([0]), {"output0": cands.T[None]})
    det = task.finish(state)[0]
    assert det.scores.tolist() == pytest.approx([0.90, 0.80])
    np.testing.assert_allclose(det.boxes, [[280, 120, 320, 160], [480, 0, 520, 25]], atol=1e-4)
