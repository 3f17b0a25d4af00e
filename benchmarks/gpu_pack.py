"""Pack what the GPU check needs beyond the repository into ``.gpu_carry/`` (ignored by git), within the 64 MiB a
device run can bring: the SST-2 MiniLM teacher in FP16 safetensors (~45 MB) and SST-2 text (8,000 seeded training
rows and the 872 validation rows).

Run here, before a GPU session: `.venv/bin/python benchmarks/gpu_pack.py [--teacher DIR]` (default: the teacher of
`make bench-distill`, .cache/bench/full/teacher_sst2). Then on the GPU machine, with `.gpu_carry` carried:
`bash benchmarks/gpu_check.sh` also measures `quantize --target cuda` accuracy on SST-2 and a distillation epoch
on the GPU. nanoify loads the FP16 weights back as float32.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=str(ROOT / ".cache" / "bench" / "full" / "teacher_sst2"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "text" / "sst2"))
    ap.add_argument("--rows", type=int, default=8000)
    ap.add_argument("--out", default=str(ROOT / ".gpu_carry"))
    a = ap.parse_args()
    from nanoify.models.load import load_classifier, save_classifier

    out = Path(a.out)
    if out.exists():
        shutil.rmtree(out)
    model, tok, lm = load_classifier(a.teacher)
    save_classifier(model.half(), tok, lm, out / "teacher")
    data = Path(a.data)
    (out / "sst2").mkdir(parents=True)
    lines = (data / "train.tsv").read_text().splitlines()
    rows = lines[1:]
    random.Random(0).shuffle(rows)
    (out / "sst2" / "train.tsv").write_text("\n".join([lines[0], *rows[: a.rows]]) + "\n")
    shutil.copy(data / "validation.tsv", out / "sst2" / "validation.tsv")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    print(f"packed {out} ({size:.1f} MiB): teacher in FP16, {a.rows} training rows, the validation split")
    return 0 if size < 60 else 1


if __name__ == "__main__":
    sys.exit(main())
