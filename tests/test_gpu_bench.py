"""bench/gpu.sh, the prepared GPU run, at its tiny CPU sizes: it runs to the end and prints every row of its table,
so the script is known to work before a short GPU window is spent on it."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import PROJECT_ROOT

# (what, setting) of every row the tiny run prints, in order.
TINY_ROWS = [
    ("shard pass, YOLO parser (yolov8n-seg)", "parse batch 1"),
    ("shard pass, YOLO parser (yolov8n-seg)", "parse batch 2"),
    ("cloth mask, U-Net (ClothUNet)", "one at a time (mask_cloth, CPU, 1 process)"),
    ("cloth mask, U-Net (ClothUNet)", "batched 1 (cpu)"),
    ("cloth mask, U-Net (ClothUNet)", "batched 2 (cpu)"),
    ("try-on seg->GMM->ALIAS, 256x256", "fp32, batch 1"),
    ("try-on seg->GMM->ALIAS, 256x256", "fp16, batch 1"),
    ("training, 256x256", "seg, batch 2"),
    ("training, 256x256", "gmm, batch 2"),
    ("training, 256x256", "alias, batch 2"),
]


@pytest.mark.slow
def test_the_tiny_gpu_bench_prints_every_row_of_its_table(samples_dir, tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OUT": str(tmp_path)}  # the CPU run, even on a GPU machine
    result = subprocess.run(["bash", "bench/gpu.sh", "--tiny", "--samples", str(samples_dir)], cwd=PROJECT_ROOT,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-4000:]}"
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in result.stdout.splitlines() if line.startswith("| ") and not line.startswith("| what ")]
    assert [(row[0], row[1]) for row in rows] == TINY_ROWS, result.stdout
    for row in rows:
        what, setting, where = row[0], row[1], row[-1]
        if setting.startswith("fp16"):
            assert where == "skipped: fp16 runs on CUDA only", row
            continue
        assert not where.startswith(("skipped", "failed")), f"{what} / {setting}: {where}\n{result.stderr[-4000:]}"
        assert float(row[4]) > 0, f"{what} / {setting}: no rate"
    assert (tmp_path / "bench-gpu.json").is_file(), "with $OUT set, the JSON report goes there"
