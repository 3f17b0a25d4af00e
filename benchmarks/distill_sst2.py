"""Distillation benchmark on SST-2: MiniLM teacher → `half` and a narrow student (with an ablation).

Run: `make bench-distill` (or `.venv/bin/python benchmarks/distill_sst2.py [--quick]`).

* Teacher: all-MiniLM-L6-v2 fine-tuned on the full SST-2 train split (67,349 phrases), 1 epoch,
  max length 64, lr 5e-5, batch 32; cached in .cache/bench/ and reused while its config is unchanged.
* Students on the same data (1 epoch unless said):
  - half: 3 layers at the teacher's width, initialised from teacher layers 1, 3, 5 (DistilBERT),
    logits only (soft KL at T=2 + 0.5 × hard CE).
  - narrow: 4 layers × 192 hidden (12 heads, FFN 768), fresh layers with teacher-PCA embeddings;
    once logits-only and once logits + attention/hidden/embedding losses (the ablation); then, at two passes
    over the data each, logits-only for 2 epochs against TinyBERT's schedule (layer losses alone for an
    epoch, then logits for an epoch). No augmentation here: labelling 4 variants of 67k phrases by the teacher
    and training on them does not fit the 60-minute budget on 2 cores (benchmarks/distill_small.py has it).
* Measured in this one run: SST-2 validation accuracy, parameters, file size, PyTorch CPU latency at
  batch 1 (p50 over 200 validation sentences) and throughput at batch 32 over all 872, as ratios to the
  teacher. Appends a dated section with machine and versions to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _results import cached, distil_all  # noqa: E402

from nanoify.artifacts import machine, read_manifest, versions  # noqa: E402
from nanoify.bench.latency import measure_speed  # noqa: E402
from nanoify.config import DataConfig, DistillConfig, FinetuneConfig, TrainConfig  # noqa: E402
from nanoify.distill.run import evaluate, finetune  # noqa: E402
from nanoify.models.load import count_parameters, encoder_flops_per_token, load_classifier  # noqa: E402

NARROW = "layers=4,hidden=192,heads=12,intermediate=768"
TARGETS = {"teacher_accuracy": 0.89, "half_ratio": 0.985, "narrow_ratio": 0.96, "narrow_flops": 4.0}  # issue 10


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "bench"))
    ap.add_argument("--quick", action="store_true", help="tiny subsets: checks the script, not the targets")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    t_start = time.time()
    cache = Path(a.cache) / ("quick" if a.quick else "full")
    max_train = 2000 if a.quick else None
    steps = 20 if a.quick else None
    data = DataConfig(max_length=64, max_train=max_train)

    tcfg = FinetuneConfig(model="minilm", data=data,
                          train=TrainConfig(epochs=1, lr=5e-5, batch_size=32, checkpoint_every=300, max_steps=steps))
    teacher = cache / "teacher_sst2"
    teacher_trained = not cached(teacher, tcfg)
    if teacher_trained:
        logging.info("fine-tuning the teacher (cached afterwards in %s)", teacher)
        finetune(tcfg, teacher, resume=True)
    teacher_secs = read_manifest(teacher)["train"]["seconds"]

    def student(name: str, **kw) -> DistillConfig:
        return DistillConfig(teacher=str(teacher), data=data,
                             train=TrainConfig(epochs=kw.pop("epochs", 1), batch_size=32, checkpoint_every=300,
                                               max_steps=steps, lr=kw.pop("lr")), **kw)

    logits_only = {"attention_weight": 0.0, "hidden_weight": 0.0, "embedding_weight": 0.0}
    inter = {"attention_weight": 1.0, "hidden_weight": 1.0, "embedding_weight": 1.0}
    runs = {
        "half (teacher layers, logits)": student("half", student="half", init="teacher-layers", lr=1e-4,
                                                 **logits_only),
        "narrow, logits only": student("narrow", student=NARROW, init="teacher-pca", lr=5e-4, **logits_only),
        "narrow, logits + intermediate": student("narrow_inter", student=NARROW, init="teacher-pca", lr=5e-4,
                                                 **inter),
        # the same number of passes over the data (2 epochs) for logits-only and TinyBERT's two stages
        "narrow, logits only, 2 epochs": student("narrow2", student=NARROW, init="teacher-pca", lr=5e-4, epochs=2,
                                                 **logits_only),
        "narrow, layer losses then logits (1 + 1 epochs)": student("narrow_two", student=NARROW, init="teacher-pca",
                                                                   lr=5e-4, stages=("intermediate", "prediction"),
                                                                   **inter),
    }
    folders = distil_all(runs, cache)
    student_secs = {name: read_manifest(out)["train"]["seconds"] for name, out in folders.items()}

    from nanoify.engines import open_engine
    from nanoify.tasks import make_task
    from nanoify.tasks.resolve import resolve

    rows = []
    for name, folder in [("teacher (MiniLM-L6, FP32)", teacher), *folders.items()]:
        model, tok, _ = load_classifier(str(folder))
        task = make_task(resolve(folder))
        ev = task.eval_set(DataConfig(max_length=64))
        with open_engine("torch", str(folder)) as eng:  # the timing bench and quantize use (200 × b1, 512 × b32)
            perf = measure_speed([eng.infer], task.feeds(ev, 1, 200), task.feeds(ev, 32, 512), rounds=1)[0]
        acc = evaluate(folder, DataConfig(max_length=64), teacher=None if folder == teacher else teacher)
        rows.append({"name": name, "accuracy": acc["accuracy"], "agreement": acc.get("agreement"),
                     "params": count_parameters(model), "enc_params": count_parameters(model, encoder_only=True),
                     "flops": encoder_flops_per_token(model.config), "layers": model.config.num_hidden_layers,
                     "hidden": model.config.hidden_size,
                     "mb": (folder / "model.safetensors").stat().st_size / 1e6, **perf})
    base = rows[0]
    lines = [f"## Distillation, SST-2 — {time.strftime('%Y-%m-%d %H:%M')} {'(QUICK: not a result)' if a.quick else ''}",
             "",
             f"Machine: {machine()['cpu']}, {machine()['cores']} cores ({' '.join(machine()['cpu_flags'])}), "
             f"torch threads {torch.get_num_threads()}. "
             f"Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
             f"Data: SST-2 train {'2000-row subset' if a.quick else 'all 67,349 phrases'}, max length 64; "
             "scored on SST-2 validation (872). PyTorch FP32 eager on CPU, dynamic padding, real sentence order.",
             f"Training time: teacher {teacher_secs / 60:.1f} min "
             f"({'trained in this run' if teacher_trained else 'from an earlier run, cached'}), students "
             + ", ".join(f"{k} {v / 60:.1f} min" for k, v in student_secs.items()) + ".",
             "",
             "| model | layers×hidden | params (M) | encoder FLOPs ÷ | file MB | val acc | × teacher acc | "
             "b1 p50 ms | × speed b1 | b32 sent/s | × b32 | copied / teacher mistakes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ag = r["agreement"]
        cm = f"{ag['copied_mistakes']} / {ag['student_only_right'] + ag['both_wrong']}" if ag else "–"
        lines.append(
            f"| {r['name']} | {r['layers']}×{r['hidden']} | {r['params'] / 1e6:.1f} | "
            f"{base['flops'] / r['flops']:.1f} | {r['mb']:.1f} | {100 * r['accuracy']:.2f} | "
            f"{r['accuracy'] / base['accuracy']:.3f} | {r['latency_ms_p50']:.1f} | "
            f"{base['latency_ms_p50'] / r['latency_ms_p50']:.2f} | {r['throughput_b32']:.0f} | "
            f"{r['throughput_b32'] / base['throughput_b32']:.2f} | {cm} |")
    half, nlog, ninter, nlog2, ntwo = rows[1:6]
    best = max(rows[2:], key=lambda r: r["accuracy"])
    checks = [
        ("teacher ≥ 89%", base["accuracy"] >= TARGETS["teacher_accuracy"], f"{100 * base['accuracy']:.2f}%"),
        ("half ≥ 98.5% of teacher", half["accuracy"] / base["accuracy"] >= TARGETS["half_ratio"],
         f"{half['accuracy'] / base['accuracy']:.3f}"),
        ("narrow ≥ 4× fewer encoder FLOPs", base["flops"] / ninter["flops"] >= TARGETS["narrow_flops"],
         f"{base['flops'] / ninter['flops']:.1f}×"),
        ("best narrow ≥ 96% of teacher", best["accuracy"] / base["accuracy"] >= TARGETS["narrow_ratio"],
         f"{best['name']}: {best['accuracy'] / base['accuracy']:.3f}"),
        ("layer losses beat logits-only by ≥ 0.5 pt (1 epoch, joint)", ninter["accuracy"] - nlog["accuracy"] >= 0.005,
         f"{100 * ninter['accuracy']:.2f} vs {100 * nlog['accuracy']:.2f}"),
        ("layer losses beat logits-only by ≥ 0.5 pt (2 passes, two-stage)",
         ntwo["accuracy"] - nlog2["accuracy"] >= 0.005,
         f"{100 * ntwo['accuracy']:.2f} vs {100 * nlog2['accuracy']:.2f}"),
    ]
    wall = (time.time() - t_start) / 60
    how = "trained in this run" if teacher_trained else "reused from cache"
    lines += ["", "Targets: " + "; ".join(f"{n}: {'PASS' if ok else 'FAIL'} ({v})" for n, ok, v in checks) + ".",
              f"Script wall time this run: {wall:.1f} min (teacher {how}).", ""]
    text = "\n".join(lines)
    print(text)
    res = Path(a.results)
    if not a.quick:
        prev = res.read_text() if res.exists() else "# Benchmark results\n\nAppended by the scripts in benchmarks/.\n\n"
        res.write_text(prev + "\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
