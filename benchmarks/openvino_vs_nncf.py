"""OpenVINO peer benchmark: nanoify's `--target openvino` beside OpenVINO FP32 and OpenVINO + NNCF INT8, in one run.

Run: `make bench-openvino` (installs NNCF into the venv first: it is a comparison, not a nanoify dependency), or
`.venv/bin/python benchmarks/openvino_vs_nncf.py [--repeats 3]`.

Models: ResNet-20 on CIFAR-10 (``../shared/models/resnet_cifar10``, exported by ``nanoify export``; scored on the
10,000 test images, batch-32 throughput is its headline) and FastestDet on COCO128 (``../shared/models/fastestdet``,
its ONNX as shipped with nanoify's preprocessing and decoder files; mAP@0.5:0.95 on the 128 images, batch-1 latency
is its headline). Calibration: the same images for everyone (nanoify's task samples them; NNCF gets those).

* ORT FP32 — the baseline of every ratio.
* nanoify ``--target cpu`` (ONNX Runtime INT8) and ``--target openvino`` (candidates measured in OpenVINO), both
  ``--budget 0.3``.
* OpenVINO FP32 (``openvino:fp32`` on the exported graph).
* NNCF 3.x ``nncf.quantize`` on the OpenVINO model with the DEFAULT (symmetric) and MIXED presets, saved as IR.

Everything measured by ``nanoify bench``, each model in fresh processes, medians of ``--repeats`` interleaved
runs. Targets (issue 20, stated for a VNNI CPU): ResNet-20 b32 ≥ 3.4× ORT FP32 with ≤ 100 of 10,000 predictions
changed and top-1 ≥ FP32 − 0.3; FastestDet b1 ≥ 1.6× ORT FP32 with mAP@0.5:0.95 ≥ FP32 − 0.3; in every row at
least as fast as OpenVINO+NNCF in the same run with fewer changed predictions (boxes) than NNCF's default preset.
Not yet in this script: a YOLO-layout detector and the MiniLM teacher (issue 20's other rows).
Appends a dated section with machine and versions to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _results import append, machine_line  # noqa: E402

from nanoify.bench.run import benchmark, format_table  # noqa: E402
from nanoify.config import BenchConfig, QuantizeConfig  # noqa: E402

SHARED = ROOT.parent / "shared"
CIFAR = SHARED / "data" / "vision" / "cifar10"
WEIGHTS = SHARED / "models" / "resnet_cifar10" / "resnet20.safetensors"
COCO = SHARED / "data" / "vision" / "coco128"
FASTESTDET = SHARED / "models" / "fastestdet" / "FastestDet.onnx"
PRE = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
DET_PRE = {"size": [352, 352], "resize": "stretch", "interpolation": "area", "channels": "bgr"}
WORK = ROOT / ".cache" / "bench" / "openvino"
SIDE_FILES = ("preprocess.json", "label_map.json", "detection.json")


def _ok(cond: bool) -> str:
    return "met" if cond else "MISSED"


def _calib_inputs(model_dir: Path, data: Path, n: int = 100) -> list[np.ndarray]:
    """The preprocessed calibration images nanoify's task samples for ``model_dir`` (same seed, same rows)."""
    from nanoify.tasks import make_task
    from nanoify.tasks.resolve import resolve

    task = make_task(resolve(model_dir))
    cs = task.calib_set(str(data), n)
    return [next(iter(f.values())) for _, f in task.batches(cs, 1)]


def _nncf(model_dir: Path, data: Path, preset: str, dst: Path) -> Path:
    """NNCF post-training INT8 of the OpenVINO model on the same calibration images; IR with nanoify's side files
    beside it (so bench reads it like any model)."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(model_dir / "model.onnx"))
    q = nncf.quantize(model, nncf.Dataset(_calib_inputs(model_dir, data)),
                      preset=getattr(nncf.QuantizationPreset, preset), subset_size=100)
    dst.mkdir(parents=True, exist_ok=True)
    ov.save_model(q, str(dst / "model.xml"), compress_to_fp16=False)
    for f in SIDE_FILES:
        if (model_dir / f).is_file():
            shutil.copyfile(model_dir / f, dst / f)
    return dst / "model.xml"


def _peers(name: str, model_dir: Path, data: Path, repeats: int, budget: float) -> tuple[dict, dict]:
    """nanoify's cpu and openvino targets, OpenVINO FP32 and NNCF (default and MIXED presets) beside ORT FP32, in
    one bench run; returns the report and the quantize runs."""
    import nanoify

    runs = {}
    for target in ("cpu", "openvino"):
        t0 = time.time()
        man = nanoify.quantize(model_dir, WORK / f"{name}-nanoify-{target}", calib=str(data),
                               config=QuantizeConfig(budget=budget, target=target), progress=False)
        runs[target] = (man, time.time() - t0)
        logging.info("%s --target %s chose %s in %.0f s", name, target, man["chosen"], runs[target][1])
    nncf_default = _nncf(model_dir, data, "PERFORMANCE", WORK / f"{name}-nncf-default")
    nncf_mixed = _nncf(model_dir, data, "MIXED", WORK / f"{name}-nncf-mixed")
    models = [str(model_dir / "model.onnx"), str(WORK / f"{name}-nanoify-cpu"), str(WORK / f"{name}-nanoify-openvino"),
              str(model_dir / "model.onnx"), str(nncf_default), str(nncf_mixed)]
    engines = ("onnxruntime", None, None, "openvino:fp32", "openvino", "openvino")
    names = ["ORT FP32", f"nanoify cpu ({runs['cpu'][0]['chosen']}, ORT)",
             f"nanoify openvino ({runs['openvino'][0]['chosen']}, OV)", "OpenVINO FP32",
             "OV + NNCF INT8 (default preset)", "OV + NNCF INT8 (MIXED)"]
    rep = benchmark(models, str(data), out=WORK / f"{name}-bench", progress=False, names=names,
                    config=BenchConfig(repeats=repeats, engines=engines))
    return rep, runs


def resnet20(repeats: int) -> tuple[list[str], str]:
    import nanoify
    from nanoify.models.load import build_module, load_weights

    export = WORK / "resnet20-export"
    classes = [str(c) for c in np.load(CIFAR / "test.npz")["classes"]]
    module = load_weights(build_module("nanoify.models.vision:resnet20"), WEIGHTS)
    nanoify.export(module, export, example_input=np.zeros((1, 3, 32, 32), np.float32), preprocess=PRE,
                   labels=classes, factory="nanoify.models.vision:resnet20")
    rep, runs = _peers("resnet20", export, CIFAR, repeats, 0.3)
    ort32, _nz_cpu, nz_ov, _ov32, nn_def, nn_mix = rep["models"]
    b32 = {m["name"]: m["throughput"] / ort32["throughput"] for m in rep["models"]}
    drop = (ort32["accuracy"] - nz_ov["accuracy"]) * 100
    ov_man = runs["openvino"][0]
    beats_nncf = (b32[nz_ov["name"]] >= b32[nn_def["name"]]
                  and nz_ov["predictions_changed"] < nn_def["predictions_changed"])
    verdicts = [
        f"- nanoify --target openvino ({ov_man['chosen']}, search {runs['openvino'][1]:.0f} s): b32 "
        f"{b32[nz_ov['name']]:.2f}× ORT FP32 (target ≥ 3.4: {_ok(b32[nz_ov['name']] >= 3.4)}), "
        f"{nz_ov['predictions_changed']} of 10,000 changed (target ≤ 100: {_ok(nz_ov['predictions_changed'] <= 100)}), "
        f"top-1 {nz_ov['accuracy']:.4f} vs FP32 {ort32['accuracy']:.4f} ({-drop:+.2f} pt; target ≥ −0.3: "
        f"{_ok(drop <= 0.3)}); INT8 layers in OpenVINO's compiled model: "
        f"{ov_man.get('openvino', {}).get('int8_layers')}",
        f"- against NNCF in the same run: b32 {b32[nz_ov['name']] / b32[nn_def['name']]:.2f}× NNCF default "
        f"({nn_def['predictions_changed']} changed) and {b32[nz_ov['name']] / b32[nn_mix['name']]:.2f}× NNCF MIXED "
        f"({nn_mix['predictions_changed']} changed); target: ≥ 1.0× with fewer changed than NNCF default: "
        f"{_ok(beats_nncf)}",
        "- b32 ratios to ORT FP32: " + ", ".join(f"{k} {v:.2f}×" for k, v in b32.items()),
    ]
    headline = (f"ResNet-20 on OpenVINO: b32 {b32[nz_ov['name']]:.2f}× ORT FP32, {nz_ov['predictions_changed']} "
                f"changed; NNCF default {b32[nn_def['name']]:.2f}× / {nn_def['predictions_changed']} changed")
    return ["### ResNet-20, CIFAR-10 (10,000 test images)", "", format_table(rep), "", *verdicts, ""], headline


def fastestdet(repeats: int) -> tuple[list[str], str]:
    model_dir = WORK / "fastestdet-fp32"
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(FASTESTDET, model_dir / "model.onnx")
    (model_dir / "preprocess.json").write_text(json.dumps(DET_PRE))
    names = [n for n in (COCO / "names.txt").read_text().splitlines() if n.strip()]
    (model_dir / "label_map.json").write_text(json.dumps({"names": names}))
    (model_dir / "detection.json").write_text(json.dumps({"decoder": "fastestdet"}))
    rep, runs = _peers("fastestdet", model_dir, COCO, repeats, 0.3)
    ort32, _nz_cpu, nz_ov, _ov32, nn_def, nn_mix = rep["models"]
    b1 = {m["name"]: ort32["latency_ms_p50"] / m["latency_ms_p50"] for m in rep["models"]}
    drop = (ort32["map50_95"] - nz_ov["map50_95"]) * 100
    kept = {m["name"]: m.get("box_agreement") for m in rep["models"]}
    verdicts = [
        f"- nanoify --target openvino ({runs['openvino'][0]['chosen']}, search {runs['openvino'][1]:.0f} s): b1 "
        f"{b1[nz_ov['name']]:.2f}× ORT FP32 (target ≥ 1.6: {_ok(b1[nz_ov['name']] >= 1.6)}), mAP@0.5:0.95 "
        f"{nz_ov['map50_95'] * 100:.2f} vs FP32 {ort32['map50_95'] * 100:.2f} ({-drop:+.2f} pt; target ≥ −0.3: "
        f"{_ok(drop <= 0.3)}), boxes kept {kept[nz_ov['name']]:.3f}",
        f"- against NNCF in the same run: b1 {b1[nz_ov['name']] / b1[nn_def['name']]:.2f}× NNCF default (boxes kept "
        f"{kept[nn_def['name']]:.3f}) and {b1[nz_ov['name']] / b1[nn_mix['name']]:.2f}× NNCF MIXED "
        f"({kept[nn_mix['name']]:.3f})",
        "- b1 ratios to ORT FP32: " + ", ".join(f"{k} {v:.2f}×" for k, v in b1.items()),
    ]
    headline = (f"FastestDet on OpenVINO: b1 {b1[nz_ov['name']]:.2f}× ORT FP32, mAP {-drop:+.2f} pt; NNCF default "
                f"{b1[nn_def['name']]:.2f}×")
    return ["### FastestDet, COCO128 (128 images)", "", format_table(rep), "", *verdicts, ""], headline


MODELS = {"resnet20": (resnet20, lambda: WEIGHTS.is_file() and (CIFAR / "test.npz").is_file()),
          "fastestdet": (fastestdet, lambda: FASTESTDET.is_file() and (COCO / "images").is_dir())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="interleaved fresh-process bench runs per model")
    ap.add_argument("--models", default="resnet20,fastestdet", help="comma-separated: " + ", ".join(MODELS))
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    wanted = [m.strip() for m in a.models.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in MODELS]
    if unknown or not wanted:
        print(f"--models: unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(MODELS)}", file=sys.stderr)
        return 2
    missing = [m for m in wanted if not MODELS[m][1]()]
    if missing:
        print(f"needs the shared data and weights of {', '.join(missing)} (../shared, see DATA.md)", file=sys.stderr)
        return 2
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError as e:
        print(f"needs {e.name}: pip install openvino nncf (make bench-openvino does)", file=sys.stderr)
        return 2
    t_start = time.time()
    WORK.mkdir(parents=True, exist_ok=True)
    sections, headlines = [], []
    for m in wanted:
        lines, headline = MODELS[m][0](a.repeats)
        sections += lines
        headlines.append(headline)
    text = "\n".join([
        f"\n## OpenVINO target vs OpenVINO + NNCF ({time.strftime('%Y-%m-%d')})", "", machine_line(), "",
        f"Command: `make bench-openvino` (models {', '.join(wanted)}, repeats {a.repeats}); "
        f"{time.time() - t_start:.0f} s in all.", "", *sections])
    append(a.results, text, "; ".join(headlines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
