"""The CPU side of issue 11's "a distillation epoch on the GPU ≥ 20× faster than on the 2-core CPU".

Runs the GPU check's distillation (benchmarks/gpu_check.sh: the carried FP16 SST-2 MiniLM teacher, 8,000 rows,
max length 64, a 4×192 student, logits only, batch 32) on this CPU, in FP32 and in bf16 autocast, for ``--steps``
optimiser steps each, and records seconds per optimiser step (the manifest's ``loop_seconds``: the loop alone,
teacher-logit cache and evaluation excluded — the same quantity the GPU check prints). The GPU's ratio is its
s/step against the faster of these two. Needs ``.gpu_carry`` (benchmarks/gpu_pack.py). Appends to RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _results import append, machine_line  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--carry", default=str(ROOT / ".gpu_carry"))
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    a = ap.parse_args()
    carry = Path(a.carry)
    if not (carry / "teacher").is_dir():
        print(f"needs {carry}/teacher: run benchmarks/gpu_pack.py first", file=sys.stderr)
        return 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            out = Path(tmp) / precision
            cmd = [sys.executable, "-m", "nanoify.cli", "distill", "--teacher", str(carry / "teacher"), "--data",
                   str(carry / "sst2"), "--max-length", "64", "--student", "layers=4,hidden=192,heads=12,"
                   "intermediate=768", "--attention-weight", "0", "--hidden-weight", "0", "--embedding-weight", "0",
                   "--min-steps", "0", "--lr", "5e-4", "--device", "cpu", "--precision", precision, "--max-steps",
                   str(a.steps), "--out", str(out)]
            subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                           stdout=subprocess.DEVNULL)
            m = json.loads((out / "manifest.json").read_text())
            steps = sum(s["steps"] for s in m["stages"])
            rows.append((precision, steps, m["train"]["loop_seconds"]))
    best = min(t / s for _, s, t in rows)
    lines = [f"\n## GPU check's distillation on this CPU — {time.strftime('%Y-%m-%d %H:%M')} "
             "(`benchmarks/gpu_distill_reference.py`)\n", machine_line() + ".",
             "The GPU check's distillation (4×192 student, logits only, 8,000 SST-2 rows, length 64, batch 32), "
             f"{a.steps} optimiser steps per row; loop seconds only.", "",
             "| precision | steps | loop s | s/step |", "|---|---|---|---|"]
    lines += [f"| {p} | {s} | {t:.1f} | {t / s:.4f} |" for p, s, t in rows]
    lines += ["", f"CPU reference for the GPU's ≥ 20× target: {best:.4f} s/step (the faster row); the GPU must take "
                  f"≤ {best / 20:.4f} s/step."]
    append(a.results, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
