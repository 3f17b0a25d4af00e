"""Object detection: images in, boxes out, scored by COCO mAP (pycocotools) or by agreement with a reference.

Rows are images decoded per batch; the preprocessing (``preprocess.json``: usually ``letterbox`` with pad 114,
or the model's own resize) maps each image onto the model's input, and every box is mapped back to the original
image's pixels. A model whose height and width are dynamic gets each image letterboxed into ``size`` and padded
only to the next multiple of the stride (one image per batch), so an engine never receives a shape it cannot
take. Raw outputs are decoded per batch (:mod:`nanoify.tasks.decoders`), then class-aware NMS (IoU 0.45 by
default) keeps the best ``max_det`` boxes per image, with a low score threshold (0.001) as mAP evaluation wants.

Metrics: ``map50_95`` and ``map50`` (0..1) from pycocotools' COCOeval against the data's boxes; without labels,
the FP32 model's own confident detections (score ≥ 0.25) are the ground truth and the budget counts
``box_agreement``: the share of the reference's confident boxes that a candidate finds again (same class,
IoU ≥ 0.5, candidate score ≥ 0.1), with ``mean_iou`` of the matches.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..data.detection import DetSplit, detection_splits, load_detection
from ..data.images import Preprocess
from ..data.splits import pick_split
from ..errors import DataError, ModelError
from .base import EvalSet, Feed, Outputs, Task
from .decoders import get_decoder, guess_decoder, nms
from .image import ImageKind, image_ref, one_image_input, preprocess_of
from .kinds import ModelRef, Spec

SETTINGS_FILE = "detection.json"  # decoder and thresholds of a detector, beside it
REF_CONF = 0.25  # a reference box counts as a detection the user would see
MATCH_CONF = 0.1  # a candidate box may have drifted a little below the display threshold and still count
MATCH_IOU = 0.5


@dataclass
class Detections:
    """One image's boxes (k×4, x1 y1 x2 y2 in original pixels), scores and class ids, best first."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


@dataclass
class DetRows:
    """A view of a detection split through ``index``: images decoded on demand, sizes known up front."""

    split: DetSplit
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    def take(self, idx: Sequence[int]) -> DetRows:
        return DetRows(self.split, self.index[np.asarray(list(idx), dtype=np.int64)])

    def size(self, i: int) -> tuple[int, int]:
        return self.split.sizes[int(self.index[i])]

    def load(self, idx: Sequence[int]) -> list[np.ndarray]:
        return self.split.source.load([int(self.index[i]) for i in idx])


@dataclass
class Truth:
    """Ground-truth boxes and classes per row (original pixels)."""

    boxes: list[np.ndarray]
    classes: list[np.ndarray]

    def __getitem__(self, idx: Any) -> Truth:
        idx = list(idx)
        return Truth([self.boxes[i] for i in idx], [self.classes[i] for i in idx])


def coco_map(truth: Truth, preds: Sequence[Detections], sizes: Sequence[tuple[int, int]]) -> dict[str, float]:
    """mAP@0.5:0.95 and mAP@0.5 by pycocotools' COCOeval (no hand-written mAP)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, dets = [], [], []
    cats: set[int] = set()
    for i, ((h, w), b, c) in enumerate(zip(sizes, truth.boxes, truth.classes, strict=True)):
        images.append({"id": i + 1, "height": int(h), "width": int(w)})
        for box, cl in zip(b, c, strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(cl) + 1, "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": max(0.0, (x2 - x1) * (y2 - y1))})
            cats.add(int(cl) + 1)
    for i, p in enumerate(preds):
        for box, s, cl in zip(p.boxes, p.scores, p.classes, strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            dets.append({"image_id": i + 1, "category_id": int(cl) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "score": float(s)})
    if not anns:
        return {"map50_95": 0.0, "map50": 0.0}
    if not dets:
        return {"map50_95": 0.0, "map50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools narrates every step
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in sorted(cats)]}
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map50_95": max(0.0, float(ev.stats[0])), "map50": max(0.0, float(ev.stats[1]))}


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of xyxy boxes a (n×4) and b (m×4)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def box_agreement(reference: Sequence[Detections], preds: Sequence[Detections]) -> dict[str, float]:
    """Share of the reference's confident boxes found again (same class, IoU ≥ 0.5), greedy by reference score,
    and the mean IoU of the matches."""
    found, total, ious = 0, 0, []
    for r, p in zip(reference, preds, strict=True):
        rk = r.scores >= REF_CONF
        pk = p.scores >= MATCH_CONF
        rb, rc = r.boxes[rk], r.classes[rk]
        pb, pc = p.boxes[pk], p.classes[pk]
        total += len(rb)
        if not len(rb) or not len(pb):
            continue
        iou = _iou(rb, pb) * (rc[:, None] == pc[None, :])
        used = np.zeros(len(pb), dtype=bool)
        for i in range(len(rb)):  # reference boxes come best first
            cand = np.where(~used, iou[i], 0.0)
            j = int(np.argmax(cand))
            if cand[j] >= MATCH_IOU:
                used[j] = True
                found += 1
                ious.append(float(cand[j]))
    return {"box_agreement": found / total if total else 1.0, "mean_iou": float(np.mean(ious)) if ious else 0.0,
            "reference_boxes": total}


class Detection(Task):
    """One float image input → raw detector outputs → boxes (see module docstring)."""

    name = "detection"
    default_calib_samples = 100
    timing_distinct_rows = 64
    default_batch = 8
    calib_batch = 1  # a 640×640 YOLO holds about 0.4 GB of intermediates per image: calibrate one at a time
    agreement_key = "box_agreement"

    def __init__(self, preprocess: Preprocess, labels: list[str] | None, input_name: str, decoder: str,
                 conf: float = 0.001, iou: float = 0.45, max_det: int = 300, dynamic_hw: bool = False,
                 stride: int = 32) -> None:
        if preprocess.size is None:
            raise DataError("the preprocessing has no size; set \"size\": [H, W] in preprocess.json")
        self.preprocess = preprocess
        self.labels = labels
        self.input_name = input_name
        self.decoder_name = decoder
        self.decode = get_decoder(decoder)
        self.conf, self.iou, self.max_det = conf, iou, max_det
        self.dynamic_hw, self.stride = dynamic_hw, stride

    # -- data -------------------------------------------------------------------------------------------
    def _split(self, data: Any, split: str | None, purpose: str) -> tuple[DetSplit, str]:
        spec = str(getattr(data, "data", data) or "")
        if not spec:
            raise DataError("detection data is needed: a YOLO-format or COCO-format set, or a folder of images")
        _, splits = detection_splits(spec)
        chosen = pick_split(None if splits is None else set(splits), split, purpose, spec)
        return load_detection(spec, None if splits is None else chosen), chosen

    def eval_set(self, data: Any, split: str | None = None, limit: int | None = None) -> EvalSet:
        sp, chosen = self._split(data, split, "eval")
        n = len(sp.sizes) if limit is None else min(limit, len(sp.sizes))
        truth = None if sp.boxes is None else Truth(sp.boxes[:n], sp.classes[:n])  # type: ignore[index]
        return EvalSet(DetRows(sp, np.arange(n)), truth, f"{sp.where} ({chosen})", chosen, sp.provenance)

    def calib_set(self, data: Any, n: int | None = None, seed: int = 0) -> EvalSet:
        sp, chosen = self._split(data, None, "calib")
        k = min(n or self.default_calib_samples, len(sp.sizes))
        idx = np.sort(np.random.default_rng(seed).choice(len(sp.sizes), size=k, replace=False))
        return EvalSet(DetRows(sp, idx), None, f"{sp.where} ({chosen})", chosen,
                       {**sp.provenance, "sample": {"n": int(k), "seed": seed}})

    def subset(self, es: EvalSet, idx: Sequence[int]) -> EvalSet:
        idx = list(idx)
        return EvalSet(es.rows.take(idx), None if es.labels is None else es.labels[idx], es.where, es.split,
                       es.provenance)

    # -- feeds --------------------------------------------------------------------------------------------
    # Dynamic H/W: an image alone is letterboxed into ``size`` and padded only to its own stride multiple (what
    # batch-1 serving does, and how predictions are scored); images batched together share one shape, so each
    # is letterboxed into the full ``size`` (rounded up to the stride). The batch's length decides, in
    # ``batches`` and in ``add`` alike, so boxes always map back through the geometry that made them.
    def predict(self, run: Any, es: EvalSet, batch_size: int | None = None, progress: bool = False,
                desc: str = "predict") -> Any:
        return super().predict(run, es, batch_size or (1 if self.dynamic_hw else None), progress, desc)

    def full_size(self) -> Preprocess:
        """The shape every image of a batch shares (dynamic H/W): ``size`` rounded up to the stride."""
        th, tw = self.preprocess.size  # type: ignore[misc]
        size = (math.ceil(th / self.stride) * self.stride, math.ceil(tw / self.stride) * self.stride)
        return replace(self.preprocess, size=size, resize="letterbox")

    def _pre(self, h: int, w: int, batched: bool) -> Preprocess:
        return self.full_size() if batched and self.dynamic_hw else self.preprocess_for(h, w)

    def preprocess_for(self, h: int, w: int) -> Preprocess:
        """The preprocessing of one h×w image: the model's fixed size, or (dynamic H/W) the image letterboxed
        into ``size`` and padded only up to the next multiple of the stride."""
        if not self.dynamic_hw:
            return self.preprocess
        th, tw = self.preprocess.size  # type: ignore[misc]
        r = min(th / h, tw / w)
        nh, nw = max(1, round(h * r)), max(1, round(w * r))
        size = (math.ceil(nh / self.stride) * self.stride, math.ceil(nw / self.stride) * self.stride)
        return replace(self.preprocess, size=size, resize="letterbox")

    def batches(self, es: EvalSet, batch_size: int, sort: bool = False) -> Iterator[tuple[np.ndarray, Feed]]:
        rows: DetRows = es.rows
        for start in range(0, len(rows), batch_size):
            b = np.arange(start, min(start + batch_size, len(rows)), dtype=np.int64)
            imgs = rows.load(b)
            pre = self._pre(*imgs[0].shape[:2], batched=len(b) > 1)
            yield b, {self.input_name: pre(imgs)}

    # -- outputs ------------------------------------------------------------------------------------------
    def start(self, es: EvalSet | None, n: int) -> dict[str, Any]:
        if es is None:
            raise DataError("detections need the rows' image sizes to map boxes back")
        return {"rows": es.rows, "out": [None] * n}

    def add(self, state: dict[str, Any], idx: np.ndarray, outputs: Outputs) -> None:
        rows: DetRows = state["rows"]
        for j, i in enumerate(idx):
            h, w = rows.size(int(i))
            pre = self._pre(h, w, batched=len(idx) > 1)
            g = pre.geometry(h, w)
            one = {k: np.asarray(v)[j:j + 1] for k, v in outputs.items()}
            boxes, scores, classes = self.decode(one, tuple(pre.size), self.conf)  # type: ignore[arg-type]
            boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
            scores, classes = np.asarray(scores, dtype=np.float32), np.asarray(classes, dtype=np.int64)
            # back to the image's pixels, clipped to it; a box wholly inside the letterbox padding clips to zero
            # area: it shows no part of the image, and is dropped before NMS so it neither takes one of the
            # max_det places nor suppresses a real box (no box could match it, so it only ever cost precision)
            mapped = boxes.copy()
            mapped[:, [0, 2]] = np.clip((boxes[:, [0, 2]] - g["pad_x"]) / g["scale_x"], 0, w)
            mapped[:, [1, 3]] = np.clip((boxes[:, [1, 3]] - g["pad_y"]) / g["scale_y"], 0, h)
            inside = (mapped[:, 2] > mapped[:, 0]) & (mapped[:, 3] > mapped[:, 1])
            ids = np.flatnonzero(inside)
            _, scores, classes, kept = nms(boxes[ids], scores[ids], classes[ids], self.iou, self.max_det,
                                           return_index=True)
            state["out"][int(i)] = Detections(mapped[ids[kept]], scores, classes)

    def finish(self, state: dict[str, Any]) -> list[Detections]:
        return state["out"]

    def score(self, preds: list[Detections], es: EvalSet) -> dict[str, Any]:
        out: dict[str, Any] = {"n": len(preds), "boxes_per_image": float(np.mean([
            (p.scores >= REF_CONF).sum() for p in preds])) if preds else 0.0}
        if es.labels is None:
            return out
        sizes = [es.rows.size(i) for i in range(len(es.rows))]
        return {**out, **coco_map(es.labels, preds, sizes), "objects": int(sum(len(b) for b in es.labels.boxes))}

    def agreement(self, reference: list[Detections], preds: list[Detections]) -> dict[str, Any]:
        """Box agreement, and mAP with the reference's confident boxes as the ground truth."""
        truth = Truth([r.boxes[r.scores >= REF_CONF] for r in reference],
                      [r.classes[r.scores >= REF_CONF] for r in reference])
        vs_ref = coco_map(truth, preds, [(1, 1)] * len(preds))  # image sizes play no part in box AP
        return {**box_agreement(reference, preds), "map50_95_vs_reference": vs_ref["map50_95"],
                "map50_vs_reference": vs_ref["map50"]}

    def primary_metric(self, es: EvalSet) -> str:
        return "map50_95" if es.labelled else "box_agreement"


class DetectionKind(ImageKind):
    """Detectors: one float rank-4 input, raw box outputs (not 2-D), a decoder and thresholds (``detection.json``
    beside the model, ``--decoder``, or told by the output's shape)."""

    name = "detection"
    classifies = False
    metric_words = {"map50_95": "mAP@0.5:0.95", "box_agreement": "boxes kept"}
    table_rows = (
        ("map50_95", "mAP@0.5:0.95", 4),
        ("map50", "mAP@0.5", 4),
        ("box_agreement", "boxes kept vs baseline (IoU ≥ 0.5, same class)", 4),
        ("mean_iou", "mean IoU of kept boxes", 4),
        ("map50_95_vs_reference", "mAP@0.5:0.95 with baseline boxes as truth", 4),
    )
    settings = ("decoder", "conf", "iou", "max_det", "stride")
    settings_file = SETTINGS_FILE

    def recognise(self, inputs: Spec, outputs: Spec, tokenizer: Path | None) -> bool:
        return (len(inputs) == 1 and len(next(iter(inputs.values()))[1]) == 4
                and {len(s) for _, s in outputs.values()} != {2})

    def from_onnx(self, name: str, path: Path, engine: str, inputs: Spec, outputs: Spec, tokenizer: Path | None,
                  preprocess: Any, decoder: str | None) -> ModelRef:
        x = one_image_input(path, inputs, "a detector")
        det = detection_settings(path.parent, decoder, [s for _, s in outputs.values()])
        return self._with_settings_file(image_ref(name, path, engine, x, inputs[x][1], path.parent, preprocess,
                                                  self, det), path.parent)

    def from_module(self, folder: Path, engine: str, input_name: str, shape: list[Any], preprocess: Any,
                    decoder: str | None) -> ModelRef:
        det = detection_settings(folder, decoder, [["batch", "?", "?"]])
        return self._with_settings_file(image_ref(folder.name, folder, engine, input_name, shape, folder,
                                                  preprocess, self, det), folder)

    @staticmethod
    def _with_settings_file(ref: ModelRef, folder: Path) -> ModelRef:
        found = next((c / SETTINGS_FILE for c in (folder, folder.parent) if (c / SETTINGS_FILE).is_file()), None)
        if found is not None:
            ref.assets.append(found)
        return ref

    def make(self, ref: ModelRef) -> Detection:
        p = ref.settings
        extra = {k: p[k] for k in ("conf", "iou", "max_det", "stride") if k in p}
        return Detection(preprocess_of(ref), ref.labels, p.get("input", "input"), p["decoder"],
                         dynamic_hw=bool(p.get("dynamic_hw")), **extra)

    def write_assets(self, ref: ModelRef, folder: Path) -> None:
        super().write_assets(ref, folder)
        det = {k: ref.settings[k] for k in self.settings if k in ref.settings}
        (folder / SETTINGS_FILE).write_text(json.dumps(det, indent=2) + "\n")

    def export_settings(self, decoder: str | None) -> dict[str, Any] | None:
        return {"decoder": decoder} if decoder else None


def detection_settings(folder: Path, decoder: str | None, output_shapes: list[list[Any]]) -> dict[str, Any]:
    """Decoder and thresholds of a detector: ``--decoder``, else ``detection.json`` beside it, else the decoder its
    output shape implies; none of these is a one-line error."""
    d: dict[str, Any] = {}
    for c in (folder, folder.parent):
        f = c / SETTINGS_FILE
        if f.is_file():
            try:
                d = json.loads(f.read_text())
            except json.JSONDecodeError as e:
                raise DataError(f"{f} is not valid JSON ({e.msg})") from None
            unknown = set(d) - set(DetectionKind.settings)
            if unknown:
                raise DataError(f"{f}: unknown key(s) {', '.join(sorted(unknown))}; allowed: decoder, conf, iou, "
                                "max_det, stride")
            break
    if decoder:
        d["decoder"] = decoder
    if not d.get("decoder"):
        d["decoder"] = guess_decoder(output_shapes)
    if not d.get("decoder"):
        raise ModelError(f"cannot tell how to decode outputs of shape {output_shapes}; pass --decoder yolov8|yolov5|"
                         "fastestdet or package.module:function")
    return d
