#!/usr/bin/env bash
# Issue 11's prepared GPU check: one command for a machine with one CUDA GPU and no network.
#   OUT=/path/to/results bash benchmarks/gpu_check.sh        (PYTHON=… to pick the interpreter; default python3)
# Needs torch (CUDA build), transformers, safetensors, tokenizers, onnx, onnxruntime, pytest and nvidia-ml-py, all
# in the GPU image described in /work/.library/device/KINDS.md; nanoify runs from src/ (no install). Writes env.txt,
# tests_gpu.log, matrix.log, gpu_matrix.json and gpu_matrix.md to $OUT, within about 8 minutes. On a machine
# without CUDA everything skips cleanly (the tests report skipped, the matrix says so) and it exits 0.
# The image's transformers (5.17 when last read) may predate transformers' guard for CUDA-graph capture in its
# mask code; if the graph rows fail at capture, carry transformers 5.24 as a wheel (device README) and rerun.
# Not in it yet (issue 11, not built): CUDA-stream serving, GPU distillation through accelerate, the CNN and
# detector rows.
set -uo pipefail
OUT=${OUT:-gpu_check_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv 2>&1 || echo "no nvidia-smi"
  "$PY" -c "import sys, torch, transformers; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda',
torch.version.cuda, 'available', torch.cuda.is_available(), 'transformers', transformers.__version__)"
} > "$OUT/env.txt" 2>&1
timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/gpu > "$OUT/tests_gpu.log" 2>&1
echo "tests/gpu exit $?: $(tail -n 1 "$OUT/tests_gpu.log")" >> "$OUT/env.txt"
timeout 300 "$PY" benchmarks/gpu_check.py --out "$OUT" > "$OUT/matrix.log" 2>&1
echo "matrix exit $?" >> "$OUT/env.txt"
cat "$OUT/env.txt" "$OUT/gpu_matrix.md" 2>/dev/null
