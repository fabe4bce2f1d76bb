# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3.11
VENV := .venv
LOCK := requirements.lock
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | sha256sum | cut -c1-12)
export YOLO_OFFLINE := 1
export YOLO_AUTOINSTALL := 0
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: demo test lint bench bench-accuracy bench-tryon bench-parser bench-orchestration bench-gpu install lock clean

# The versions of $(LOCK), so CI and every new machine get the same set.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c $(LOCK) -e ".[test]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

# Resolve pyproject.toml's ranges afresh in a clean venv and pin what that installs.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet -e ".[test]"
	{ head -2 $(LOCK); .lock-venv/bin/python -m pip freeze --exclude-editable | grep -v -E '^(pip|vitonprep)=='; } > $(LOCK).new
	mv $(LOCK).new $(LOCK) && rm -rf .lock-venv

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vitonprep demo --out demo-output

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

# ruff, vulture (dead code; its settings and paths in pyproject.toml, reflection's names in
# .ci/vulture_whitelist.py), then the import rule between packages and rooms (tests/test_layers.py).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/vulture
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_layers.py

bench: $(STAMP)
	$(VENV)/bin/python bench/preprocess.py

# Parse, pose, parse-agnostic and cloth masks against the VITON-HD dataset's own files (../shared/groundtruth/vitonhd).
bench-accuracy: $(STAMP)
	$(VENV)/bin/python bench/accuracy.py $(BENCH_ACCURACY_ARGS)

# Try-on inference and training speed at 512x384 and 1024x768 (CUDA when there is one); slow on a CPU.
bench-tryon: $(STAMP)
	$(VENV)/bin/python bench/tryon.py $(BENCH_TRYON_ARGS)

# YOLOv8-seg parser speed at imgsz 1024 for sizes n s m x (random weights; CPU by default, BENCH_PARSER_ARGS=--device cuda).
bench-parser: $(STAMP)
	$(VENV)/bin/python bench/parser.py $(BENCH_PARSER_ARGS)

# Prefect's orchestration overhead per task run, shard, image and child flow run (starts its own API server).
bench-orchestration: $(STAMP)
	$(VENV)/bin/python bench/orchestration.py $(BENCH_ORCHESTRATION_ARGS)

# One prepared GPU run, one table: shard pass with the YOLO parser, batched U-Net cloth mask, try-on, training.
# No $(STAMP): bench/gpu.sh installs when it can and otherwise runs what the machine's python3 can (a bare GPU box).
bench-gpu:
	bash bench/gpu.sh $(BENCH_GPU_ARGS)

clean:
	rm -rf demo-output bench-output .pytest_cache
