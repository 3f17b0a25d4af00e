"""The numbers behind the padding fix in tasks/detect.py and the bound of
tests/e2e/test_detection.py::test_batched_frames_share_the_full_letterbox_and_map_back.

TinyYolo (the tests' random-weight YOLOv8-layout detector), seeds 0-4, exported with dynamic H/W, on the tests'
synthetic shape set (12 validation images): box agreement of ONNX Runtime FP32 against PyTorch FP32 at batch 1,
with boxes wholly in the letterbox padding dropped before NMS (nanoify now) and kept (before: mapped back and
clipped to zero area); and batch 1 against batch 4 (the full 640×640 letterbox) with the fix. Appends to
RESULTS.md.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _results import append, machine_line  # noqa: E402


def _old_add(task, state, idx, outputs):
    """tasks/detect.py's Detection.add before the fix: NMS over every candidate, then map back and clip."""
    from nanoify.tasks.decoders import nms
    from nanoify.tasks.detect import Detections

    rows = state["rows"]
    for j, i in enumerate(idx):
        h, w = rows.size(int(i))
        pre = task._pre(h, w, batched=len(idx) > 1)
        g = pre.geometry(h, w)
        one = {k: np.asarray(v)[j:j + 1] for k, v in outputs.items()}
        boxes, scores, classes = task.decode(one, tuple(pre.size), task.conf)
        boxes, scores, classes = nms(np.asarray(boxes, np.float32), np.asarray(scores, np.float32),
                                     np.asarray(classes, np.int64), task.iou, task.max_det)
        boxes = boxes.copy()
        boxes[:, [0, 2]] = np.clip((boxes[:, [0, 2]] - g["pad_x"]) / g["scale_x"], 0, w)
        boxes[:, [1, 3]] = np.clip((boxes[:, [1, 3]] - g["pad_y"]) / g["scale_y"], 0, h)
        state["out"][int(i)] = Detections(boxes, scores, classes)


def main() -> int:
    from nanoify.engines import open_engine
    from nanoify.export.onnx import export
    from nanoify.tasks import make_task
    from nanoify.tasks.detect import Detection, box_agreement
    from nanoify.tasks.resolve import resolve
    from tests.conftest import DET_CLASSES, TinyYolo, make_detection_set

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_detection_set(Path(tmp) / "shapes")
        for seed in range(5):
            out = Path(tmp) / f"y{seed}"
            export(TinyYolo(seed=seed).eval(), out, example_input=np.zeros((1, 3, 640, 640), np.float32),
                   dynamic_hw=True, preprocess={"size": [640, 640], "resize": "letterbox"}, labels=DET_CLASSES,
                   factory="tests.conftest:TinyYolo", output_names=("output0",), task="detection", decoder="yolov8")
            task = make_task(resolve(out))
            es = task.eval_set(str(data))
            res = {}
            for name, add in (("now", Detection.add), ("before", _old_add)):
                task.add = (lambda s, i, o, add=add, t=task: add(t, s, i, o))
                with open_engine("onnxruntime", str(out / "model.onnx")) as a, \
                        open_engine("torch", str(out / "torch")) as b:
                    res[name] = box_agreement(task.predict(a.infer, es), task.predict(b.infer, es))
                    if name == "now":
                        one, four = task.predict(a.infer, es), task.predict(a.infer, es, batch_size=4)
                        res["pad"] = box_agreement(one, four)
            rows.append((seed, res))
    when = time.strftime("%Y-%m-%d %H:%M")
    lines = [f"\n## Boxes in the letterbox padding — {when} (`benchmarks/padding_boxes.py`)\n",
             machine_line() + ".", "TinyYolo (random weights, the tests' detector), 12 synthetic validation images.",
             "", "| seed | ORT vs PyTorch FP32, padding boxes kept (before) | the same, dropped (now) | batch 1 vs 4, "
             "kept share | mean IoU of kept |", "|---|---|---|---|---|"]
    for seed, r in rows:
        lines.append(f"| {seed} | {r['before']['box_agreement']:.3f} | {r['now']['box_agreement']:.3f} | "
                     f"{r['pad']['box_agreement']:.3f} | {r['pad']['mean_iou']:.4f} |")
    append(ROOT / "benchmarks" / "RESULTS.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
