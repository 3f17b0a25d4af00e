#!/usr/bin/env bash
# Issue 11's prepared GPU check: one command for a machine with one CUDA GPU and no network.
#   OUT=/path/to/results bash benchmarks/gpu_check.sh        (PYTHON=… to pick the interpreter; default python3)
# A device run returns at most 8 files, so everything is written to $WORK and, after every step, packed into
# $OUT/gpu_check.tgz (a step that hangs or a run cut short still returns what finished); $OUT also gets env.txt,
# gpu_matrix.md and vision.md as plain files.
# Needs torch (CUDA build), transformers, safetensors, tokenizers, onnx, onnxruntime, pytest and nvidia-ml-py, all
# in the GPU image described in /work/.library/device/KINDS.md (pycocotools and torchao, which it lacks, come as
# carried wheels); nanoify runs from src/ (no install). On a machine without CUDA everything skips cleanly (the
# tests report skipped, the matrix says so) and it exits 0.
# Time: a device call may run 600 s; DEADLINE (default 480 s, the issue's 8 minutes) leaves 120 s of it for the
# machine's own start and the return. Each step has a cap (its worst case: `timeout` kills it there) and starts only
# when its cap fits before DEADLINE, so the last pack always happens. The plan, most important first, each step in
# its own process(es) (tests/unit/test_gpu_check_script.py checks that this table is the script's and adds up):
#   step           cap   processes
#   (startup)       25   nvidia-smi, two pythons (the environment; is CUDA there), the packs between steps
#   matrix         200   benchmarks/gpu_check.py --budget 195: its target rows and streams in one process, then
#                        torchao INT8, nanoify INT8, torchao FP8, FP16, torchao INT8 weight-only (each compiled,
#                        with our graphs), reduce-overhead, max-autotune in one child each, each started only when
#                        its worst case fits the budget (gpu_check.py)
#   quantize_cuda   75   one: nanoify quantize --target cuda on SST-2 (INT8/FP8 accuracy within the budget)
#   tests_gpu       35   one: pytest tests/gpu (tiny models; 3 s in the CPU dry run)
#   cnn             60   one per engine of bench (four: each starts CUDA) + the parent
#   detector        45   one per engine (three) + the parent
#   distill_cuda    30   one: nanoify distill on the GPU (the least important row: last, shortest)
#   sum            470   ≤ DEADLINE 480
# The image's transformers (5.17 when last read) may predate transformers' guard for CUDA-graph capture in its
# mask code; if the graph rows fail at capture, carry transformers 5.24 as a wheel (device README) and rerun.
# Steps: environment; the BERT-base engine matrix (benchmarks/gpu_check.py); with .gpu_carry (benchmarks/gpu_pack.py,
# carried) quantize --target cuda on SST-2; tests/gpu; with .gpu_carry the CNN (ResNet-20, CIFAR-10) and the
# detector (FastestDet, COCO128) through the torch engine on CUDA with four streams, and a distillation on the GPU.
# On the lent machine (a session whose device status shows can_start_another true): first here
# `.venv/bin/python benchmarks/gpu_pack.py`, then one device run with carry [".gpu_carry"], timeout 600 and the
# command `OUT=$OUT bash benchmarks/gpu_check.sh`; append gpu_matrix.md, vision.md and the env.txt lines to
# RESULTS.md here.
set -uo pipefail
OUT=${OUT:-gpu_check_out}
PY=${PYTHON:-python3}
# DEV=cpu: a dry run of every step on this CPU with small row counts (the same commands with cpu engines, bf16 for
# fp16, no graphs; the matrix with a tiny BERT) — to catch a broken step before GPU minutes are spent on it; numbers
# mean nothing. Best under the GPU image's package versions: `make gpu-dry-run` builds such a venv and runs it.
DEV=${DEV:-cuda}
if [ "$DEV" = cpu ]; then
  # the GPU's caps are for the GPU: on a 2-core CPU the same steps take far longer (bf16 without AVX512-BF16: the
  # CNN step alone took 113 s on an AVX2 machine), so every cap is 6× here
  DEADLINE=${DEADLINE:-3000} CAP_SCALE=6
  # bf16 stands in for fp16 where the CPU computes in it; elsewhere (AVX2) it is emulated and takes minutes: fp32
  HALF=fp32 && grep -q avx512_bf16 /proc/cpuinfo 2>/dev/null && HALF=bf16
  E_CNN=torch:cpu,torch:cpu:$HALF,torch:cpu:$HALF,onnxruntime E_DET=torch:cpu,torch:cpu:$HALF,onnxruntime
  SMALL=(--rounds 1 --latency-rows 8 --throughput-rows 32) Q_SMALL=(--eval-rows 64 --calib-samples 32)
  D_SMALL=(--max-steps 20) PRECISION=fp32 MATRIX=(--dry-run)
else
  DEADLINE=${DEADLINE:-480} CAP_SCALE=1
  E_CNN=torch:cuda,torch:cuda:fp16,torch:cuda:fp16:graphs,onnxruntime E_DET=torch:cuda,torch:cuda:fp16:graphs,onnxruntime
  SMALL=() Q_SMALL=() D_SMALL=() PRECISION=bf16 MATRIX=()
fi
WORK=${WORK:-/tmp/gpu_check_work}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TORCHAO_FORCE_SKIP_LOADING_SO_FILES=1
# the packages the GPU image lacks, from the wheels gpu_pack.py carries: pycocotools (the detector's mAP) goes into
# /tmp/carry_site, on every step's path; torchao (the matrix's comparison rows) into /tmp/carry_torchao, on the
# matrix's path only — transformers imports torchao on every model load when it can, seconds in each process of
# the other steps (WHEELS: another folder of wheels, e.g. ones for the dry run's Python)
MISSING=() AO=()
for w in "${WHEELS:-.gpu_carry/wheels}"/*.whl; do
  [ -f "$w" ] || continue
  mod=$(basename "$w") && mod=${mod%%-*}
  "$PY" -c "import $mod" > /dev/null 2>&1 && continue
  if [ "$mod" = torchao ]; then AO+=("$w"); else MISSING+=("$w"); fi
done
CARRIED="none needed" AO_PATH=""
rm -rf /tmp/carry_site /tmp/carry_torchao  # a machine that ran the check before keeps no stale package on a path
install() {  # install DIR WHEEL…: one line in env.txt either way
  local dir=$1
  shift
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$dir" "$@"; then
    CARRIED="${CARRIED/none needed/}installed ${*##*/} "
    return 0
  fi
  CARRIED="${CARRIED/none needed/}FAILED to install ${*##*/} "
  return 1
}
if (( ${#MISSING[@]} )) && install /tmp/carry_site "${MISSING[@]}"; then
  export PYTHONPATH="$PYTHONPATH:/tmp/carry_site"
fi
if (( ${#AO[@]} )) && install /tmp/carry_torchao "${AO[@]}"; then
  AO_PATH=/tmp/carry_torchao
fi
pack() {
  tar czf "$OUT/gpu_check.tgz.part" --exclude='*.safetensors' --exclude='*.onnx' --exclude='*.bin' -C "$WORK" . 2>/dev/null && mv "$OUT/gpu_check.tgz.part" "$OUT/gpu_check.tgz"
  for f in env.txt gpu_matrix.md vision.md; do [ -f "$WORK/$f" ] && cp "$WORK/$f" "$OUT/$f"; done
  return 0
}
# step NAME CAP CMD…: run CMD with a timeout of CAP seconds when CAP seconds remain before DEADLINE, else skip
step() {
  local name=$1 cap=$(( $2 * CAP_SCALE ))
  shift 2
  if (( SECONDS + cap > DEADLINE )); then
    echo "$name: skipped, ${SECONDS}s gone and it may take ${cap}s (deadline ${DEADLINE}s)" >> "$WORK/env.txt"
    return 0
  fi
  local t0=$SECONDS
  timeout "$cap" "$@" > "$WORK/$name.log" 2>&1
  echo "$name exit $? in $((SECONDS - t0))s" >> "$WORK/env.txt"
  pack
}
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv 2>&1 || echo "no nvidia-smi"
  "$PY" -c "import sys, torch, transformers; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda',
torch.version.cuda, 'available', torch.cuda.is_available(), 'transformers', transformers.__version__)"
  echo "carried wheels: $CARRIED"
} > "$WORK/env.txt" 2>&1
# the device the carried steps need, asked once (each python with torch costs seconds of the plan's startup)
HAVE_DEV=1
[ "$DEV" = cpu ] || "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || HAVE_DEV=0
pack
step matrix 200 env PYTHONPATH="$PYTHONPATH${AO_PATH:+:$AO_PATH}" "$PY" benchmarks/gpu_check.py --out "$WORK" \
  --budget $(( 195 * CAP_SCALE )) "${MATRIX[@]}"
pack
if [ -d .gpu_carry/teacher ] && [ "$HAVE_DEV" = 1 ]; then
  # the formats' SST-2 accuracy under the budget, on the GPU
  step quantize_cuda 75 "$PY" -m nanoify.cli quantize .gpu_carry/teacher --target cuda --calib .gpu_carry/sst2 \
    --eval .gpu_carry/sst2 --max-length 64 --device "$DEV" "${Q_SMALL[@]}" --out "$WORK/quantized"
  cp "$WORK/quantized/manifest.json" "$WORK/quantize_cuda.json" 2>/dev/null
fi
step tests_gpu 35 "$PY" -m pytest -q -p no:cacheprovider tests/gpu
echo "tests/gpu: $(tail -n 1 "$WORK/tests_gpu.log" 2>/dev/null)" >> "$WORK/env.txt"
if [ -d .gpu_carry/teacher ] && [ "$HAVE_DEV" = 1 ]; then
  # the seed's before/after table on a GPU: eager FP32 → FP16 with CUDA graphs, four streams, watts, top-1 / mAP
  # (ONNX Runtime on the CPU as the reference the CPU benchmarks used)
  BENCH=(--streams 4 --rounds 2 --latency-rows 64 --throughput-rows 512 "${SMALL[@]}")
  step cnn 60 "$PY" -m nanoify.cli bench .gpu_carry/resnet20/torch .gpu_carry/resnet20/torch \
    .gpu_carry/resnet20/torch .gpu_carry/resnet20/model.onnx \
    --engine "$E_CNN" --data .gpu_carry/cifar10/test.npz \
    "${BENCH[@]}" --out "$WORK/cnn"
  step detector 45 "$PY" -m nanoify.cli bench .gpu_carry/fastestdet/model.onnx .gpu_carry/fastestdet/model.onnx \
    .gpu_carry/fastestdet/model.onnx --engine "$E_DET" \
    --data .gpu_carry/coco128 --streams 4 --rounds 2 --latency-rows 64 --throughput-rows 64 "${SMALL[@]}" \
    --out "$WORK/detector"
  { echo "### ResNet-20, 1,000 carried CIFAR-10 test images"; cat "$WORK/cnn/report.md" 2>/dev/null
    echo; echo "### FastestDet, 128 carried COCO128 val images (≤ 416 px)"; cat "$WORK/detector/report.md" 2>/dev/null
  } > "$WORK/vision.md"
  pack
  # a distillation on the GPU (4×192 student, logits only, bf16, the 8,000 carried rows; CPU reference in
  # benchmarks/RESULTS.md)
  step distill_cuda 30 "$PY" -m nanoify.cli distill --teacher .gpu_carry/teacher --data .gpu_carry/sst2 \
    --max-length 64 --student layers=4,hidden=192,heads=12,intermediate=768 --attention-weight 0 --hidden-weight 0 \
    --embedding-weight 0 --min-steps 0 --lr 5e-4 --device "$DEV" --precision "$PRECISION" "${D_SMALL[@]}" \
    --out "$WORK/distilled"
  "$PY" -c "import json, sys; m = json.load(open(sys.argv[1])); s = sum(x['steps'] for x in m['stages']);
t = m['train']['loop_seconds']; print('distillation on', m['config']['train']['device'] + ':', s, 'steps, loop', t, 's =', round(t / s, 4),
's/step (whole command', m['train']['seconds'], 's); val acc', m['metrics']['validation']['accuracy'])" \
    "$WORK/distilled/manifest.json" >> "$WORK/env.txt" 2>&1
fi
echo "done in ${SECONDS}s" >> "$WORK/env.txt"
pack
cat "$WORK/env.txt" "$WORK/gpu_matrix.md" 2>/dev/null
