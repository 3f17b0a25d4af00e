"""Distillation with little data: 6,000 SST-2 rows, MiniLM teacher → half and TinyBERT-shaped students.

Run: `make bench-distill-small` (or `.venv/bin/python benchmarks/distill_small.py [--rows 6000] [--augment 4]`).

Issue 10's small-data case: a user with a few thousand labelled rows. Everything runs with the defaults a new
user gets (the small-data schedule: at least 500 steps per stage within 10 epochs, early stopping on a held-out
10% of the training rows; ``--init auto``), except the learning rates named below.

* Data: a seeded subset of ``--rows`` SST-2 training phrases (max length 64); scored on SST-2 validation (872).
* Teacher: all-MiniLM-L6-v2 fine-tuned on those rows (lr 5e-5).
* Students (1 epoch requested; the schedule lengthens it), every one on the same rows:
  - half: 3 layers at the teacher's width from its layers, logits only (lr 1e-4);
  - tinybert (4 layers, a quarter of the width, PCA-projected teacher embeddings; lr 5e-4):
    logits only; + TinyBERT attention/hidden/embedding losses; + MiniLM-v2 relations; and each of logits-only and
    relations again with ``--augment`` variants per sentence labelled by the teacher; then the two-stage
    schedule of the papers (layer or relation terms alone, then logits) with augmentation;
  - half again with augmentation.
Targets (issue 10, small data): tinybert-style ≥ 95% of the teacher trained on the same rows, half ≥ 98%;
with augmentation, intermediate or relation losses beat logits-only by ≥ 0.5 point. Appends to RESULTS.md.
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

from _results import append, cached, distil_all, machine_line  # noqa: E402

from nanoify.artifacts import read_manifest  # noqa: E402
from nanoify.config import DataConfig, DistillConfig, FinetuneConfig, TrainConfig  # noqa: E402
from nanoify.distill.run import finetune  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=6000)
    ap.add_argument("--augment", type=int, default=4)
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "bench" / "small"))
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.time()
    cache = Path(a.cache) / f"rows{a.rows}"
    data = DataConfig(max_length=64, max_train=a.rows)
    tcfg = FinetuneConfig(model="minilm", data=data, train=TrainConfig(lr=5e-5))
    teacher = cache / "teacher"
    if not cached(teacher, tcfg):
        finetune(tcfg, teacher, progress=False)

    def student(spec: str, lr: float, **kw) -> DistillConfig:
        return DistillConfig(teacher=str(teacher), student=spec, data=data, train=TrainConfig(lr=lr), **kw)

    logits = {"attention_weight": 0.0, "hidden_weight": 0.0, "embedding_weight": 0.0}
    inter = {"attention_weight": 1.0, "hidden_weight": 1.0, "embedding_weight": 1.0}
    rel = {**logits, "relation_weight": 1.0}
    two = ("intermediate", "prediction")
    runs = {
        "half, logits": student("half", 1e-4, **logits),
        "tinybert, logits": student("tinybert", 5e-4, **logits),
        "tinybert, + TinyBERT layer losses": student("tinybert", 5e-4, **inter),
        "tinybert, + relations": student("tinybert", 5e-4, **rel),
        f"tinybert, logits, augment {a.augment}": student("tinybert", 5e-4, augment=a.augment, **logits),
        f"tinybert, + relations, augment {a.augment}": student("tinybert", 5e-4, augment=a.augment, **rel),
        # TinyBERT's and MiniLM's own schedule: the layer (or relation) terms alone first, then the predictions
        f"tinybert, TinyBERT layer losses then logits, augment {a.augment}":
            student("tinybert", 5e-4, augment=a.augment, stages=two, **inter),
        f"tinybert, relations then logits, augment {a.augment}":
            student("tinybert", 5e-4, augment=a.augment, stages=two, **rel),
        f"half, logits, augment {a.augment}": student("half", 1e-4, augment=a.augment, **logits),
    }
    tman = read_manifest(teacher)
    t_acc = tman["metrics"]["validation"]["accuracy"]
    lines = ["| model | layers×hidden | params (M) | val acc | × teacher | steps run / planned | train min |",
             "|---|---|---|---|---|---|---|",
             f"| teacher MiniLM-L6 | 6×384 | {tman['model']['parameters'] / 1e6:.1f} | {100 * t_acc:.2f} | 1.000 | "
             f"{_ran(tman['train'], tman['train']['steps'])} | {tman['train']['seconds'] / 60:.1f} |"]
    accs = {}
    for name, out in distil_all(runs, cache).items():
        man = read_manifest(out)
        acc = man["metrics"]["validation"]["accuracy"]
        accs[name] = acc
        st = man["student"]
        planned = sum(s["steps"] for s in man["stages"])
        lines.append(f"| {name} | {st['layers']}×{st['hidden']} | {st['parameters'] / 1e6:.1f} | {100 * acc:.2f} | "
                     f"{acc / t_acc:.3f} | {_ran(man['train'], planned, man['stages'])} | "
                     f"{man['train']['seconds'] / 60:.1f} |")
    tb = max(v for k, v in accs.items() if k.startswith("tinybert"))
    aug_log = accs[f"tinybert, logits, augment {a.augment}"]
    layered = {k: v for k, v in accs.items() if k.startswith("tinybert") and f"augment {a.augment}" in k
               and ("relations" in k or "layer losses" in k)}
    best_layered = max(layered, key=layered.get)
    aug_rel = layered[best_layered]
    half = max(v for k, v in accs.items() if k.startswith("half"))
    verdict = [
        f"- half ≥ 98% of the teacher: {half / t_acc:.3f} ({'met' if half / t_acc >= 0.98 else 'MISSED'})",
        f"- best TinyBERT-shaped student ≥ 95% of the teacher: {tb / t_acc:.3f} "
        f"({'met' if tb / t_acc >= 0.95 else 'MISSED'})",
        f"- with augmentation, the best layer/relation student ({best_layered}) vs logits-only: "
        f"{100 * (aug_rel - aug_log):+.2f} points "
        f"(target ≥ +0.5: {'met' if aug_rel - aug_log >= 0.005 else 'MISSED'})",
    ]
    append(a.results, "\n".join([
        f"\n## Distillation with little data: {a.rows:,} SST-2 rows — {time.strftime('%Y-%m-%d')} "
        "(`benchmarks/distill_small.py`)\n",
        machine_line() + f". Default small-data schedule (≥ 500 steps per stage within 10 epochs, early stopping on "
        f"a held-out 10% of the training rows); SST-2 validation (872). Wall time {(time.time() - t0) / 60:.1f} min.\n",
        "Targets:", *verdict, "", *lines, ""]))
    return 0


def _ran(train: dict, planned: int, stages: list | None = None) -> str:
    """Steps run (a stage that stopped early counts to where it stopped) / planned."""
    stops = train.get("early_stops") or []
    if not stops:
        return f"{planned} / {planned}"
    by_stage = {s["stage"]: s for s in stops}
    ran = (sum(by_stage[st["name"]]["stopped_at"] if st["name"] in by_stage else st["steps"] for st in stages)
           if stages else sum(s["stopped_at"] for s in stops))
    return f"{ran} (kept " + ", ".join(str(s["kept_step"]) for s in stops) + f") / {planned}"


if __name__ == "__main__":
    sys.exit(main())
