"""CNN INT8 benchmark: ResNet-20 on CIFAR-10, nanoify against stock ONNX Runtime static INT8, in one run.

Run: `make bench-cifar` (or `.venv/bin/python benchmarks/quantize_cifar10.py [--repeats 3]`).

* Export the pretrained ResNet-20 (``../shared/models/resnet_cifar10``) with ``nanoify export`` (BatchNorm folded).
* Stock: ``quant_pre_process`` then ``quantize_static`` (QDQ, u8 activations, per-channel s8 weights, MinMax,
  every op type it supports) on the same 100 calibration images nanoify samples from ``train_1000.npz``.
* nanoify: ``quantize --budget 0.3`` (every calibration method, weight-GEMM and all-op scopes; the balanced
  choice), and the same with ``--agreement-budget 1.0`` (at most 1% of predictions may change).
* Everything measured by ``nanoify bench`` on the 10,000 test images, each model in fresh processes, medians of
  ``--repeats`` interleaved runs: PyTorch FP32 eager, ORT FP32, stock INT8, nanoify INT8.
* Calibration memory: peak RSS of a fresh process calibrating on 100 and on 1,000 images, nanoify (streaming,
  every tensor of the all-op scope, all methods) against stock ``quantize_static`` with Percentile and Entropy.

Targets (issue 8): ≤ 100 of 10,000 predictions changed, top-1 ≥ FP32 − 0.3 pt; batch-32 throughput ≥ 2.0× ORT
FP32 and ≥ 0.95× stock; batch-1 ≥ 8× PyTorch eager; calibration memory flat in the number of images.
Appends a dated section with machine and versions to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _results import CIFAR, append, export_resnet20, machine_line  # noqa: E402
from _results import RESNET20_WEIGHTS as WEIGHTS  # noqa: E402

from nanoify.bench.run import benchmark, format_table, peak_rss_mb  # noqa: E402
from nanoify.config import BenchConfig, QuantizeConfig  # noqa: E402

TARGETS = {"changed": 100, "drop_pts": 0.3, "b32_vs_ort": 2.0, "b32_vs_stock": 0.95, "b1_vs_pytorch": 8.0}


def _ok(cond: bool) -> str:
    return "met" if cond else "MISSED"


def _calib_images(n: int, seed: int = 0) -> np.ndarray:
    """The preprocessed calibration images nanoify's image task samples (same seed, same rows)."""
    from nanoify.tasks import make_task
    from nanoify.tasks.resolve import resolve

    task = make_task(resolve(EXPORT))
    cs = task.calib_set(str(CIFAR), n, seed)
    return np.concatenate([f["input"] for _, f in task.batches(cs, 100)])


def _stock(src: Path, dst: Path, n: int, method: str) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    x = _calib_images(n)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": x[i:i + 1]} for i in range(len(x))])

        def get_next(self):  # noqa: ANN201 - ORT's interface
            return next(self.it, None)

    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre))
    quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method))


def _mem_child(kind: str, n: int, q: mp.Queue) -> None:
    logging.getLogger().setLevel(logging.ERROR)
    t0 = time.time()
    if kind == "nanoify":
        import onnx

        from nanoify.quant.calibrate import calibrate_onnx, choose_ranges
        from nanoify.quant.qdq import calibration_tensors
        from nanoify.tasks import make_task
        from nanoify.tasks.resolve import resolve

        task = make_task(resolve(EXPORT))
        cs = task.calib_set(str(CIFAR), n)
        tensors = calibration_tensors(onnx.load(str(EXPORT / "model.onnx")), "all")
        hists = calibrate_onnx(EXPORT / "model.onnx", (f for _, f in task.batches(cs, 32)), tensors=tensors)
        for m in ("entropy", "percentile", "mse", "minmax"):
            choose_ranges(hists, m, allow_unsigned=True)
    else:
        _stock(EXPORT / "model.onnx", WORK / f"mem-{kind}-{n}.onnx", n, kind)
    q.put({"kind": kind, "images": n, "peak_rss_mb": peak_rss_mb(), "seconds": time.time() - t0})


def calibration_memory() -> list[dict]:
    out = []
    ctx = mp.get_context("spawn")
    for kind in ("nanoify", "Percentile", "Entropy"):
        for n in (100, 1000):
            q = ctx.Queue()
            p = ctx.Process(target=_mem_child, args=(kind, n, q))
            p.start()
            out.append(q.get())
            p.join()
            logging.info("calibration memory %s", out[-1])
    return out


WORK = ROOT / ".cache" / "bench" / "cifar10"
EXPORT = WORK / "export"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="interleaved fresh-process bench runs per model")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--skip-memory", action="store_true")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not WEIGHTS.is_file() or not (CIFAR / "test.npz").is_file():
        print(f"needs {WEIGHTS} and {CIFAR}/test.npz", file=sys.stderr)
        return 2
    import nanoify

    t_start = time.time()
    WORK.mkdir(parents=True, exist_ok=True)
    export_resnet20(EXPORT)
    stock_dir = WORK / "stock"
    stock_dir.mkdir(exist_ok=True)
    for f in ("preprocess.json", "label_map.json"):  # the same preprocessing and labels as nanoify's models
        shutil.copyfile(EXPORT / f, stock_dir / f)
    stock = stock_dir / "model.stock_minmax.onnx"
    _stock(EXPORT / "model.onnx", stock, 100, "MinMax")
    runs = {}
    for name, cfg in (("nanoify", QuantizeConfig(budget=0.3)),
                      ("nanoify-agree1", QuantizeConfig(budget=0.3, agreement_budget=1.0))):
        t0 = time.time()
        man = nanoify.quantize(EXPORT, WORK / name, calib=str(CIFAR), config=cfg, progress=False)
        runs[name] = (man, time.time() - t0)
        logging.info("%s chose %s in %.0f s", name, man["chosen"], runs[name][1])
    models = [str(EXPORT / "torch"), str(EXPORT / "model.onnx"), str(stock), str(WORK / "nanoify"),
              str(WORK / "nanoify-agree1")]
    names = ["PyTorch FP32 eager", "ORT FP32", "ORT stock static INT8 (MinMax)",
             f"nanoify ({runs['nanoify'][0]['chosen']})",
             f"nanoify --agreement-budget 1 ({runs['nanoify-agree1'][0]['chosen']})"]
    rep = benchmark(models, str(CIFAR), out=WORK / "bench", progress=False, names=names,
                    config=BenchConfig(repeats=a.repeats))
    pt, ort32, st, nz, nz1 = rep["models"]
    verdicts = []
    for label, m, (man, secs) in (("nanoify", nz, runs["nanoify"]), ("nanoify --agreement-budget 1", nz1,
                                                                    runs["nanoify-agree1"])):
        drop = (pt["accuracy"] - m["accuracy"]) * 100
        verdicts.append(
            f"- {label} ({man['chosen']}, search {secs:.0f} s): {m['predictions_changed']} of 10,000 predictions "
            "changed "
            f"(target ≤ {TARGETS['changed']}: {_ok(m['predictions_changed'] <= TARGETS['changed'])}; stock "
            f"{st['predictions_changed']}); top-1 {m['accuracy']:.4f} vs FP32 {pt['accuracy']:.4f} ({-drop:+.2f} pt, "
            f"target ≥ −{TARGETS['drop_pts']}: {_ok(drop <= TARGETS['drop_pts'])}); b32 "
            f"{m['throughput_b32'] / ort32['throughput_b32']:.2f}× ORT FP32 (target ≥ {TARGETS['b32_vs_ort']}: "
            f"{_ok(m['throughput_b32'] / ort32['throughput_b32'] >= TARGETS['b32_vs_ort'])}), "
            f"{m['throughput_b32'] / st['throughput_b32']:.2f}× stock (target ≥ {TARGETS['b32_vs_stock']}: "
            f"{_ok(m['throughput_b32'] / st['throughput_b32'] >= TARGETS['b32_vs_stock'])}); b1 "
            f"{pt['latency_ms_p50'] / m['latency_ms_p50']:.2f}× PyTorch eager (target ≥ {TARGETS['b1_vs_pytorch']}: "
            f"{_ok(pt['latency_ms_p50'] / m['latency_ms_p50'] >= TARGETS['b1_vs_pytorch'])}; stock "
            f"{pt['latency_ms_p50'] / st['latency_ms_p50']:.2f}×)")
    cands = "\n".join(f"  - {c['name']}: top-1 {c['accuracy']:.4f}, {c['predictions_changed']} changed, b32 "
                      f"{c.get('throughput_b32', 0):.0f} img/s, b1 {c.get('latency_ms_p50', 0):.3f} ms, "
                      f"{len(c['fp32_nodes'])} FP32 nodes" for c in runs["nanoify-agree1"][0]["candidates"])
    mem_lines = []
    if not a.skip_memory:
        mem = calibration_memory()
        mem_lines = ["| calibrator | 100 images: peak RSS (MB) | 1,000 images: peak RSS (MB) | seconds (100 / 1,000) |",
                     "|---|---|---|---|"]
        by = {(m["kind"], m["images"]): m for m in mem}
        for kind in ("nanoify", "Percentile", "Entropy"):
            a1, b1 = by[(kind, 100)], by[(kind, 1000)]
            label = "nanoify (streaming, 4 methods)" if kind == "nanoify" else f"ORT quantize_static {kind}"
            mem_lines.append(f"| {label} | {a1['peak_rss_mb']:.0f} | {b1['peak_rss_mb']:.0f} | "
                             f"{a1['seconds']:.1f} / {b1['seconds']:.1f} |")
        flat = by[("nanoify", 1000)]["peak_rss_mb"] <= by[("nanoify", 100)]["peak_rss_mb"] * 1.05
        verdicts.append(f"- calibration memory, nanoify 100 → 1,000 images: {by[('nanoify', 100)]['peak_rss_mb']:.0f} "
                        f"→ {by[('nanoify', 1000)]['peak_rss_mb']:.0f} MB (target: flat, 5% noise allowed: "
                        f"{_ok(flat)})")
    text = "\n".join([
        f"\n## CNN INT8, ResNet-20 on CIFAR-10 — {time.strftime('%Y-%m-%d')} (`benchmarks/quantize_cifar10.py`)\n",
        machine_line() + f". 10,000 test images; 100 calibration images from train_1000.npz. Wall time "
          f"{(time.time() - t_start) / 60:.1f} min.\n",
        "Targets:", *verdicts, "", format_table(rep), "",
        "Candidates of the `--agreement-budget 1` run:", cands, "",
        *(["Calibration memory (each a fresh process):", "", *mem_lines, ""] if mem_lines else []),
    ])
    append(a.results, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
