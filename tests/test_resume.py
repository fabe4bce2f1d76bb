"""Kill a run with SIGKILL in the middle, run it again: the dataset is whole and nothing is redone."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.infra.store import Store
from tasks.records.manifest import read_all, read_current
from tasks.stages.registry import PreprocessConfig, outputs_of, stages_for

pytestmark = pytest.mark.slow
PROJECT_ROOT = Path(__file__).resolve().parent.parent
COPIES = 3  # each sample person under this many names


def vitonprep(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *args]


def environment() -> dict[str, str]:
    return {**os.environ, "YOLO_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def finished_items(out: Path) -> set[tuple[str, str]]:
    """Items whose shard manifest part was written (what a run finished)."""
    table = read_all(Store(str(out)), "test")
    return set(zip(table["kind"].to_pylist(), table["key"].to_pylist()))


@pytest.fixture
def catalog(samples_dir, tmp_path) -> Path:
    root = tmp_path / "catalog"
    (root / "persons").mkdir(parents=True)
    (root / "garments").mkdir()
    for copy in range(COPIES):
        for path in sorted((samples_dir / "image").glob("*.jpg")):
            shutil.copy(path, root / "persons" / f"{path.stem}-{copy}.jpg")
    for path in sorted((samples_dir / "cloth").glob("*.jpg"))[:2]:
        shutil.copy(path, root / "garments" / path.name)
    return root


def test_a_killed_run_is_finished_by_the_next_one_without_redoing_work(catalog, tmp_path):
    out = tmp_path / "dataset"
    args = ("preprocess", "--catalog", str(catalog), "--out", str(out), "--shard-size", "1", "--workers", "1",
            "--no-progress")
    process = subprocess.Popen(
        vitonprep(*args), cwd=PROJECT_ROOT, env=environment(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and process.poll() is None:
            parts = list((out / "manifests" / "test").glob("run=*/*.parquet")) if out.exists() else []
            if len(parts) >= 3:
                break
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the CLI and the temporary Prefect server it started
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done_before = finished_items(out)
    total = 4 * COPIES + 2
    assert 0 < len(done_before) < total, f"expected a part-finished run, got {len(done_before)} of {total} items"

    result = subprocess.run(
        vitonprep(*args, "--json"), cwd=PROJECT_ROOT, env=environment(), capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    processed = summary["persons"]["total"] + summary["garments"]["total"]
    assert processed == total - len(done_before), "the rerun must process exactly the unfinished items"
    assert summary["dataset"] == {"persons": 4 * COPIES, "garments": 2, "pairs": 4 * COPIES}

    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]
    assert not leftovers, f"partial files remain: {leftovers}"
    store = Store(str(out))
    current = read_current(store, "test")
    rows = list(zip(current["kind"].to_pylist(), current["key"].to_pylist(), current["stage"].to_pylist()))
    # Every stage of every item once, and every person's paired cloth (its test pair's garment).
    assert len(rows) == len(set(rows)) == 4 * COPIES * (len(stages_for("person")) + 1) + 2 * len(stages_for("garment"))
    assert set(current["status"].to_pylist()) == {"ok"}
    config = PreprocessConfig(catalog=str(catalog), out=str(out))
    for kind, stem in set(zip(current["kind"].to_pylist(), current["stem"].to_pylist())):
        missing = [rel for rel in outputs_of(config.split, kind, stem) if not store.exists(rel)]
        assert not missing, f"{kind} {stem}: missing {missing}"
