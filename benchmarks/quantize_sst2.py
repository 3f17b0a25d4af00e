"""Quantized deployment benchmark on SST-2, plus the calibration-memory check with a BERT-base-shaped model.

Run: `make bench-quant` (or `.venv/bin/python benchmarks/quantize_sst2.py [--skip-memory]`).
Needs the distillation benchmark's cached models (`make bench-distill` writes them to .cache/bench/full/).

For the MiniLM SST-2 teacher and the narrow student (4×192, logits-only), in one run:

* PyTorch FP32 (eager), ONNX Runtime FP32 on the fused graph, ONNX Runtime's stock ``quantize_dynamic``
  (default arguments on the exported graph, as a user would call it), and nanoify's choice
  (``nanoify quantize --budget 0.5 --target cpu``: calibration on 256 training sentences, accuracy measured
  on SST-2 validation), all measured by ``nanoify bench`` in fresh processes, in 3 interleaved rounds
  (median): single runs on this shared 2-core machine moved the PyTorch baseline by 20%.
* Targets: INT8 accuracy drop ≤ 0.5 point against PyTorch FP32; batch-32 throughput ≥ 1.7× PyTorch FP32
  and not below the stock dynamic path in the same run.

Calibration memory: a BERT-base-shaped classifier (12 layers, hidden 768, random weights from a config),
exported to ONNX, calibrated by nanoify's streaming calibrator with the entropy method on random-token
inputs of length 128 (the memory does not depend on the values) for 128, 512 and 1024 samples, each in a
fresh process; the peak RSS of that process is the figure. Target: 512 samples under 2.5 GB, and 1024
costing no more than 128.

Appends a dated section with machine and versions to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _results import append, machine_line  # noqa: E402

from nanoify.artifacts import read_manifest  # noqa: E402
from nanoify.bench.run import benchmark, format_table, peak_rss_mb  # noqa: E402
from nanoify.config import BenchConfig, DataConfig, QuantizeConfig  # noqa: E402
from nanoify.export.onnx import export  # noqa: E402
from nanoify.quant.run import quantize  # noqa: E402

MODELS = {"teacher": "teacher_sst2", "narrow": "student1"}
TARGETS = {"drop_pts": 0.5, "b32_vs_pytorch": 1.7, "calib_gb": 2.5}
MAX_LEN = 64  # the length the distillation benchmark trained and evaluated at


def _ok(cond: bool) -> str:
    return "met" if cond else "MISSED"


def _stock_dynamic(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(src), str(dst))  # every argument at its default: what "stock" means here


def _calib_child(onnx_path: str, samples: int, q: mp.Queue) -> None:
    import numpy as np
    import onnx

    from nanoify.quant.calibrate import calibrate_onnx, choose_ranges
    from nanoify.quant.qdq import weight_node_inputs

    tensors = weight_node_inputs(onnx.load(onnx_path, load_external_data=False))
    rng = np.random.default_rng(0)

    def feeds():
        for start in range(0, samples, 16):
            n = min(16, samples - start)
            ids = rng.integers(1000, 30522, size=(n, 128)).astype(np.int64)
            yield {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}

    t0 = time.time()
    hists = calibrate_onnx(onnx_path, feeds(), tensors=tensors)
    ranges = choose_ranges(hists, "entropy")
    q.put({"samples": samples, "tensors": len(ranges), "seconds": time.time() - t0,
           "peak_rss_gb": peak_rss_mb() / 1024})


def calibration_memory(work: Path, sizes: tuple[int, ...]) -> list[dict]:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from nanoify.export.onnx import export_model

    path = work / "bert_base.onnx"
    if not path.is_file():
        torch.manual_seed(0)
        model = BertForSequenceClassification(BertConfig(num_labels=2, attn_implementation="eager")).eval()
        work.mkdir(parents=True, exist_ok=True)
        export_model(model, path)
        del model
    out = []
    ctx = mp.get_context("spawn")
    for n in sizes:
        q = ctx.Queue()
        p = ctx.Process(target=_calib_child, args=(str(path), n, q))
        p.start()
        res = q.get()
        p.join()
        logging.info("calibration %s", res)
        out.append(res)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "bench"))
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--skip-memory", action="store_true", help="skip the BERT-base calibration-memory part")
    ap.add_argument("--models", default="teacher,narrow")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved bench rounds per model (median)")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t_start = time.time()
    cache = Path(a.cache)
    data = DataConfig(max_length=MAX_LEN)
    sections = []
    verdicts = []
    for key in a.models.split(","):
        src = cache / "full" / MODELS[key]
        if not read_manifest(src):
            print(f"missing {src}: run `make bench-distill` first", file=sys.stderr)
            return 2
        work = cache / "quant" / key
        exp = work / "export"
        if read_manifest(exp).get("config", {}).get("model") != str(src):
            export(src, exp)
        stock = exp / "model.stock-dynamic.onnx"
        if not stock.is_file():
            _stock_dynamic(exp / "model.onnx", stock)
        t0 = time.time()
        man = quantize(exp, work / "nanoify", calib=data, eval_data=data,
                       config=QuantizeConfig(budget=TARGETS["drop_pts"]), progress=False)
        q_secs = time.time() - t0
        logging.info("%s: chose %s in %.0f s", key, man["chosen"], q_secs)
        rep = benchmark([str(src), str(exp / "model.fused.onnx"), str(stock), str(work / "nanoify")], data,
                        out=work / "bench", progress=False, config=BenchConfig(repeats=a.repeats))
        names = ["PyTorch FP32", "ORT FP32 fused", "ORT stock dynamic INT8", f"nanoify ({man['chosen']})"]
        for r, n in zip(rep["models"], names, strict=True):
            r["name"] = n
        pt, _, st, nz = rep["models"]
        drop = (pt["accuracy"] - nz["accuracy"]) * 100
        speed = nz["throughput_b32"] / pt["throughput_b32"]
        vs_stock = nz["throughput_b32"] / st["throughput_b32"]
        verdicts.append(f"- {key}: INT8 accuracy drop {drop:+.2f} pt vs PyTorch FP32 (target ≤ {TARGETS['drop_pts']}: "
                        f"{_ok(drop <= TARGETS['drop_pts'])}); b32 throughput {speed:.2f}× PyTorch "
                        f"(target ≥ {TARGETS['b32_vs_pytorch']}: {_ok(speed >= TARGETS['b32_vs_pytorch'])})"
                        f", {vs_stock:.2f}× stock dynamic (target ≥ 1: {_ok(vs_stock >= 1)}); "
                        f"quantize search took {q_secs:.0f} s")
        cands = "\n".join(f"  - {c['name']}: accuracy {c['accuracy']:.4f} "
                          f"(drop {c['drop_pts']:.2f} pt vs ORT FP32, {c['predictions_changed']} changed), "
                          f"b32 {c['throughput_b32']:.0f} rows/s, SQNR {c['sqnr_db']:.1f} dB"
                          for c in man["candidates"])
        sections.append(f"#### {key} ({MODELS[key]})\n\n{format_table(rep)}\n\nCandidates tried by `nanoify quantize` "
                        f"(ORT FP32 fused accuracy {man['reference']['accuracy']:.4f}):\n{cands}\n")
        (work / "bench" / "names.json").write_text(json.dumps(names))
    mem_lines = []
    if not a.skip_memory:
        mem = calibration_memory(cache / "quant" / "bert_base", (128, 512, 1024))
        by = {m["samples"]: m for m in mem}
        mem_lines.append("| samples (len 128) | tensors | peak RSS (GB) | seconds |\n|---|---|---|---|")
        mem_lines += [f"| {m['samples']} | {m['tensors']} | {m['peak_rss_gb']:.2f} | {m['seconds']:.0f} |" for m in mem]
        ok512 = by[512]["peak_rss_gb"] < TARGETS["calib_gb"]
        flat = by[1024]["peak_rss_gb"] <= by[128]["peak_rss_gb"] * 1.05
        verdicts.append(f"- calibration memory (BERT-base shape, entropy): 512 samples peak "
                        f"{by[512]['peak_rss_gb']:.2f} GB (target < {TARGETS['calib_gb']}: {_ok(ok512)}); "
                        f"1024 vs 128 samples "
                        f"{by[1024]['peak_rss_gb']:.2f} vs {by[128]['peak_rss_gb']:.2f} GB (target: no more, 5% noise "
                        f"allowed: {_ok(flat)})")
    text = "\n".join([
        f"\n## Quantized deployment — {time.strftime('%Y-%m-%d')} (`benchmarks/quantize_sst2.py`)\n",
        machine_line() + f". SST-2 validation (872), max length {MAX_LEN}. Wall time "
        f"{(time.time() - t_start) / 60:.1f} min.\n",
        "Targets:", *verdicts, "", *sections,
        *(["#### Calibration memory (BERT-base shape, nanoify streaming entropy calibration)\n", *mem_lines, ""]
          if mem_lines else []),
    ])
    append(a.results, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
