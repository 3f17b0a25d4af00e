"""OpenVINO peer benchmark: nanoify's `--target openvino` beside OpenVINO FP32 and OpenVINO + NNCF INT8, in one run.

Run: `make bench-openvino` (installs NNCF into the venv first: it is a comparison, not a nanoify dependency), or
`.venv/bin/python benchmarks/openvino_vs_nncf.py [--repeats 3]`.

Model: ResNet-20 on CIFAR-10 (``../shared/models/resnet_cifar10``, exported by ``nanoify export``). Calibration:
the same 100 training images for everyone (nanoify's image task samples them from ``train_1000.npz``).

* ORT FP32 — the baseline of every ratio.
* nanoify ``--target cpu`` (ONNX Runtime INT8) and ``--target openvino`` (candidates measured in OpenVINO), both
  ``--budget 0.3``.
* OpenVINO FP32 (``openvino:fp32`` on the exported graph).
* NNCF 3.x ``nncf.quantize`` on the OpenVINO model with the DEFAULT (symmetric) and MIXED presets, saved as IR.

Everything measured by ``nanoify bench`` on the 10,000 test images, each model in fresh processes, medians of
``--repeats`` interleaved runs, 2 threads per engine. Targets (issue 20, ResNet-20 row): b32 ≥ 3.4× ORT FP32 with
≤ 100 of 10,000 predictions changed and top-1 ≥ FP32 − 0.3; at least as fast as OpenVINO+NNCF in the same run with
fewer changed predictions than NNCF's default preset. Not yet in this script: FastestDet, a YOLO-layout detector
and the MiniLM teacher (issue 20's other rows).
Appends a dated section with machine and versions to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
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
PRE = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
WORK = ROOT / ".cache" / "bench" / "openvino"
EXPORT = WORK / "export"
TARGETS = {"b32_vs_ort": 3.4, "changed": 100, "drop_pts": 0.3}


def _ok(cond: bool) -> str:
    return "met" if cond else "MISSED"


def _calib_images(n: int = 100) -> list[np.ndarray]:
    """The preprocessed calibration batches nanoify's image task samples (same seed, same rows)."""
    from nanoify.tasks import make_task
    from nanoify.tasks.resolve import resolve

    task = make_task(resolve(EXPORT))
    cs = task.calib_set(str(CIFAR), n)
    return [f["input"] for _, f in task.batches(cs, 1)]


def _nncf(preset: str, dst: Path) -> Path:
    """NNCF post-training INT8 of the OpenVINO model on the same calibration images; IR with nanoify's
    preprocessing and labels beside it (so bench reads it like any model)."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(EXPORT / "model.onnx"))
    data = nncf.Dataset(_calib_images())
    q = nncf.quantize(model, data, preset=getattr(nncf.QuantizationPreset, preset), subset_size=100)
    dst.mkdir(parents=True, exist_ok=True)
    ov.save_model(q, str(dst / "model.xml"), compress_to_fp16=False)
    for f in ("preprocess.json", "label_map.json"):
        shutil.copyfile(EXPORT / f, dst / f)
    return dst / "model.xml"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="interleaved fresh-process bench runs per model")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not WEIGHTS.is_file() or not (CIFAR / "test.npz").is_file():
        print(f"needs {WEIGHTS} and {CIFAR}/test.npz", file=sys.stderr)
        return 2
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError as e:
        print(f"needs {e.name}: pip install openvino nncf (make bench-openvino does)", file=sys.stderr)
        return 2
    import nanoify
    from nanoify.models.load import build_module, load_weights

    t_start = time.time()
    WORK.mkdir(parents=True, exist_ok=True)
    classes = [str(c) for c in np.load(CIFAR / "test.npz")["classes"]]
    module = load_weights(build_module("nanoify.models.vision:resnet20"), WEIGHTS)
    nanoify.export(module, EXPORT, example_input=np.zeros((1, 3, 32, 32), np.float32), preprocess=PRE,
                   labels=classes, factory="nanoify.models.vision:resnet20")
    runs = {}
    for target in ("cpu", "openvino"):
        t0 = time.time()
        man = nanoify.quantize(EXPORT, WORK / f"nanoify-{target}", calib=str(CIFAR),
                               config=QuantizeConfig(budget=0.3, target=target), progress=False)
        runs[target] = (man, time.time() - t0)
        logging.info("--target %s chose %s in %.0f s", target, man["chosen"], runs[target][1])
    nncf_default = _nncf("PERFORMANCE", WORK / "nncf-default")
    nncf_mixed = _nncf("MIXED", WORK / "nncf-mixed")
    models = [str(EXPORT / "model.onnx"), str(WORK / "nanoify-cpu"), str(WORK / "nanoify-openvino"),
              str(EXPORT / "model.onnx"), str(nncf_default), str(nncf_mixed)]
    engines = ("onnxruntime", None, None, "openvino:fp32", "openvino", "openvino")
    names = ["ORT FP32", f"nanoify cpu ({runs['cpu'][0]['chosen']}, ORT)",
             f"nanoify openvino ({runs['openvino'][0]['chosen']}, OV)", "OpenVINO FP32",
             "OV + NNCF INT8 (default preset)", "OV + NNCF INT8 (MIXED)"]
    rep = benchmark(models, str(CIFAR), out=WORK / "bench", progress=False, names=names,
                    config=BenchConfig(repeats=a.repeats, engines=engines))
    ort32, nz_cpu, nz_ov, ov32, nn_def, nn_mix = rep["models"]
    b32 = {m["name"]: m["throughput"] / ort32["throughput"] for m in rep["models"]}
    drop = (ort32["accuracy"] - nz_ov["accuracy"]) * 100
    ov_man = runs["openvino"][0]
    beats_nncf = (b32[nz_ov["name"]] >= b32[nn_def["name"]]
                  and nz_ov["predictions_changed"] < nn_def["predictions_changed"])
    verdicts = [
        f"- nanoify --target openvino ({ov_man['chosen']}, search {runs['openvino'][1]:.0f} s): b32 "
        f"{b32[nz_ov['name']]:.2f}× ORT FP32 (target ≥ {TARGETS['b32_vs_ort']}: "
        f"{_ok(b32[nz_ov['name']] >= TARGETS['b32_vs_ort'])}), {nz_ov['predictions_changed']} of 10,000 changed "
        f"(target ≤ {TARGETS['changed']}: {_ok(nz_ov['predictions_changed'] <= TARGETS['changed'])}), top-1 "
        f"{nz_ov['accuracy']:.4f} vs FP32 {ort32['accuracy']:.4f} ({-drop:+.2f} pt; target ≥ −{TARGETS['drop_pts']}: "
        f"{_ok(drop <= TARGETS['drop_pts'])}); INT8 layers in OpenVINO's compiled model: "
        f"{ov_man.get('openvino', {}).get('int8_layers')}",
        f"- against NNCF in the same run: b32 {b32[nz_ov['name']] / b32[nn_def['name']]:.2f}× NNCF default "
        f"({nn_def['predictions_changed']} changed) and {b32[nz_ov['name']] / b32[nn_mix['name']]:.2f}× NNCF MIXED "
        f"({nn_mix['predictions_changed']} changed); target: ≥ 1.0× with fewer changed than NNCF default: "
        f"{_ok(beats_nncf)}",
        "- b32 ratios to ORT FP32: " + ", ".join(f"{k} {v:.2f}×" for k, v in b32.items()),
    ]
    text = "\n".join([
        f"\n## OpenVINO target vs OpenVINO + NNCF — ResNet-20 CIFAR-10 ({time.strftime('%Y-%m-%d')})", "",
        machine_line(), "",
        f"Command: `make bench-openvino` (repeats {a.repeats}); {time.time() - t_start:.0f} s in all.", "",
        format_table(rep), "", *verdicts, ""])
    headline = (f"ResNet-20 on OpenVINO: b32 {b32[nz_ov['name']]:.2f}× ORT FP32, {nz_ov['predictions_changed']} "
                f"changed; NNCF default {b32[nn_def['name']]:.2f}× / {nn_def['predictions_changed']} changed")
    append(a.results, text, headline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
