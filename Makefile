# One-command set-up: every target that needs the environment installs it first (stamp file).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is installed first and explicitly: on this project's machines 2.14.1 + 0.29.1 is the pair that
# works with timm (override TORCH_SPEC for another platform, e.g. TORCH_SPEC="torch torchvision").
# constraints.txt pins the libraries the data's bytes depend on (tests/test_golden_digests.py).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
WORKERS ?= 2
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test bench gpu-check lint preprocess pretrain finetune experiment clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,interop]'
	touch $@

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# make demo: synthetic 3-camera action set -> shards -> pretrain (tiny) -> finetune -> eval on the
# cross-view protocol (train cameras 2, 3; test camera 1), and the same finetune from scratch beside it
# (what pretraining contributed) -> runs/demo/report.md. Each stage's wall
# time goes to runs/demo/timings.txt and into the report. About 8 minutes on 2 idle CPU cores.
DEMO_DIR := runs/demo
DEMO_RAW := data/raw/synth-demo
DEMO_DATA := data/synth-demo
DEMO_PROTOCOL := synth_xview
DEMO_SYNTH := --classes 12 --subjects 8 --replications 2 --size 160x120 --workers $(WORKERS)
DEMO_PREPROCESS := --size 80 --fps 15 --crop person --workers $(WORKERS) --no-progress
DEMO_SET ?=
MV2MAE := $(VENV)/bin/mv2mae
# $(call timed,STAGE,COMMAND): run COMMAND, append "STAGE SECONDS" to the demo's timings
timed = t0=$$(date +%s) && $(2) && echo "$(1) $$(( $$(date +%s) - t0 ))" >> $(DEMO_DIR)/timings.txt
demo: $(STAMP)
	rm -rf $(DEMO_DIR) $(DEMO_RAW) $(DEMO_DATA) && mkdir -p $(DEMO_DIR)
	$(call timed,synth,$(MV2MAE) synth --out $(DEMO_RAW) $(DEMO_SYNTH))
	$(call timed,preprocess,$(MV2MAE) preprocess synth --root $(DEMO_RAW) --out $(DEMO_DATA) $(DEMO_PREPROCESS))
	$(call timed,pretrain,$(MV2MAE) pretrain --config tiny --data $(DEMO_DATA) --out $(DEMO_DIR)/pretrain \
		--set data.protocol=$(DEMO_PROTOCOL) $(DEMO_SET))
	$(call timed,finetune,$(MV2MAE) finetune --config tiny --data $(DEMO_DATA) --out $(DEMO_DIR)/finetune \
		--init $(DEMO_DIR)/pretrain/checkpoints/lowest-train-loss.pt --set data.protocol=$(DEMO_PROTOCOL) $(DEMO_SET))
	$(call timed,eval,$(MV2MAE) eval --checkpoint $(DEMO_DIR)/finetune/checkpoints/best-val-top1.pt \
		--protocol $(DEMO_PROTOCOL) --out $(DEMO_DIR)/eval)
	$(call timed,scratch,$(MV2MAE) finetune --config tiny --data $(DEMO_DATA) --out $(DEMO_DIR)/scratch \
		--set data.protocol=$(DEMO_PROTOCOL) $(DEMO_SET) && $(MV2MAE) eval \
		--checkpoint $(DEMO_DIR)/scratch/checkpoints/best-val-top1.pt --protocol $(DEMO_PROTOCOL) --out $(DEMO_DIR)/scratch-eval)
	$(MV2MAE) report --pretrain $(DEMO_DIR)/pretrain --finetune $(DEMO_DIR)/finetune --eval $(DEMO_DIR)/eval \
		--scratch-eval $(DEMO_DIR)/scratch-eval --timings $(DEMO_DIR)/timings.txt --out $(DEMO_DIR)/report.md
	@echo "demo: read $(DEMO_DIR)/report.md"

# make experiment [PLAN=transfer] [SCALE=default|gpu] [STUDY=experiments/transfer]: the controlled
# transfer study (mv2mae/experiment/plans/transfer.yaml: every arm × seed pretrained without labels,
# finetuned on a few labelled subjects and tested from a camera no run saw, probes beside)
# -> STUDY/RESULTS.md, results.json and plots. Sized for about 67 minutes on 2 idle CPU cores at the
# default scale; run it again after an interruption and it continues where it stopped. PLAN=crossview
# is the earlier study (experiments/crossview/).
PLAN ?= transfer
SCALE ?= default
STUDY ?= experiments/$(PLAN)
experiment: $(STAMP)
	$(MV2MAE) experiment --plan $(PLAN) --scale $(SCALE) --out $(STUDY)

BENCH_DIR := bench-results
bench: $(STAMP)
	mkdir -p $(BENCH_DIR)
	$(VENV)/bin/mv2mae bench synth --json $(BENCH_DIR)/synth.json
	$(VENV)/bin/mv2mae bench preprocess --json $(BENCH_DIR)/preprocess.json
	$(VENV)/bin/mv2mae bench loader --json $(BENCH_DIR)/loader.json
	$(VENV)/bin/mv2mae bench train --json $(BENCH_DIR)/train.json
	$(VENV)/bin/mv2mae bench motion --samples 128 --json $(BENCH_DIR)/motion.json
	$(VENV)/bin/mv2mae bench model --threads 1 --json $(BENCH_DIR)/model.json

# make gpu-check: every CUDA-only path in one run of about 8 minutes on one GPU (README, "Feeding the
# GPU"); without CUDA it says "no CUDA device" and succeeds.
gpu-check: $(STAMP)
	mkdir -p $(BENCH_DIR)
	$(VENV)/bin/mv2mae bench gpu --json $(BENCH_DIR)/gpu.json --markdown $(BENCH_DIR)/gpu.md

# make preprocess DATASET=ntu60 ROOT=/data/nturgbd [OUT=data/ntu60] [ARGS="--crop person --motion both"]
DATASET ?= synth
ROOT ?= data/raw/$(DATASET)
OUT ?= data/$(DATASET)
ARGS ?=
preprocess: $(STAMP)
	$(VENV)/bin/mv2mae preprocess $(DATASET) --root $(ROOT) --out $(OUT) $(ARGS)

# make pretrain CONFIG=ntu60_xsub DATA=data/ntu60 [RUN=runs/ntu60_xsub] [NPROC=8] [ARGS="--set steps=1000"]
# make finetune CONFIG=ntu60_xsub DATA=data/ntu60 [INIT=RUN/pretrain/checkpoints/lowest-train-loss.pt] ...
# Both resume automatically from RUN's newest checkpoint; NPROC > 1 launches through torchrun.
CONFIG ?= tiny
DATA ?= data/synth
RUN ?= runs/$(CONFIG)
INIT ?= $(RUN)/pretrain/checkpoints/lowest-train-loss.pt
NPROC ?= 1
ifeq ($(NPROC),1)
LAUNCH := $(VENV)/bin/mv2mae
else
LAUNCH := $(VENV)/bin/torchrun --standalone --nproc_per_node $(NPROC) -m mv2mae.cli
endif
pretrain: $(STAMP)
	$(LAUNCH) pretrain --config $(CONFIG) --data $(DATA) --out $(RUN)/pretrain --resume auto $(ARGS)

finetune: $(STAMP)
	$(LAUNCH) finetune --config $(CONFIG) --data $(DATA) --init $(INIT) --out $(RUN)/finetune --resume auto $(ARGS)

clean-venv:
	rm -rf $(VENV)
