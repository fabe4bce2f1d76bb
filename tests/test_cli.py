"""`vitonprep` as a user runs it: a real process, its exit code, its output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

VITONPREP = [sys.executable, "-m", "flows.cli"]
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def vitonprep(*args: str, timeout: float = 900, **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "YOLO_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **env_vars}
    return subprocess.run(
        [*VITONPREP, *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("command", [[], ["preprocess"], ["demo"], ["validate"], ["tryon"], ["train"]])
def test_help_is_available_everywhere(command):
    result = vitonprep(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: vitonprep" in result.stdout


def test_an_invalid_option_is_refused_with_a_clear_message(tmp_path):
    result = vitonprep("preprocess", "--catalog", str(tmp_path), "--out", str(tmp_path / "o"), "--parser", "magic")
    assert result.returncode == 2
    assert "parser must be 'geometric' or 'yolo:<weights URL>'" in result.stderr


@pytest.mark.slow
def test_a_folder_that_is_no_catalog_fails_the_run(tmp_path):
    (tmp_path / "photos").mkdir()
    result = vitonprep("preprocess", "--catalog", str(tmp_path), "--out", str(tmp_path / "o"), "--no-progress")
    assert result.returncode == 1
    assert "is not a catalog" in result.stderr


@pytest.mark.slow
def test_preprocess_on_a_vitonhd_root_with_bad_files_prints_json(tmp_path, samples_dir):
    catalog = tmp_path / "catalog"
    shutil.copytree(samples_dir / "image", catalog / "image")
    shutil.copytree(samples_dir / "cloth", catalog / "cloth")
    (catalog / "image" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.new("RGB", (640, 480), (250, 250, 250)).save(catalog / "image" / "empty-room.png")
    result = vitonprep(
        "preprocess", "--catalog", str(catalog), "--out", f"file://{tmp_path / 'out'}", "--shard-size", "2", "--json"
    )
    assert result.returncode == 1, "2 of 10 failed is over the default max_failed_fraction 0.1: exit 1\n" + result.stderr[-3000:]
    assert "2 of 10 items failed" in result.stderr, result.stderr[-3000:]
    summary = json.loads(result.stdout)  # the summary is printed all the same
    assert summary["persons"] == {"total": 6, "ok": 4, "error": 2}
    assert summary["garments"] == {"total": 4, "ok": 4, "error": 0}
    codes = {f["key"]: f["error_code"] for f in summary["failed"]}
    assert codes["empty-room.png"] == "no_person"
    assert codes["broken.jpg"] in {"truncated_image", "not_an_image"}
    pairs = (tmp_path / "out" / "test_pairs.txt").read_text().split("\n")
    assert len([p for p in pairs if p]) == 4
    for line in filter(None, pairs):
        person, cloth = line.split()
        assert person != cloth, "a test pair must give a person a garment they do not wear"


@pytest.mark.slow
def test_demo_runs_end_to_end_and_writes_a_contact_sheet(tmp_path):
    result = vitonprep("demo", "--out", str(tmp_path / "demo"), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    sheet = Path(report["contact_sheet"])
    assert sheet.is_file()
    with Image.open(sheet) as image:
        assert image.format == "PNG" and image.width >= 4 * 192
    summary = report["summary"]
    assert summary["garments"]["ok"] == 3, summary["failed"]
    assert summary["persons"]["ok"] >= 1, summary["failed"]
    assert "no_person" in summary["errors"], "the cat photo should be recorded as having no person"


@pytest.mark.slow
def test_with_a_prefect_server_configured_the_cli_prints_the_runs_ui_page(tmp_path, samples_dir, prefect_server):
    from prefect.settings import PREFECT_API_URL

    catalog = tmp_path / "catalog"
    for folder in ("image", "cloth"):
        (catalog / folder).mkdir(parents=True)
        first = sorted((samples_dir / folder).glob("*.jpg"))[0]
        shutil.copy(first, catalog / folder / first.name)
    api = PREFECT_API_URL.value()
    result = vitonprep("preprocess", "--catalog", str(catalog), "--out", str(tmp_path / "out"), "--json",
                       PREFECT_API_URL=api)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    page = f"{api.removesuffix('/api')}"
    assert summary["ui_url"].startswith(page) and summary["ui_url"].endswith(f"/runs/flow-run/{summary['flow_run_id']}")
    assert f"watch the run at {summary['ui_url']}" in result.stderr


@pytest.mark.slow
def test_without_a_server_no_link_to_a_temporary_one_is_printed(tmp_path):
    (tmp_path / "photos").mkdir()
    result = vitonprep("preprocess", "--catalog", str(tmp_path), "--out", str(tmp_path / "o"), "--no-progress",
                       PREFECT_API_URL="")
    assert "watch the run at" not in result.stderr
