# One-command set-up: every target that needs the environment installs it first (stamp file).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is installed first and explicitly: on this project's machines 2.14.1 + 0.29.1 is the pair that
# works with timm (override TORCH_SPEC for another platform, e.g. TORCH_SPEC="torch torchvision").
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
WORKERS ?= 2
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test bench lint preprocess pretrain finetune clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[test,interop]'
	touch $@

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

DEMO_DIR := runs/demo
demo: $(STAMP)
	$(VENV)/bin/mv2mae synth --out data/raw/synth --workers $(WORKERS)
	@echo "demo: synthetic dataset in data/raw/synth (montages: see README)"

BENCH_DIR := bench-results
bench: $(STAMP)
	mkdir -p $(BENCH_DIR)
	$(VENV)/bin/mv2mae bench synth --json $(BENCH_DIR)/synth.json

clean-venv:
	rm -rf $(VENV)

# make preprocess DATASET=ntu60 ROOT=/data/nturgbd [OUT=data/ntu60] [ARGS="--crop person --motion both"]
DATASET ?= synth
ROOT ?= data/raw/$(DATASET)
OUT ?= data/$(DATASET)
ARGS ?=
preprocess: $(STAMP)
	$(VENV)/bin/mv2mae preprocess $(DATASET) --root $(ROOT) --out $(OUT) $(ARGS)

