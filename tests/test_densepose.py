"""The densepose stage (tasks/stages/densepose.py): HR-VITON's `image-densepose/<person>.jpg`.

The rendering rule is checked against the dataset's own render (`../shared/groundtruth/vitonhd/image-densepose/`);
the stage runs on a real sample photo through the planner and the shard engine as a run does (without Prefect),
and a user's own render in `image-densepose/` is never overwritten or removed.
"""

from __future__ import annotations

import io
import itertools
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.engine.run_plan import open_catalog, plan_run
from tasks.engine.shard import USER_PROVIDED, ShardRun, process_shard
from tasks.records.catalog import PERSON
from tasks.records.config import Selection
from tasks.stages.densepose import decode_densepose, encode_densepose, is_ours, palette, render_densepose
from tasks.stages.densepose_geometric import PARSER_ID
from tasks.stages.image_codec import encode_jpeg, sign_jpeg, signed_by
from tasks.stages.model_cache import Weights
from tasks.stages.registry import Output, PreprocessConfig, Stage, _check, active_stages, per_item, stage_fingerprints
from tests.conftest import PROJECT_ROOT
from vitonhd_models.contract import DENSEPOSE_NUM_PARTS, IMAGE_HEIGHT, IMAGE_WIDTH, DensePosePart

GROUND_TRUTH = PROJECT_ROOT.parent / "shared" / "groundtruth" / "vitonhd" / "image-densepose" / "00006_00.jpg"
PHOTO = "00034_00.jpg"
RENDER = f"test/image-densepose/{PHOTO}"  # HR-VITON opens image-densepose/<the person's file name>


def jpeg_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


# ---------------------------------------------------------------------------------------------
# The colours: OpenCV's COLORMAP_PARULA of I * 255 / 24 on black


def test_the_palette_is_parula_of_the_part_index_scaled_to_255_on_black():
    import cv2

    colours = palette()
    assert colours.shape == (DENSEPOSE_NUM_PARTS + 1, 3) and colours[0].tolist() == [0, 0, 0]
    for part in range(1, DENSEPOSE_NUM_PARTS + 1):
        level = np.array([[int(part * 255 / 24)]], np.uint8)  # as uint8, the dataset's rule
        bgr = cv2.applyColorMap(level, cv2.COLORMAP_PARULA)[0, 0]
        assert colours[part].tolist() == bgr[::-1].tolist(), part
    # by hand from OpenCV's table: I = 24 -> level 255 (yellow), I = 2 -> level 21 (blue)
    assert colours[24].tolist() == [249, 251, 14] and colours[2].tolist() == [20, 80, 194]


def test_every_part_renders_to_its_colour_and_decodes_back_exactly():
    parts = np.arange(DENSEPOSE_NUM_PARTS + 1, dtype=np.uint8).reshape(5, 5)
    rendered = render_densepose(parts)
    assert rendered.dtype == np.uint8 and rendered.shape == (5, 5, 3)
    assert rendered[0, 0].tolist() == [0, 0, 0], "no body is black"
    np.testing.assert_array_equal(decode_densepose(rendered), parts)


def test_a_part_index_out_of_range_is_refused():
    with pytest.raises(ValueError, match="0..24"):
        render_densepose(np.full((2, 2), 25, np.uint8))


def test_the_datasets_own_render_is_exactly_this_rule_up_to_jpeg_noise():
    """Decode the dataset's render by the nearest of the 25 colours, draw it again: the same image, but for
    JPEG's noise along the parts' edges."""
    if not GROUND_TRUTH.is_file():
        pytest.skip(f"the dataset's render is not at {GROUND_TRUTH} (it lives in ../shared)")
    theirs = jpeg_rgb(GROUND_TRUTH.read_bytes())
    parts = decode_densepose(theirs)
    error = np.abs(render_densepose(parts).astype(int) - theirs.astype(int)).max(axis=2)
    body = parts > 0
    assert np.median(error) == 0 and np.median(error[body]) <= 2, "not the dataset's colours"
    assert (error[body] <= 8).mean() > 0.9, "more than edge noise differs"
    assert {DensePosePart.TORSO_FRONT, DensePosePart.RIGHT_HEAD, DensePosePart.LEFT_HEAD} <= set(np.unique(parts))
    ours = jpeg_rgb(encode_densepose(parts)[0])
    assert (decode_densepose(ours) == parts).mean() > 0.98, "our JPEG does not decode to the parts it drew"


# ---------------------------------------------------------------------------------------------
# Which files are ours: signed JPEGs


def test_our_files_are_signed_and_anyone_elses_are_not():
    parts = np.zeros((64, 48), np.uint8)
    parts[10:50, 10:40] = DensePosePart.TORSO_FRONT
    [ours] = encode_densepose(parts)
    assert is_ours(ours) and jpeg_rgb(ours).shape == (64, 48, 3)
    theirs = encode_jpeg(render_densepose(parts))  # the same picture, another writer
    assert not is_ours(theirs)
    with Image.open(io.BytesIO(ours)) as image:  # an edit saved with PIL keeps the comment, not the signature
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=95)
    assert b"vitonprep" in buffer.getvalue() and not is_ours(buffer.getvalue())
    flipped = bytearray(ours)
    flipped[-10] ^= 0xFF
    assert not is_ours(bytes(flipped)) and not is_ours(ours[:-1]) and not is_ours(b"") and not is_ours(b"\x89PNG")
    assert not signed_by(sign_jpeg(theirs, "agnostic"), "densepose"), "the signature names the stage"
    if GROUND_TRUTH.is_file():
        assert not is_ours(GROUND_TRUTH.read_bytes()), "detectron2's render is not ours"


def test_a_stage_may_not_read_a_stage_whose_files_may_be_a_users():
    def stage(name: str, reads: tuple[str, ...], outputs: tuple[Output, ...]) -> Stage:
        return Stage(name=name, kind=PERSON, version=1, reads=reads, outputs=outputs, run=per_item(lambda env, item: 0),
                     encode=lambda value: (), fields=lambda env, value: {}, params=lambda config, weights: {},
                     load=lambda work, files: 0)

    guarded = stage("ingest", (), (Output("x", str, ours=is_ours),))
    with pytest.raises(ValueError, match="may be a user's"):
        _check([guarded, stage("pose", ("ingest",), ())])


# ---------------------------------------------------------------------------------------------
# The stage's variants and fingerprints


def test_none_is_a_variant_that_writes_nothing_and_reruns_only_densepose():
    geometric = PreprocessConfig(catalog="c", out="o")
    none = PreprocessConfig(catalog="c", out="o", densepose="none")
    [chosen] = [stage for stage in active_stages(none, PERSON) if stage.name == "densepose"]
    assert chosen.outputs == () and chosen.encode(None) == ()
    before, after = stage_fingerprints(geometric, Weights()), stage_fingerprints(none, Weights())
    assert after[PERSON].pop("densepose") == "151cbd699ceed7b3" and before[PERSON].pop("densepose") == "e41a5cb413e6de03"
    assert before == after, "switching it reruns no other stage"
    with pytest.raises(ValueError):
        PreprocessConfig(catalog="c", out="o", densepose="detectron2")


# ---------------------------------------------------------------------------------------------
# Runs: the planner and the shard engine as the flow calls them, one shard, no Prefect

RUN_NUMBERS = itertools.count(1)


def run(catalog: Path | str, out: Path | str, full_refresh: bool = False, method: str | None = None,
        **options) -> dict[str, dict]:
    """One run over the catalog (`tasks.engine.run_plan`'s plan, one person shard): its rows by stage. `method`
    stands for a new DensePose method: the stage's fingerprint changes, nothing else."""
    config = PreprocessConfig(catalog=str(catalog), out=str(out), workers=0, **options)
    catalog_run = open_catalog(config, Selection(full_refresh=full_refresh), f"20260101T{next(RUN_NUMBERS):06d}Z-test00")
    if method is not None:
        fingerprints = {**catalog_run.fingerprints, PERSON: {**catalog_run.fingerprints[PERSON], "densepose": method}}
        catalog_run = replace(catalog_run, fingerprints=fingerprints)
    plan = plan_run(catalog_run)
    shard = ShardRun(catalog_run.run_id, catalog_run.fingerprints, catalog_run.weights)
    rows = process_shard(config, shard, "person-00000", plan.works[PERSON])
    return {row["stage"]: row for row in rows}


@pytest.fixture()
def catalog(tmp_path, samples_dir) -> Path:
    root = tmp_path / "catalog"
    (root / "persons").mkdir(parents=True)
    (root / "garments").mkdir()
    (root / "persons" / PHOTO).write_bytes((samples_dir / "image" / PHOTO).read_bytes())
    return root


def users_render() -> bytes:
    """A render of the user's own (detectron2's, say): the dataset's colours, not written by us."""
    if GROUND_TRUTH.is_file():
        return GROUND_TRUTH.read_bytes()
    parts = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH), np.uint8)
    parts[200:900, 250:520] = DensePosePart.TORSO_FRONT
    return encode_jpeg(render_densepose(parts))


def photo_of_nobody() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (IMAGE_WIDTH, IMAGE_HEIGHT), (90, 140, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_the_stage_writes_the_persons_render_as_hrviton_reads_it(catalog, tmp_path):
    out = tmp_path / "dataset"
    rows = run(catalog, out)
    row = rows["densepose"]
    assert row["status"] == "ok" and row["model"] == PARSER_ID and row["outputs"] == [RENDER]
    data = (out / RENDER).read_bytes()
    assert is_ours(data)
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (IMAGE_WIDTH, IMAGE_HEIGHT))
    drawn = jpeg_rgb(data)
    parts = decode_densepose(drawn)
    error = np.abs(render_densepose(parts).astype(int) - drawn.astype(int)).max(axis=2)
    assert np.median(error) == 0, "not PARULA on black"
    assert parts[0, 0] == parts[0, -1] == 0, "the corners are no body"
    found = set(np.unique(parts).tolist())
    assert {DensePosePart.TORSO_FRONT, DensePosePart.LEFT_HEAD, DensePosePart.RIGHT_HEAD} <= found, found


def test_hrvitons_loaders_open_our_render_as_they_open_the_datasets(catalog, tmp_path):
    """cp_dataset.py (train): ('image/' + name).replace('image', 'image-densepose') under <dataroot>/<datamode>;
    cp_dataset_test.py: image-densepose/<name.replace('image', 'image-densepose')>. Both: Image.open, no convert,
    Resize(fine_width, bilinear), ToTensor, Normalize with three means."""
    from torchvision import transforms

    out = tmp_path / "dataset"
    run(catalog, out)
    data_path = os.path.join(str(out), "test")
    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    train_path = os.path.join(data_path, ("image/" + PHOTO).replace("image", "image-densepose"))
    test_path = os.path.join(data_path, "image-densepose", PHOTO.replace("image", "image-densepose"))
    assert train_path == test_path == str(out / RENDER)
    for fine_width, fine_height in ((768, 1024), (192, 256)):  # the generator's size, the condition generator's
        tensor = to_tensor(transforms.Resize(fine_width, interpolation=2)(Image.open(train_path)))
        assert tuple(tensor.shape) == (3, fine_height, fine_width)
        assert -1.0 <= float(tensor.min()) and float(tensor.max()) <= 1.0


def test_a_users_render_is_kept_through_a_first_run_a_rerun_a_new_method_a_full_refresh_and_a_failure(
        catalog, tmp_path):
    out = tmp_path / "dataset"
    theirs = users_render()
    (out / "test" / "image-densepose").mkdir(parents=True)
    (out / RENDER).write_bytes(theirs)

    rows = run(catalog, out)  # the first run
    row = rows["densepose"]
    assert row["status"] == "ok" and row["model"] == USER_PROVIDED and row["outputs"] == []
    assert json.loads(row["details"])["kept"] == [RENDER]
    assert {stage: r["status"] for stage, r in rows.items()} == dict.fromkeys(rows, "ok")
    assert (out / "test" / "image-parse-v3" / "00034_00.png").is_file(), "the other stages wrote theirs"
    assert (out / RENDER).read_bytes() == theirs

    assert run(catalog, out) == {}, "an unchanged rerun does nothing"
    assert run(catalog, out, method="a-new-method")["densepose"]["model"] == USER_PROVIDED
    refreshed = run(catalog, out, full_refresh=True)
    assert set(refreshed) == {"ingest", "pose", "pose_gate", "parse", "agnostic", "densepose"}
    assert refreshed["densepose"]["model"] == USER_PROVIDED
    assert (out / RENDER).read_bytes() == theirs

    (catalog / "persons" / PHOTO).write_bytes(photo_of_nobody())  # the photo changes: the item fails
    failed = run(catalog, out)
    assert failed["pose"]["error_code"] == "no_person" and "densepose" not in failed, "its rows say where it failed"
    assert not (out / "test" / "image" / PHOTO).exists(), "a failed item's outputs of ours are removed"
    assert (out / RENDER).read_bytes() == theirs, "the user's render is not"


def test_a_render_of_ours_is_rewritten_by_a_new_method_and_removed_with_a_failed_item(catalog, tmp_path):
    out = tmp_path / "dataset"
    run(catalog, out)
    first = (out / RENDER).stat().st_ino
    rows = run(catalog, out, method="a-new-method")
    assert set(rows) == {"densepose"}, "a new method reruns that stage alone"
    assert rows["densepose"]["model"] == PARSER_ID and rows["densepose"]["outputs"] == [RENDER]
    assert (out / RENDER).stat().st_ino != first and is_ours((out / RENDER).read_bytes()), "not written again"

    (catalog / "persons" / PHOTO).write_bytes(photo_of_nobody())
    assert run(catalog, out)["pose"]["error_code"] == "no_person"
    assert not (out / RENDER).exists(), "a render of ours goes with its failed item"


def test_a_users_render_put_in_place_of_ours_after_a_run_is_kept(catalog, tmp_path):
    out = tmp_path / "dataset"
    run(catalog, out)
    theirs = users_render()
    (out / RENDER).write_bytes(theirs)  # the manifest still says the file is ours: its bytes say otherwise
    assert run(catalog, out, method="a-new-method")["densepose"]["model"] == USER_PROVIDED
    assert run(catalog, out, full_refresh=True)["densepose"]["model"] == USER_PROVIDED
    assert (out / RENDER).read_bytes() == theirs
    (out / RENDER).unlink()  # the user takes theirs away: the planner sees it missing, and we draw ours
    assert run(catalog, out)["densepose"]["model"] == PARSER_ID and is_ours((out / RENDER).read_bytes())


def test_none_writes_nothing_says_so_and_removes_a_render_of_ours_but_never_a_users(catalog, tmp_path):
    out = tmp_path / "dataset"
    run(catalog, out)
    assert (out / RENDER).is_file()
    rows = run(catalog, out, densepose="none")
    assert set(rows) == {"densepose"}, "switching to none reruns nothing else"
    assert rows["densepose"]["status"] == "ok" and rows["densepose"]["model"] == "none"
    assert rows["densepose"]["outputs"] == []
    assert not (out / RENDER).exists(), "a render of ours from before would no longer match the dataset"
    assert run(catalog, out, densepose="none") == {}, "with none, the missing render is not missing"

    theirs = users_render()
    (out / RENDER).write_bytes(theirs)
    assert run(catalog, out, densepose="none", full_refresh=True)["densepose"]["model"] == "none"
    assert (out / RENDER).read_bytes() == theirs


def test_something_there_that_cannot_be_read_is_left_alone_without_blocking(catalog, tmp_path):
    out = tmp_path / "dataset"
    (out / "test" / "image-densepose").mkdir(parents=True)
    os.mkfifo(out / RENDER)  # no writer: a plain read would block forever
    assert run(catalog, out)["densepose"]["model"] == USER_PROVIDED
    assert (out / RENDER).is_fifo()


def test_on_object_storage_a_users_render_is_kept_and_once_it_is_gone_ours_is_drawn(s3, samples_dir):
    s3.put(f"catalog/persons/{PHOTO}", (samples_dir / "image" / PHOTO).read_bytes())
    theirs = users_render()
    s3.put(f"dataset/{RENDER}", theirs)
    options = {"storage_options": s3.storage_options}
    assert run(s3.url("catalog"), s3.url("dataset"), **options)["densepose"]["model"] == USER_PROVIDED
    assert s3.get(f"dataset/{RENDER}") == theirs
    s3.client.delete_object(Bucket=s3.name, Key=f"dataset/{RENDER}")
    rows = run(s3.url("catalog"), s3.url("dataset"), **options)
    assert set(rows) == {"densepose"} and rows["densepose"]["model"] == PARSER_ID
    assert is_ours(s3.get(f"dataset/{RENDER}"))


def test_none_on_a_new_dataset_writes_no_densepose_folder(catalog, tmp_path):
    out = tmp_path / "dataset"
    rows = run(catalog, out, densepose="none")
    assert rows["densepose"]["model"] == "none" and rows["agnostic"]["status"] == "ok"
    assert not (out / "test" / "image-densepose").exists()


# ---------------------------------------------------------------------------------------------
# `vitonprep validate` on a dataset just made, with and without our renders (the flow, a temporary Prefect API)


@pytest.mark.slow
def test_validate_passes_both_targets_and_with_none_says_what_to_add(samples_dir, tmp_path, prefect_server):
    from flows.preprocess import preprocess
    from tasks.infra.store import Store
    from tasks.tools.validate import validate_dataset

    catalog = tmp_path / "catalog"
    for folder, name in (("image", PHOTO), ("cloth", "04469_00.jpg")):
        (catalog / folder).mkdir(parents=True)
        (catalog / folder / name).write_bytes((samples_dir / folder / name).read_bytes())
    out = tmp_path / "dataset"
    preprocess(PreprocessConfig(catalog=str(catalog), out=str(out), densepose="none"))
    report = validate_dataset(Store(str(out)), workers=2)
    assert report.verdicts()["vitonhd"]["ok"], report.format_text()
    assert report.verdicts()["hrviton"]["codes"] == {"densepose_missing": 1}, report.format_text()
    [problem] = [p for p in report.problems if p.code == "densepose_missing"]
    assert "--densepose geometric" in problem.message and "dp_segm" in problem.message, problem.message

    preprocess(PreprocessConfig(catalog=str(catalog), out=str(out)))  # the default draws them
    report = validate_dataset(Store(str(out)), workers=2)
    assert report.ok and all(verdict["ok"] for verdict in report.verdicts().values()), report.format_text()
