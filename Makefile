# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
export YOLO_OFFLINE := 1
export YOLO_AUTOINSTALL := 0
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: demo test bench bench-tryon bench-parser bench-orchestration install clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vitonprep demo --out demo-output

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python bench/preprocess.py

# Try-on inference and training speed at 512x384 and 1024x768 (CUDA when there is one); slow on a CPU.
bench-tryon: $(STAMP)
	$(VENV)/bin/python bench/tryon.py $(BENCH_TRYON_ARGS)

# YOLOv8-seg parser speed at imgsz 1024 for sizes n s m x (random weights; CPU by default, BENCH_PARSER_ARGS=--device cuda).
bench-parser: $(STAMP)
	$(VENV)/bin/python bench/parser.py $(BENCH_PARSER_ARGS)

# Prefect's orchestration overhead per task run, shard, image and child flow run (starts its own API server).
bench-orchestration: $(STAMP)
	$(VENV)/bin/python bench/orchestration.py $(BENCH_ORCHESTRATION_ARGS)

clean:
	rm -rf demo-output bench-output .pytest_cache
