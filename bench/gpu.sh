#!/usr/bin/env bash
# One prepared GPU run (bench/gpu.py): the shard pass with the YOLO parser at parse batches 1, 8 and 32, the U-Net
# cloth mask one at a time and batched, bulk try-on and the three training stages, printed as one table.
#
#     bash bench/gpu.sh [--tiny] [--budget-s 480] [--json]      (make bench-gpu)
#
# Made for a short device window: it uses .venv/bin/python when that runs, else tries `make install` (briefly:
# a machine without network fails fast), else the machine's python3 (with the wheels of .whl/ installed under
# /tmp/site when that folder was carried), where the sections whose packages are missing are reported as
# skipped. The run is stopped after GPU_BENCH_TIMEOUT_S (540 s) with SIGTERM, on which bench/gpu.py prints the
# rows it has. Where $OUT is set (a device machine), the JSON report goes there too.
set -uo pipefail
cd "$(dirname "$0")/.."
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0 PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 PYTHONUNBUFFERED=1

usable() { [ -x "$1" ] && "$1" -c "import torch" >/dev/null 2>&1; }

PY=.venv/bin/python
if ! usable "$PY"; then
  echo "bench/gpu.sh: no usable .venv; trying make install (at most ${GPU_BENCH_INSTALL_S:-180} s)" >&2
  PIP_DEFAULT_TIMEOUT=5 PIP_RETRIES=0 timeout "${GPU_BENCH_INSTALL_S:-180}" make install >&2 \
    || echo "bench/gpu.sh: make install failed" >&2
fi
if ! usable "$PY"; then
  PY=$(command -v python3 || true)
  if [ -n "$PY" ] && compgen -G ".whl/*.whl" >/dev/null; then  # wheels carried to a device machine (its README)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  if [ -z "$PY" ]; then
    echo "bench/gpu.sh: no python3 either" >&2
    exit 1
  fi
  echo "bench/gpu.sh: using $PY; sections whose packages it lacks are reported as skipped" >&2
fi

args=("$@")
if [ -n "${OUT:-}" ] && [ -d "${OUT}" ]; then
  args+=(--out "$OUT/bench-gpu.json")
fi
exec timeout --signal=TERM --kill-after=30 "${GPU_BENCH_TIMEOUT_S:-540}" "$PY" bench/gpu.py "${args[@]}"
