"""Detection pieces on hand-built outputs: decoders, NMS, mAP by pycocotools, box agreement, letterbox geometry."""

from __future__ import annotations

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
    nc, gh, gw = 2, 4, 4
    y = np.zeros((1, 5 + nc, gh, gw), dtype=np.float32)
    y[0, 0, 1, 2] = 0.81  # objectness in cell (row 1, col 2)
    y[0, 3:5, 1, 2] = 0.0  # sigmoid(0) = half the input size
    y[0, 5 + 1, 1, 2] = 1.0
    b, s, c = fastestdet({"out": y}, (64, 64), 0.5)
    assert len(s) == 1 and c[0] == 1 and s[0] == pytest.approx(0.81 ** 0.6)
    cx, cy = (2 + 0) / gw * 64, (1 + 0) / gh * 64  # tanh(0) offset
    np.testing.assert_allclose(b[0], [cx - 16, cy - 16, cx + 16, cy + 16], atol=1e-5)


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


@pytest.mark.parametrize("shape", [(320, 320), (641, 641), (480, 1280), (2160, 3840), (1280, 480)])
def test_boxes_map_back_to_the_original_image(shape):
    """A box drawn in the original image, letterboxed into 640×640, found in input pixels, maps back."""
    h, w = shape
    pre = Preprocess.from_dict({"size": [640, 640], "resize": "letterbox"})
    g = pre.geometry(h, w)
    box = np.array([w * 0.2, h * 0.3, w * 0.6, h * 0.9])
    in_input = box * [g["scale_x"], g["scale_y"], g["scale_x"], g["scale_y"]] + [g["pad_x"], g["pad_y"]] * 2
    assert (in_input >= 0).all() and (in_input <= 640).all()
    back = (in_input - [g["pad_x"], g["pad_y"]] * 2) / [g["scale_x"], g["scale_y"], g["scale_x"], g["scale_y"]]
    np.testing.assert_allclose(back, box, rtol=1e-9)
    img = np.zeros((h, w, 3), np.uint8)
    out, info = pre.resize_one(img)
    assert out.shape == (640, 640, 3) and info == g


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
    np.testing.assert_allclose(sp.boxes[0], [[12, 5, 18, 15]]) and sp.classes[0].tolist() == [1]
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
