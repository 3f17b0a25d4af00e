"""Detector output decoders: raw outputs → candidate boxes (x1, y1, x2, y2 in *input* pixels), scores, classes.

Each decoder handles one image's outputs (batch axis removed) and returns every (box, class) whose score passes
``conf`` — several classes per box where they pass (multi-label, as COCO mAP evaluation expects). Non-maximum
suppression comes after, in :func:`nms` (ONNX Runtime's NonMaxSuppression kernel, class-aware).

Formats:
- ``yolov8`` — Ultralytics YOLOv8/YOLO11 ONNX: one output ``(4 + nc) × N``: cx, cy, w, h in input pixels, then
  nc class scores (already sigmoid).
- ``yolov5`` — YOLOv5 ONNX: ``N × (5 + nc)``: cx, cy, w, h in input pixels, objectness, nc class scores;
  score = objectness × class score.
- ``fastestdet`` — FastestDet (``../shared/models/fastestdet``): ``(5 + nc) × H × W``, one cell per 16 input
  pixels: channel 0 objectness, 1–2 the centre's offset in the cell (tanh), 3–4 width and height relative to
  the input (sigmoid), then nc class probabilities; score = obj^0.6 · cls^0.4.

``--decoder package.module:function`` adds another: ``function(outputs: dict[str, ndarray], input_hw: (H, W),
conf: float) -> (boxes (k, 4) xyxy input pixels, scores (k,), classes (k,))`` for one image.
"""

from __future__ import annotations

import functools
import importlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..runtime.ort import ort_session

Candidates = tuple[np.ndarray, np.ndarray, np.ndarray]
Decoder = Callable[[dict[str, np.ndarray], tuple[int, int], float], Candidates]


def _single(outputs: dict[str, np.ndarray]) -> np.ndarray:
    if len(outputs) != 1:
        # Ultralytics exports with extra outputs (segmentation protos) keep the detections first
        return np.asarray(next(iter(outputs.values())))
    return np.asarray(next(iter(outputs.values())))


def _multi_label(boxes: np.ndarray, scores: np.ndarray, conf: float) -> Candidates:
    """Every (box, class) with score > conf. ``scores``: (N, nc)."""
    rows, cls = np.nonzero(scores > conf)
    return boxes[rows].astype(np.float32), scores[rows, cls].astype(np.float32), cls.astype(np.int64)


def _cxcywh(b: np.ndarray) -> np.ndarray:
    return np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2],
                    axis=1)


def yolov8(outputs: dict[str, np.ndarray], input_hw: tuple[int, int], conf: float) -> Candidates:
    y = _single(outputs)
    y = y[0] if y.ndim == 3 else y
    return _multi_label(_cxcywh(y[:4].T), y[4:].T, conf)


def yolov5(outputs: dict[str, np.ndarray], input_hw: tuple[int, int], conf: float) -> Candidates:
    y = _single(outputs)
    y = y[0] if y.ndim == 3 else y
    return _multi_label(_cxcywh(y[:, :4]), y[:, 4:5] * y[:, 5:], conf)


def fastestdet(outputs: dict[str, np.ndarray], input_hw: tuple[int, int], conf: float) -> Candidates:
    y = _single(outputs)
    y = y[0] if y.ndim == 4 else y
    c, gh, gw = y.shape
    h, w = input_hw
    gy, gx = np.meshgrid(np.arange(gh, dtype=np.float32), np.arange(gw, dtype=np.float32), indexing="ij")
    obj = y[0]
    cx = (gx + np.tanh(y[1])) / gw * w
    cy = (gy + np.tanh(y[2])) / gh * h
    bw = 1 / (1 + np.exp(-y[3])) * w
    bh = 1 / (1 + np.exp(-y[4])) * h
    boxes = _cxcywh(np.stack([cx.ravel(), cy.ravel(), bw.ravel(), bh.ravel()], axis=1))
    cls = y[5:].reshape(c - 5, -1).T
    scores = np.power(np.clip(obj.ravel(), 0, None)[:, None], 0.6) * np.power(np.clip(cls, 0, None), 0.4)
    return _multi_label(boxes, scores, conf)


DECODERS: dict[str, Decoder] = {"yolov8": yolov8, "yolov5": yolov5, "fastestdet": fastestdet}


def guess_decoder(output_shapes: list[list[Any]], n_classes: int | None = None) -> str | None:
    """The decoder an output shape implies, when it is unambiguous; else None."""
    if len(output_shapes) < 1:
        return None
    s = output_shapes[0]
    if len(s) == 4 and isinstance(s[1], int):
        return "fastestdet" if n_classes is None or s[1] == 5 + n_classes else None
    if len(s) == 3 and isinstance(s[1], int) and isinstance(s[2], int):
        if s[1] < s[2]:  # (4 + nc) × N
            return "yolov8" if n_classes is None or s[1] == 4 + n_classes else None
        return "yolov5" if n_classes is None or s[2] == 5 + n_classes else None
    if len(s) == 3 and isinstance(s[1], int):  # N dynamic: channels first
        return "yolov8" if n_classes is None or s[1] == 4 + n_classes else None
    if len(s) == 3 and isinstance(s[2], int):
        return "yolov5" if n_classes is None or s[2] == 5 + n_classes else None
    return None


def get_decoder(name: str) -> Decoder:
    """A decoder by name, or a ``package.module:function`` hook."""
    if name in DECODERS:
        return DECODERS[name]
    if ":" in name:
        mod_name, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"--decoder {name}: cannot import it ({e})") from None
        if not callable(fn):
            raise ConfigError(f"--decoder {name} is not a function")
        return fn
    raise ConfigError(f"unknown decoder {name!r}; choose {', '.join(DECODERS)} or give package.module:function")


@functools.lru_cache(maxsize=1)
def _nms_session() -> Any:
    """A one-node ONNX graph running ONNX Runtime's NonMaxSuppression (class-aware over the score matrix)."""
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "score_thr"], ["sel"],
                          center_point_box=0)],
        "nms",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, "n", 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, "c", "n"]),
         helper.make_tensor_value_info("max_out", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("iou", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("score_thr", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("sel", TensorProto.INT64, ["k", 3])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nms.onnx"
        onnx.save(model, str(path))
        return ort_session(path, 1)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float = 0.45, max_det: int = 300,
        max_candidates: int = 3000, return_index: bool = False) -> Any:
    """Class-aware non-maximum suppression by ONNX Runtime; the ``max_det`` best survivors, best first. Only the
    ``max_candidates`` best-scoring candidates enter it (as Ultralytics' ``max_nms`` does): at a 0.001 threshold a
    detector proposes tens of thousands, and NMS cost grows with the square of them per class. With
    ``return_index`` a fourth array gives the survivors' positions in the input."""
    index = np.arange(len(scores))
    if len(scores) == 0:
        out = boxes.reshape(0, 4).astype(np.float32), scores.astype(np.float32), classes.astype(np.int64)
        return (*out, index) if return_index else out
    if len(scores) > max_candidates:
        index = np.argpartition(-scores, max_candidates)[:max_candidates]
        boxes, scores, classes = boxes[index], scores[index], classes[index]
    # one row per candidate, scores only in its class's row: per-class suppression in one call
    uniq, inv = np.unique(classes, return_inverse=True)
    mat = np.zeros((1, len(uniq), len(scores)), dtype=np.float32)
    mat[0, inv, np.arange(len(scores))] = scores
    thr = float(scores.min()) * 0.5  # below every candidate, above the zeros of the other classes' rows
    sel = _nms_session().run(["sel"], {
        "boxes": boxes[None].astype(np.float32), "scores": mat, "max_out": np.array([max_det], dtype=np.int64),
        "iou": np.array([iou], dtype=np.float32), "score_thr": np.array([thr], dtype=np.float32)})[0]
    keep = sel[:, 2]
    order = keep[np.argsort(-scores[keep], kind="stable")][:max_det]
    out = boxes[order].astype(np.float32), scores[order].astype(np.float32), classes[order].astype(np.int64)
    return (*out, index[order]) if return_index else out
