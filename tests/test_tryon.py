"""The tryon flow and `vitonprep tryon` on a dataset our preprocess flow made, with tiny networks.

Full-size networks take about a minute per pair on a 2-core CPU, so every run here uses a tiny
architecture (512x384, narrow layers) described by the checkpoint folder's sidecars, as the train flow
writes them. Flow runs are module-scoped fixtures shared by the tests that look at them.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tasks.engine.tryon import (
    OK,
    PairWork,
    latest_rows,
    read_tryon_rows,
    result_key,
    select_pending,
)
from tasks.infra.store import Store
from tasks.records.config import TryOnConfig
from vitonhd_models import contract
from vitonhd_models.checkpoints import (
    RANDOM_INIT,
    STAGES,
    Architecture,
    arch_name,
    build_network,
    checkpoint_label,
    save_final,
)
from vitonhd_models.pairs import pair_name

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TINY = Architecture(load_height=512, load_width=384, seg_ngf=8, gmm_ngf=8, alias_ngf=8, alias_norm_hidden=16)
TRAIN_PAIRS = 8  # tests/tryon_dataset.py: eight persons, each with the garment of the same index


def run_tryon(dataset: Store, out: Path, checkpoints: str, **options):
    from flows.tryon import tryon

    return tryon(TryOnConfig(dataset=dataset.url, out=str(out), split="train", checkpoints=checkpoints, device="cpu",
                             **options))


def result_mtimes(out: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in (out / "results").glob("*.jpg")}


def run_rows(out: Path, run_id: str) -> list[dict]:
    return read_tryon_rows(Store(str(out)), run_id).to_pylist()


@pytest.fixture(scope="module")
def random_checkpoints(tmp_path_factory) -> str:
    """Sidecars only: the tiny architecture, every network randomly initialised."""
    folder = tmp_path_factory.mktemp("random-ckpt")
    store = Store(str(folder))
    for stage in STAGES:
        store.write_text(arch_name(stage), json.dumps({"stage": stage, "architecture": TINY.to_dict()}) + "\n")
    return str(folder)


def save_trained(folder: Path, seed: int, stages: tuple[str, ...] = STAGES) -> dict[str, str]:
    """Tiny 'trained' checkpoints as the train flow writes them (weights + sidecar); stage -> id."""
    torch.manual_seed(seed)
    return {stage: save_final(Store(str(folder)), stage, build_network(stage, TINY), TINY) for stage in stages}


# ---------------------------------------------------------------------------------------------
# Pure helpers (fast)


def test_pair_names_accept_stems_and_file_names():
    assert pair_name("00001_00") == "00001_00.jpg"
    assert pair_name(" 00001_00.jpg ") == "00001_00.jpg"
    with pytest.raises(ValueError):
        pair_name("image/00001_00.jpg")
    assert result_key("00001_00.jpg", "00002_00.jpg") == "results/00001_00_00002_00.jpg"


def test_only_ok_rows_with_the_same_weights_options_and_file_are_skipped():
    pairs = [("a.jpg", "x.jpg"), ("b.jpg", "x.jpg"), ("c.jpg", "x.jpg"), ("d.jpg", "x.jpg"), ("e.jpg", "x.jpg")]
    row = {"status": OK, "checkpoint": "L", "options_fingerprint": "F"}
    previous = {
        ("a.jpg", "x.jpg"): {**row, "result": result_key("a.jpg", "x.jpg")},
        ("b.jpg", "x.jpg"): {**row, "result": result_key("b.jpg", "x.jpg"), "checkpoint": "other"},
        ("c.jpg", "x.jpg"): {**row, "result": result_key("c.jpg", "x.jpg"), "status": "error"},
        ("d.jpg", "x.jpg"): {**row, "result": result_key("d.jpg", "x.jpg")},  # its file is gone
    }
    existing = {result_key("a.jpg", "x.jpg"), result_key("b.jpg", "x.jpg"), result_key("c.jpg", "x.jpg")}
    todo, skipped = select_pending(pairs, previous, "L", "F", existing)
    assert skipped == [("a.jpg", "x.jpg")]
    assert todo == [PairWork(0, "b.jpg", "x.jpg"), PairWork(1, "c.jpg", "x.jpg"), PairWork(2, "d.jpg", "x.jpg"),
                    PairWork(3, "e.jpg", "x.jpg")]
    assert select_pending(pairs[:1], previous, "L", "other options", existing)[1] == []


def test_config_wants_persons_and_garments_together(tmp_path):
    with pytest.raises(ValueError, match="persons and garments go together"):
        TryOnConfig(dataset=str(tmp_path), out=str(tmp_path), persons=["a"])
    config = TryOnConfig(dataset=str(tmp_path), out=str(tmp_path), persons=["a", "a.jpg", "b"], garments=["x"])
    assert config.persons == ["a.jpg", "b.jpg"]


def test_cli_refuses_an_invalid_configuration(tmp_path, capsys):
    from flows.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["tryon", "--dataset", str(tmp_path), "--out", str(tmp_path / "o"), "--persons", "a", "--no-progress"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "usage: vitonprep tryon" in err and "persons and garments go together" in err


# ---------------------------------------------------------------------------------------------
# One run over the train pairs with random init, then the same run again


@pytest.fixture(scope="module")
def first_run(tryon_dataset, random_checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("tryon-out")
    summary = run_tryon(tryon_dataset, out, random_checkpoints, batch_size=4, shard_size=4)
    return out, summary, run_rows(out, summary["run_id"]), result_mtimes(out)


@pytest.fixture(scope="module")
def second_run(first_run, tryon_dataset, random_checkpoints):
    out = first_run[0]
    summary = run_tryon(tryon_dataset, out, random_checkpoints, batch_size=4, shard_size=4)
    return summary, run_rows(out, summary["run_id"]), result_mtimes(out)


@pytest.mark.slow
def test_every_pair_gets_a_result_image_and_an_ok_row(first_run, tryon_dataset):
    out, summary, rows, _ = first_run
    pairs = tryon_dataset.read_text("train_pairs.txt").split()
    expected = {(pairs[i], pairs[i + 1]) for i in range(0, len(pairs), 2)}
    assert len(expected) == TRAIN_PAIRS
    assert summary["pairs"] == {"total": TRAIN_PAIRS, "ok": TRAIN_PAIRS, "error": 0, "skipped": 0}
    assert {(row["person"], row["garment"]) for row in rows} == expected
    for row in rows:
        assert row["status"] == "ok" and row["error_code"] is None
        assert row["result"] == result_key(row["person"], row["garment"])
        with Image.open(out / row["result"]) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert image.size == (TINY.load_width, TINY.load_height)
        assert (row["load_height"], row["load_width"]) == TINY.load_hw
        assert row["load_ms"] > 0 and row["infer_ms"] > 0 and row["write_ms"] > 0
        assert row["device"] == "cpu" and row["precision"] == "fp32"
        assert row["finished_at"] is not None
        assert {row[f"{stage}_checkpoint"] for stage in STAGES} == {RANDOM_INIT}
        assert row["checkpoint"] == checkpoint_label(dict.fromkeys(STAGES, RANDOM_INIT))
    stored = json.loads((out / "manifests" / "tryon" / f"run={summary['run_id']}" / "summary.json").read_text())
    assert stored["pairs"] == summary["pairs"]
    with Image.open(out / "tryon_contact_sheet.png") as sheet:
        assert sheet.width == 3 * 192 and sheet.height >= 8 * 256  # person | cloth | result, 8 pairs


@pytest.mark.slow
def test_random_init_is_flagged_in_rows_and_summary(first_run):
    _, summary, rows, _ = first_run
    assert all(row["random_init"] for row in rows)
    assert summary["random_init"] is True
    assert summary["random_init_networks"] == list(STAGES)
    assert "not meaningful" in summary["warning"]


@pytest.mark.slow
def test_a_rerun_with_the_same_checkpoints_skips_everything(first_run, second_run):
    _, first, _, mtimes_before = first_run
    summary, rows, mtimes_after = second_run
    assert summary["pairs"] == {"total": TRAIN_PAIRS, "ok": 0, "error": 0, "skipped": TRAIN_PAIRS}
    assert rows == []
    assert mtimes_after == mtimes_before
    assert summary["run_id"] != first["run_id"]


# ---------------------------------------------------------------------------------------------
# Trained (tiny) checkpoints, persons x garments, then one checkpoint changed


@pytest.fixture(scope="module")
def trained_runs(tryon_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained-ckpt")
    out = tmp_path_factory.mktemp("tryon-trained")
    ids = save_trained(folder, seed=1)
    cross = run_tryon(
        tryon_dataset, out, str(folder), persons=["00034_00", "00035_01.jpg"], garments=["04469_00", "04743_01.jpg"],
        batch_size=4,
    )
    cross_rows = run_rows(out, cross["run_id"])
    new_ids = {**ids, **save_trained(folder, seed=2, stages=("seg",))}
    after = run_tryon(tryon_dataset, out, str(folder), persons=["00034_00"], garments=["04469_00"])
    return {"ids": ids, "cross": cross, "cross_rows": cross_rows, "new_ids": new_ids, "after": after,
            "after_rows": run_rows(out, after["run_id"]), "out": out}


@pytest.mark.slow
def test_persons_times_garments_are_rendered_with_the_trained_weights(trained_runs):
    summary, rows, ids = trained_runs["cross"], trained_runs["cross_rows"], trained_runs["ids"]
    assert summary["pairs"] == {"total": 4, "ok": 4, "error": 0, "skipped": 0}
    assert summary["pairs_source"] == "persons x garments"
    assert sorted((row["person"], row["garment"]) for row in rows) == [
        ("00034_00.jpg", "04469_00.jpg"), ("00034_00.jpg", "04743_01.jpg"),
        ("00035_01.jpg", "04469_00.jpg"), ("00035_01.jpg", "04743_01.jpg"),
    ]
    assert summary["random_init"] is False and summary["warning"] is None
    for row in rows:
        assert row["random_init"] is False
        assert {stage: row[f"{stage}_checkpoint"] for stage in STAGES} == ids
        assert row["checkpoint"] == checkpoint_label(ids)
        assert (trained_runs["out"] / row["result"]).is_file()


@pytest.mark.slow
def test_a_changed_checkpoint_renders_again(trained_runs):
    summary, rows, new_ids = trained_runs["after"], trained_runs["after_rows"], trained_runs["new_ids"]
    assert new_ids["seg"] != trained_runs["ids"]["seg"]
    assert summary["pairs"] == {"total": 1, "ok": 1, "error": 0, "skipped": 0}
    assert [(row["person"], row["seg_checkpoint"], row["gmm_checkpoint"]) for row in rows] == [
        ("00034_00.jpg", new_ids["seg"], new_ids["gmm"])
    ]
    latest = latest_rows(read_tryon_rows(Store(str(trained_runs["out"]))))
    assert latest[("00034_00.jpg", "04469_00.jpg")]["checkpoint"] == checkpoint_label(new_ids)
    assert latest[("00035_01.jpg", "04469_00.jpg")]["checkpoint"] == checkpoint_label(trained_runs["ids"])


# ---------------------------------------------------------------------------------------------
# Bad pairs


def corrupt_keypoints(split_dir: Path, stem: str) -> None:
    """Zero the neck and both hips (BODY_25 1, 9, 12) of a person's OpenPose JSON."""
    path = split_dir / contract.DIR_POSE_JSON / contract.keypoints_json_name(stem)
    document = json.loads(path.read_text())
    flat = document["people"][0]["pose_keypoints_2d"]
    for joint in (contract.Body25.NECK, contract.Body25.R_HIP, contract.Body25.L_HIP):
        flat[3 * joint : 3 * joint + 3] = [0.0, 0.0, 0.0]
    path.write_text(json.dumps(document))


@pytest.mark.slow
def test_bad_pairs_get_error_rows_and_the_rest_is_rendered(tryon_dataset, random_checkpoints, tmp_path):
    dataset = tmp_path / "dataset"
    shutil.copytree(tryon_dataset.url, dataset)  # the session fixture stays untouched
    corrupt_keypoints(dataset / "train", "00121_01")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("nobody_00.jpg 04469_00.jpg\n00121_01.jpg 09133_01.jpg\n00035_00.jpg 04743_00.jpg\n")
    out = tmp_path / "out"
    summary = run_tryon(Store(str(dataset)), out, random_checkpoints, pairs=str(pairs), batch_size=2)
    assert summary["pairs"] == {"total": 3, "ok": 1, "error": 2, "skipped": 0}
    codes = {row["person"]: (row["status"], row["error_code"]) for row in run_rows(out, summary["run_id"])}
    assert codes == {
        "nobody_00.jpg": ("error", "missing_input"),
        "00121_01.jpg": ("error", "missing_keypoints"),
        "00035_00.jpg": ("ok", None),
    }
    assert sorted(os.listdir(out / "results")) == ["00035_00_04743_00.jpg"]
    assert summary["errors"] == {"missing_input": 1, "missing_keypoints": 1}


# ---------------------------------------------------------------------------------------------
# The command line


@pytest.mark.slow
def test_vitonprep_tryon_prints_the_summary_as_json(tryon_dataset, random_checkpoints, tmp_path):
    env = {**os.environ, "YOLO_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)  # its own temporary server, not the test harness's
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "tryon", "--dataset", tryon_dataset.url, "--split", "train",
         "--persons", "00121_00", "--garments", "09133_00,09163_01", "--checkpoints", random_checkpoints,
         "--out", str(out), "--device", "cpu", "--precision", "fp16", "--batch-size", "2", "--json"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["pairs"] == {"total": 2, "ok": 2, "error": 0, "skipped": 0}
    assert summary["random_init"] is True
    assert "not meaningful" in result.stderr
    assert summary["precision"] == "fp32" and "fp16 is honoured on CUDA only" in result.stderr  # CPU: ignored
    for name in ("00121_00_09133_00.jpg", "00121_00_09163_01.jpg"):
        with Image.open(io.BytesIO((out / "results" / name).read_bytes())) as image:
            assert image.size == (TINY.load_width, TINY.load_height)


def test_ui_thumbnails_are_jpeg_data_uris_scaled_to_the_asked_height():
    import base64
    import io

    import numpy as np
    from PIL import Image

    from tasks.stages.contact_sheet import thumbnail_data_uri

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((1024, 600, 3), np.uint8)).save(buffer, format="PNG")
    uri = thumbnail_data_uri(buffer.getvalue(), 256)
    assert uri.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as thumbnail:
        assert thumbnail.size == (150, 256)


@pytest.mark.slow
def test_a_re_preprocessed_person_renders_again_and_the_rest_is_skipped(tryon_dataset, random_checkpoints, tmp_path):
    dataset = tmp_path / "dataset"
    shutil.copytree(tryon_dataset.url, dataset)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("00034_00.jpg 04469_00.jpg\n00035_00.jpg 04743_00.jpg\n")
    out = tmp_path / "out"
    first = run_tryon(Store(str(dataset)), out, random_checkpoints, pairs=str(pairs), batch_size=2)
    assert first["pairs"]["ok"] == 2
    parse = dataset / "train" / contract.DIR_PARSE / "00035_00.png"
    with Image.open(parse) as image:  # a new parse map for one person, as a preprocess rerun would write
        changed = image.copy()
    changed.putpixel((0, 0), 2 if changed.getpixel((0, 0)) != 2 else 0)
    changed.save(parse)
    second = run_tryon(Store(str(dataset)), out, random_checkpoints, pairs=str(pairs), batch_size=2)
    assert second["pairs"] == {"total": 2, "ok": 1, "error": 0, "skipped": 1}
    assert [row["person"] for row in run_rows(out, second["run_id"])] == ["00035_00.jpg"]
