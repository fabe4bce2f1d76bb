"""The preprocess flow end to end, under a real (temporary) Prefect server, on real photos and bad inputs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tasks.infra.store import Store
from tasks.records.config import RunPolicy
from tasks.records.manifest import item_view, read_run
from tasks.stages.registry import PreprocessConfig
from vitonhd_models import contract

pytestmark = pytest.mark.slow


def jpeg_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG")
    return buffer.getvalue()


BAD_PERSONS = {
    "bad/empty.jpg": lambda: b"",
    "bad/not-an-image.jpg": lambda: b"this is a text file, not a photo\n" * 10,
    "bad/truncated.jpg": lambda: jpeg_bytes(np.full((400, 300, 3), 120, np.uint8))[:300],
    "bad/tiny.png": lambda: png_bytes(np.zeros((8, 8, 3), np.uint8)),
    "bad/nobody.jpg": lambda: jpeg_bytes(np.full((1024, 768, 3), (90, 140, 200), np.uint8)),
    "bad/bomb.png": lambda: png_claiming(30000, 30000),
}
EXPECTED_CODES = {
    "bad/empty.jpg": "empty_file",
    "bad/not-an-image.jpg": "not_an_image",
    "bad/truncated.jpg": "truncated_image",
    "bad/tiny.png": "image_too_small",
    "bad/nobody.jpg": "no_person",
    "bad/bomb.png": "decompression_bomb",
    "bad/head-and-shoulders.jpg": "missing_keypoints",
}


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height: a decompression bomb, as far as headers go."""
    data = bytearray(png_bytes(np.zeros((16, 16), np.uint8)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def saved(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, samples_dir):
    """Our layout: the four sample persons and garments, a pairs.csv, and a handful of bad files."""
    root = Store(str(tmp_path_factory.mktemp("catalog")))
    persons = sorted((samples_dir / "image").glob("*.jpg"))
    garments = sorted((samples_dir / "cloth").glob("*.jpg"))
    for path in persons:
        root.write_bytes(f"persons/models/{path.name}", path.read_bytes())
    for path in garments:
        root.write_bytes(f"garments/{path.name}", path.read_bytes())
    for key, make in BAD_PERSONS.items():
        root.write_bytes(f"persons/{key}", make())
    with Image.open(persons[0]) as photo:
        photo.load()
    # A partial body: the top third of a photo, no hips in it.
    root.write_bytes("persons/bad/head-and-shoulders.jpg", saved(photo.crop((0, 0, 768, 340)), "JPEG"))
    # Odd but valid encodings of a real photo: CMYK, and pixels stored sideways with an EXIF rotation.
    root.write_bytes("persons/odd/cmyk.jpg", saved(photo.convert("CMYK"), "JPEG", quality=95))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    root.write_bytes("persons/odd/sideways.jpg", saved(photo.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif))
    root.write_bytes("garments/blank.png", png_bytes(np.full((1024, 768, 3), 255, np.uint8)))
    pairs = "person,garment\n" + "".join(
        f"models/{p.name},{g.name}\n" for p, g in zip(persons, garments)
    )
    root.write_text("pairs.csv", pairs)
    return root


@pytest.fixture(scope="module")
def failed_run(catalog, tmp_path_factory, prefect_server):
    """The catalog above through the flow with the default failure threshold: (dataset, final state)."""
    from flows.preprocess import preprocess

    out = Store(str(tmp_path_factory.mktemp("dataset")))
    state = preprocess(PreprocessConfig(catalog=catalog.url, out=out.url, split="train", shard_size=3), return_state=True)
    return out, state


@pytest.fixture(scope="module")
def run(failed_run):
    out, state = failed_run
    summary = state.result(raise_on_failure=False).summary
    rows = item_view(read_run(out, "train", summary["run_id"]))
    return out, summary, {(row["kind"], row["key"]): row for row in rows}


def test_a_run_with_more_failed_items_than_the_threshold_ends_failed_with_its_counts(failed_run):
    from flows.preprocess import RunFailed

    _, state = failed_run
    failure = state.result(raise_on_failure=False)
    assert state.is_failed(), f"8 of 18 items are broken, yet the run ended {state.type}"
    assert isinstance(failure, RunFailed)
    assert "8 of 18 items failed" in state.message and "max_failed_fraction 10.0%" in state.message, state.message
    assert failure.summary["persons"]["error"] == 7 and failure.summary["garments"]["error"] == 1
    assert failure.summary["pairs"] > 0, "the good items still make a dataset"


def _logs_and_artifacts(state) -> tuple[list, list]:
    """The flow run's log records and artifacts, as the Prefect API keeps them (what the UI shows)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    return logs, artifacts


def test_each_failed_item_gets_a_warning_line_with_its_key_stage_code_and_reason(failed_run):
    logs, _ = _logs_and_artifacts(failed_run[1])
    warnings = [log.message for log in logs if log.level == 30 and log.message.startswith("failed ")]
    assert len(warnings) == 8, warnings
    for key, code in EXPECTED_CODES.items():
        assert any(f" {key} at " in line and f": {code}: " in line for line in warnings), (key, code, warnings)


def test_a_run_over_the_threshold_ends_failed_with_one_error_line_and_no_traceback(failed_run):
    logs, _ = _logs_and_artifacts(failed_run[1])
    errors = [log.message for log in logs if log.level >= 40]
    assert len(errors) == 1 and "8 of 18 items failed" in errors[0], errors
    assert not [log.message for log in logs if "Traceback" in log.message], "an expected outcome logged a traceback"
    assert failed_run[1].message.startswith("Failed: 8 of 18 items failed"), failed_run[1].message


def test_the_failed_items_are_a_table_artifact_and_the_summary_starts_with_the_verdict(failed_run):
    _, artifacts = _logs_and_artifacts(failed_run[1])
    tables = [json.loads(a.data) for a in artifacts if a.type == "table"]
    failed = next(table for table in tables if table and "error_code" in table[0] and "reason" in table[0])
    assert {row["key"] for row in failed} == set(EXPECTED_CODES) | {"blank.png"}
    assert all(row["reason"] and row["stage"] for row in failed)
    report = next(a.data for a in artifacts if a.type == "markdown")
    assert report.startswith("# Failed: 8 of 18 items failed"), report[:200]


def test_every_input_gets_exactly_one_manifest_row(run, catalog):
    _, summary, rows = run
    listed = {("person", f.key) for f in catalog.list_files("persons")} | {
        ("garment", f.key) for f in catalog.list_files("garments")
    }
    assert set(rows) == listed
    assert summary["persons"]["total"] == 13 and summary["garments"]["total"] == 5


def test_real_photos_yield_every_output(run):
    out, _, rows = run
    for (kind, key), row in rows.items():
        if key.startswith("bad/") or key == "blank.png":
            continue
        assert row["status"] == "ok", f"{kind} {key} failed: {row['error_code']}: {row['error_message']}"
        stem = row["stem"]
        if kind == "person":
            expected = [
                f"train/{contract.DIR_IMAGE}/{stem}.jpg",
                f"train/{contract.DIR_POSE_JSON}/{stem}_keypoints.json",
                f"train/{contract.DIR_POSE_IMG}/{stem}_rendered.png",
                f"train/{contract.DIR_PARSE}/{stem}.png",
                f"train/{contract.DIR_PARSE_AGNOSTIC}/{stem}.png",
                f"train/{contract.DIR_AGNOSTIC}/{stem}.jpg",
            ]
        else:
            expected = [f"train/{contract.DIR_CLOTH}/{stem}.jpg", f"train/{contract.DIR_CLOTH_MASK}/{stem}.jpg"]
        missing = [rel for rel in expected if not out.exists(rel)]
        assert not missing, f"{key}: missing {missing}"


def test_bad_inputs_get_their_error_code_and_no_outputs(run):
    out, _, rows = run
    for key, code in EXPECTED_CODES.items():
        row = rows["person", key]
        assert (row["status"], row["error_code"]) == ("error", code), f"{key}: {row['error_code']} {row['error_message']}"
        assert row["error_message"], f"{key} has no reason"
        leftovers = [rel for rel in out.fs.find(out.root) if f"/{row['stem']}" in rel]
        assert not leftovers, f"{key} left partial outputs {leftovers}"
    blank = rows["garment", "blank.png"]
    assert (blank["status"], blank["error_code"]) == ("error", "no_garment")


def test_manifest_rows_carry_provenance_and_timings(run, catalog):
    _, _, rows = run
    row = next(r for (kind, key), r in rows.items() if kind == "person" and key.startswith("models/"))
    data = catalog.read_bytes(f"persons/{row['key']}")
    assert row["sha256"] == hashlib.sha256(data).hexdigest()
    assert row["source_url"].endswith(f"persons/{row['key']}")
    assert (row["source_width"], row["source_height"]) == (768, 1024)
    assert row["parse_model"] == "geometric-v3" and row["pose_model"]
    assert row["agnostic_model"] == "hrviton"
    assert len(row["keypoint_confidences"]) == 25
    assert row["persons_detected"] >= 1
    for stage in ("ingest", "pose", "parse", "agnostic"):
        assert row[f"{stage}_ms"] > 0, f"no timing for {stage}"


def test_train_pairs_list_who_wears_what(run):
    out, _, rows = run
    lines = out.read_text("train_pairs.txt").splitlines()
    stem = {key: row["stem"] for (kind, key), row in rows.items()}
    assert len(lines) == 4
    for line in lines:
        person, cloth = line.split()
        assert out.exists(f"train/image/{person}") and out.exists(f"train/cloth/{cloth}"), line
        assert person.endswith(".jpg") and cloth.endswith(".jpg")
    assert f"{stem['models/00034_00.jpg']}.jpg" in lines[0]


def test_no_temporary_files_remain(run):
    out, _, _ = run
    assert not [path for path in out.fs.find(out.root) if ".tmp" in os.path.basename(path)]


def test_the_run_summary_is_written(run):
    out, summary, _ = run
    written = json.loads(out.read_text(f"manifests/train/run={summary['run_id']}/summary.json"))
    assert written["persons"] == summary["persons"]
    assert written["errors"]["no_person"] == 1


def test_exif_rotation_is_applied_before_anything_else(run, catalog):
    out, _, rows = run
    sideways = rows["person", "odd/sideways.jpg"]
    assert sideways["status"] == "ok", sideways["error_message"]
    assert (sideways["source_width"], sideways["source_height"]) == (768, 1024), "EXIF orientation not applied"
    first_photo = min(key for (kind, key) in rows if key.startswith("models/"))  # the one turned sideways
    original = rows["person", first_photo]
    a = np.asarray(Image.open(io.BytesIO(out.read_bytes(sideways["ingest_outputs"][0]))), dtype=np.int16)
    b = np.asarray(Image.open(io.BytesIO(out.read_bytes(original["ingest_outputs"][0]))), dtype=np.int16)
    assert np.abs(a - b).mean() < 4, "the rotated copy does not match the upright photo"


def test_a_cmyk_photo_is_converted_and_processed(run):
    row = run[2]["person", "odd/cmyk.jpg"]
    assert row["status"] == "ok", row["error_message"]


@pytest.fixture(scope="module")
def yolo_run(samples_dir, tmp_path_factory, prefect_server, yolo_weights):
    from flows.preprocess import preprocess

    catalog = Store(str(tmp_path_factory.mktemp("yolo-catalog")))
    for path in sorted((samples_dir / "image").glob("*.jpg"))[:2]:
        catalog.write_bytes(f"image/{path.name}", path.read_bytes())
    out = Store(str(tmp_path_factory.mktemp("yolo-dataset")))
    summary = preprocess(PreprocessConfig(catalog=catalog.url, out=out.url, parser=f"yolo:file://{yolo_weights}"))
    return out, summary, item_view(read_run(out, "test", summary["run_id"]))


def test_the_yolo_parser_runs_in_the_flow_and_is_named_in_the_manifest(yolo_run, yolo_weights):
    out, summary, rows = yolo_run
    digest = hashlib.sha256(yolo_weights.read_bytes()).hexdigest()[:12]
    assert summary["persons"]["ok"] == 2, summary["failed"]
    for row in rows:
        assert row["parse_model"] == f"yolo:{yolo_weights.name}:{digest}"
        with Image.open(io.BytesIO(out.read_bytes(row["parse_outputs"][0]))) as parse:
            assert parse.mode == "P" and parse.size == (768, 1024)
            assert int(np.asarray(parse).max()) <= 19


@pytest.fixture(scope="module")
def crop_run(samples_dir, tmp_path_factory, prefect_server):
    """A landscape photo (a sample person off-centre on a wide backdrop) fitted by cropping around them."""
    from flows.preprocess import preprocess

    catalog = Store(str(tmp_path_factory.mktemp("crop-catalog")))
    wide = Image.new("RGB", (1800, 1100), (205, 200, 195))
    with Image.open(sorted((samples_dir / "image").glob("*.jpg"))[1]) as person:
        wide.paste(person.resize((576, 768)), (1100, 200))
    catalog.write_bytes("persons/wide.jpg", saved(wide, "JPEG", quality=95))
    out = Store(str(tmp_path_factory.mktemp("crop-dataset")))
    summary = preprocess(PreprocessConfig(catalog=catalog.url, out=out.url, fit="crop"))
    return out, item_view(read_run(out, "test", summary["run_id"]))[0]


def test_crop_fit_keeps_the_person_and_records_the_mapping(crop_run):
    out, row = crop_run
    assert row["status"] == "ok", row["error_message"]
    fit = json.loads(row["fit"])
    assert fit["method"] == "crop"
    # The person spans x 1100..1676 of the source; the crop window must hold them.
    left = (1100 * fit["scale"]) + fit["offset_x"]
    right = (1676 * fit["scale"]) + fit["offset_x"]
    assert 0 <= left and right <= 768, f"person cut off: {left:.0f}..{right:.0f} on a 768 canvas"
    keypoints = json.loads(out.read_text(row["pose_outputs"][0]))["people"][0]["pose_keypoints_2d"]
    neck_x = keypoints[3]
    assert left <= neck_x <= right, "the neck is not on the person"


@pytest.fixture(scope="module")
def broken_store_run(samples_dir, tmp_path_factory, prefect_server):
    """The garments' output folder cannot be created (a file stands where it belongs): their shard fails."""
    from flows.preprocess import preprocess

    catalog = Store(str(tmp_path_factory.mktemp("broken-store-catalog")))
    for path in sorted((samples_dir / "image").glob("*.jpg"))[:2]:
        catalog.write_bytes(f"persons/{path.name}", path.read_bytes())
    for path in sorted((samples_dir / "cloth").glob("*.jpg"))[:2]:
        catalog.write_bytes(f"garments/{path.name}", path.read_bytes())
    out = Store(str(tmp_path_factory.mktemp("broken-store-dataset")))
    out.write_text(f"test/{contract.DIR_CLOTH}", "not a folder")
    state = preprocess(PreprocessConfig(catalog=catalog.url, out=out.url, shard_size=2), return_state=True)
    return catalog, out, state


def test_a_failed_shard_leaves_the_other_shards_finished_and_the_run_failed(broken_store_run):
    _, _, state = broken_store_run
    assert state.is_failed()
    assert "1 shard failed" in state.message and "garment-00000" in state.message, state.message
    summary = state.result(raise_on_failure=False).summary
    assert summary["persons"] == {"total": 2, "ok": 2, "error": 0}, "the person shard must finish"
    assert summary["garments"]["total"] == 0, "the failed shard's items have no rows yet"
    assert [failure["shard"] for failure in summary["failed_shards"]] == ["garment-00000"]


def test_a_shard_that_fails_on_a_permanent_storage_error_is_not_retried(broken_store_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    _, _, state = broken_store_run
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    failed = next(run for run in runs if run.name == "garment-00000")
    assert failed.run_count == 1, f"a folder that is a file is no transient error, yet it ran {failed.run_count} times"


def test_the_next_run_finishes_the_failed_shard_and_only_it(broken_store_run):
    from flows.preprocess import preprocess

    catalog, out, _ = broken_store_run
    out.remove(f"test/{contract.DIR_CLOTH}")
    summary = preprocess(PreprocessConfig(catalog=catalog.url, out=out.url, shard_size=2))
    assert summary["planned"] == {"persons": 0, "garments": 2}
    assert summary["garments"] == {"total": 2, "ok": 2, "error": 0}, summary["failed"]


@pytest.fixture(scope="module")
def collision_catalog(samples_dir, tmp_path_factory):
    """Two persons, one of whom has a name (`Model.jpg`) whose stem another file may be named after."""
    from tasks.records.catalog import stem_for_key

    catalog = Store(str(tmp_path_factory.mktemp("collision-catalog")))
    photos = sorted((samples_dir / "image").glob("*.jpg"))
    catalog.write_bytes("persons/00034_00.jpg", photos[0].read_bytes())
    catalog.write_bytes("persons/Model.jpg", photos[1].read_bytes())
    return catalog, f"{stem_for_key('Model.jpg')}.jpg"


def test_keys_that_share_a_stem_get_error_rows_and_the_rest_run(collision_catalog, tmp_path, samples_dir, prefect_server):
    from flows.preprocess import preprocess

    catalog, impostor = collision_catalog
    catalog.write_bytes(f"persons/{impostor}", sorted((samples_dir / "image").glob("*.jpg"))[2].read_bytes())
    try:
        summary = preprocess(PreprocessConfig(catalog=catalog.url, out=str(tmp_path)), policy=RunPolicy(max_failed_fraction=1.0))
    finally:
        catalog.remove(f"persons/{impostor}")
    codes = {failure["key"]: failure["error_code"] for failure in summary["failed"]}
    assert codes == {"Model.jpg": "stem_collision", impostor: "stem_collision"}
    assert summary["persons"] == {"total": 3, "ok": 1, "error": 2}


def test_a_new_key_with_a_stem_already_held_is_refused_and_the_holder_keeps_its_outputs(
    collision_catalog, tmp_path, samples_dir, prefect_server
):
    from flows.preprocess import preprocess

    catalog, impostor = collision_catalog
    first = preprocess(PreprocessConfig(catalog=catalog.url, out=str(tmp_path)))
    assert first["persons"]["ok"] == 2
    out = Store(str(tmp_path))
    held = {info.key: out.read_bytes(info.key) for info in out.list_files() if "model" in info.key}
    catalog.write_bytes(f"persons/{impostor}", sorted((samples_dir / "image").glob("*.jpg"))[2].read_bytes())
    try:
        again = preprocess(PreprocessConfig(catalog=catalog.url, out=str(tmp_path)), policy=RunPolicy(max_failed_fraction=1.0))
    finally:
        catalog.remove(f"persons/{impostor}")
    assert [(f["key"], f["error_code"]) for f in again["failed"]] == [(impostor, "stem_collision")]
    assert again["dataset"]["persons"] == 2
    assert held and {path: out.read_bytes(path) for path in held} == held, "the holder's outputs changed"


def test_a_broken_pairs_file_fails_the_run_before_any_image_is_processed(samples_dir, tmp_path, prefect_server):
    from flows.preprocess import preprocess

    catalog = Store(str(tmp_path / "catalog"))
    catalog.write_bytes("persons/00034_00.jpg", (samples_dir / "image" / "00034_00.jpg").read_bytes())
    catalog.write_bytes("garments/04469_00.jpg", (samples_dir / "cloth" / "04469_00.jpg").read_bytes())
    catalog.write_text("pairs.csv", "person,garment\n00034_00.jpg,04469_00.jpg\n00034_00.jpg\n")
    state = preprocess(PreprocessConfig(catalog=catalog.url, out=str(tmp_path / "dataset")), return_state=True)
    assert state.is_failed()
    assert "pairs.csv:3" in state.message, state.message
    assert not (tmp_path / "dataset" / "test").exists(), "images were processed before the pairs file was read"
