"""The preprocess flow end to end, under a real (temporary) Prefect server, on real photos and bad inputs."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from tasks import contract
from tasks.manifest import read_run
from tasks.storage import Store

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
}
EXPECTED_CODES = {
    "bad/empty.jpg": "empty_file",
    "bad/not-an-image.jpg": "not_an_image",
    "bad/truncated.jpg": "truncated_image",
    "bad/tiny.png": "image_too_small",
    "bad/nobody.jpg": "no_person",
}


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
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
    root.write_bytes("garments/blank.png", png_bytes(np.full((1024, 768, 3), 255, np.uint8)))
    pairs = "person,garment\n" + "".join(
        f"models/{p.name},{g.name}\n" for p, g in zip(persons, garments)
    )
    root.write_text("pairs.csv", pairs)
    return root


@pytest.fixture(scope="module")
def run(catalog, tmp_path_factory, prefect_server):
    from flows.preprocess import preprocess

    out = Store(str(tmp_path_factory.mktemp("dataset")))
    summary = preprocess(catalog=catalog.url, out=out.url, split="train", shard_size=3)
    rows = read_run(out, "train", summary["run_id"]).to_pylist()
    return out, summary, {(row["kind"], row["key"]): row for row in rows}


def test_every_input_gets_exactly_one_manifest_row(run, catalog):
    _, summary, rows = run
    listed = {("person", f.key) for f in catalog.list_files("persons")} | {
        ("garment", f.key) for f in catalog.list_files("garments")
    }
    assert set(rows) == listed
    assert summary["persons"]["total"] == 9 and summary["garments"]["total"] == 5


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
    import hashlib

    assert row["sha256"] == hashlib.sha256(data).hexdigest()
    assert row["source_url"].endswith(f"persons/{row['key']}")
    assert (row["source_width"], row["source_height"]) == (768, 1024)
    assert row["parser_id"] == "geometric-v1" and row["pose_model"]
    assert row["agnostic_recipe"] == "hrviton"
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
