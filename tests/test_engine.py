"""The stage registry (tasks/stages/registry.py), the shard engine (tasks/engine/shard.py) and its worker processes
(tasks/engine/workers.py), without Prefect.

The passes here run the real stages on real photos in real worker processes; hostile sources are
real files (FIFOs, devices, broken symlinks) or a real fsspec filesystem that refuses a read.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import signal
import socket
import stat
import threading
import time
from pathlib import Path

import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from PIL import Image

from tasks.engine.plan import plan_catalog
from tasks.engine.shard import ShardRun, process_shard, read_source, schedule_of, segments_of
from tasks.engine.workers import SOURCE, Job, prepare_models, run_job, worker_pool
from tasks.infra.store import Store
from tasks.records.catalog import GARMENT, PERSON, WorkItem, detect_catalog_layout, list_items
from tasks.records.config import Selection
from tasks.records.manifest import manifest_part_path, read_run
from tasks.stages.model_cache import Weights
from tasks.stages.registry import (
    STAGES,
    PreprocessConfig,
    active_stages,
    outputs_of,
    resolve_weights,
    stage_fingerprints,
    stages_for,
)
from vitonhd_models import contract, errors
from vitonhd_models.errors import ItemError

# ---------------------------------------------------------------------------------------------
# The registry


def test_the_manifest_stage_lists_come_from_the_registry():
    assert stages_for(PERSON) == ("ingest", "pose", "pose_gate", "parse", "agnostic", "densepose")
    assert stages_for(GARMENT) == ("ingest", "cloth_mask")


def test_every_stage_reads_only_stages_declared_before_it_for_its_kind():
    for stage in STAGES:
        earlier = stages_for(stage.kind)[: stages_for(stage.kind).index(stage.name)]
        assert set(stage.reads) <= set(earlier), f"{stage.kind} {stage.name} reads {stage.reads}"


def test_output_paths_are_every_file_the_stages_declare():
    assert list(outputs_of("train", PERSON, "s")) == [
        "train/image/s.jpg",
        "train/openpose_json/s_keypoints.json",
        "train/openpose_img/s_rendered.png",
        "_work/train/pose/s.npz",
        "train/image-parse-v3/s.png",
        "train/image-parse-agnostic-v3.2/s.png",
        "train/agnostic-v3.2/s.jpg",
        "train/image-densepose/s.jpg",
    ]
    assert list(outputs_of("test", GARMENT, "g")) == ["test/cloth/g.jpg", "test/cloth-mask/g.jpg"]


def test_the_default_fingerprints_are_the_ones_existing_datasets_hold():
    """sha256 of {"stage", "version": 1, params} as the v1 planner wrote them: a dataset made before the
    registry must not rerun anything after it (the pose gate is new: it runs once, from the pose sidecars;
    the geometric parser's v2, with skirts, and v3, closer to the dataset's own maps, rerun parse and
    agnostic once; the pose's torso visibility threshold reruns pose and what follows once, so the photos
    it refused for their hips are tried again; the classical cloth mask v2 reruns the cloth masks once; the
    densepose stage is new: it runs once for every person, from the files earlier runs wrote)."""
    fingerprints = stage_fingerprints(PreprocessConfig(catalog="c", out="o"), Weights())
    assert fingerprints == {
        PERSON: {"ingest": "18c7943c8482b5dd", "pose": "bb73ff87e709ec7b", "pose_gate": "86304020dfacdaac",
                 "parse": "55d7f76477a9d4b3", "agnostic": "1f994aa8060e8244", "densepose": "e41a5cb413e6de03"},
        GARMENT: {"ingest": "18c7943c8482b5dd", "cloth_mask": "6a0d21abffd2f22e"},
    }


def test_runtime_settings_are_not_part_of_any_fingerprint():
    base = PreprocessConfig(catalog="c", out="o")
    tuned = base.model_copy(update={"workers": 7, "parse_batch_size": 32, "shard_size": 3, "max_source_bytes": 10,
                                     "cloth_mask_batch_size": 5})
    assert stage_fingerprints(base, Weights()) == stage_fingerprints(tuned, Weights())


def test_the_geometric_parser_runs_per_item_with_the_other_cpu_stages():
    segments = segments_of(PreprocessConfig(catalog="c", out="o"), PERSON)
    assert [(s.names, s.batch_size) for s in segments] == [
        (("ingest", "pose", "pose_gate", "parse", "agnostic", "densepose"), None)]


def test_the_yolo_parser_runs_over_batches_between_the_per_item_stages():
    config = PreprocessConfig(catalog="c", out="o", parser="yolo:/w.pt", parse_batch_size=16)
    segments = segments_of(config, PERSON)
    assert [(s.names, s.batch_size) for s in segments] == [
        (("ingest", "pose", "pose_gate"), None), (("parse",), 16), (("agnostic", "densepose"), None)]
    [parse] = [stage for stage in active_stages(config, PERSON) if stage.name == "parse"]
    assert parse.reads == ("ingest",), "YOLO reads no pose"


def test_the_unet_cloth_mask_runs_over_batches_after_ingest_and_the_classical_one_per_item():
    unet = PreprocessConfig(catalog="c", out="o", cloth_mask_model="/cloth_unet.pt", cloth_mask_batch_size=4)
    assert [(s.names, s.batch_size) for s in segments_of(unet, GARMENT)] == [(("ingest",), None), (("cloth_mask",), 4)]
    classical = PreprocessConfig(catalog="c", out="o")
    assert [(s.names, s.batch_size) for s in segments_of(classical, GARMENT)] == [(("ingest", "cloth_mask"), None)]


# ---------------------------------------------------------------------------------------------
# Which stages run for an item

PERSON_STAGES = active_stages(PreprocessConfig(catalog="c", out="o"), PERSON)
ALL = ("ingest", "pose", "pose_gate", "parse", "agnostic", "densepose")


@pytest.mark.parametrize(
    ("planned", "source_runs", "expected"),
    [
        ({"ingest", "pose", "pose_gate", "parse", "agnostic", "densepose"}, True, ALL),
        ({"parse"}, False, ("parse", "agnostic", "densepose")),  # a new parser
        ({"pose"}, False, ("pose", "pose_gate", "parse", "agnostic", "densepose")),  # a new visibility threshold
        ({"pose_gate"}, False, ("pose_gate",)),  # new gate thresholds: no pose, parse or agnostic again
        ({"agnostic"}, False, ("agnostic",)),  # a new agnostic recipe
        ({"densepose"}, False, ("densepose",)),  # a new DensePose method: that stage alone
        (set(), True, ALL),  # touched, and the bytes changed
        (set(), False, ()),  # touched, the bytes did not change: nothing reruns
        ({"parse"}, True, ALL),  # new parser and new bytes
    ],
    ids=["new", "parser", "pose", "gate", "recipe", "densepose", "bytes-changed", "bytes-same", "both"],
)
def test_a_stage_runs_when_planned_or_when_a_stage_it_reads_runs(planned, source_runs, expected):
    assert schedule_of(PERSON_STAGES, frozenset(planned), source_runs) == expected


# ---------------------------------------------------------------------------------------------
# Reading a source: every way it can fail is that item's error, and nothing blocks


def work_for(store: Store, rel: str, kind: str = PERSON) -> WorkItem:
    from tasks.records.catalog import CatalogItem, stem_for_key

    size = os.path.getsize(store.path(rel)) if store.is_local and os.path.isfile(store.path(rel)) else 0
    key = rel.split("/", 1)[1]
    return WorkItem(CatalogItem(kind, key, rel, store.url_of(rel), size, stem_for_key(key)), frozenset(stages_for(kind)))


def source_error(store: Store, rel: str, max_bytes: int = 1 << 20) -> str:
    with pytest.raises(ItemError) as caught:
        read_source(store, work_for(store, rel), max_bytes)
    assert caught.value.message, "an error row needs a reason"
    return caught.value.code


def test_a_fifo_named_like_a_photo_is_refused_without_blocking(tmp_path):
    (tmp_path / "persons").mkdir()
    os.mkfifo(tmp_path / "persons" / "pipe.jpg")  # no writer: a plain open() would block forever
    assert source_error(Store(str(tmp_path)), "persons/pipe.jpg") == errors.SOURCE_NOT_A_FILE


def test_a_device_named_like_a_photo_is_refused_without_reading_it(tmp_path):
    (tmp_path / "persons").mkdir()
    os.mknod(tmp_path / "persons" / "zero.jpg", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero: endless bytes
    assert source_error(Store(str(tmp_path)), "persons/zero.jpg") == errors.SOURCE_NOT_A_FILE


def test_a_socket_named_like_a_photo_is_refused(tmp_path):
    (tmp_path / "persons").mkdir()
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "persons" / "socket.jpg"))
        assert source_error(Store(str(tmp_path)), "persons/socket.jpg") == errors.SOURCE_NOT_A_FILE


def test_a_symlink_out_of_the_catalog_is_refused_and_nothing_of_its_target_shows(tmp_path):
    (tmp_path / "persons").mkdir()
    secret = tmp_path.parent / f"{tmp_path.name}-secret.txt"
    secret.write_text("the host's secret\n")
    (tmp_path / "persons" / "leak.jpg").symlink_to(secret)
    (tmp_path / "persons" / "zero.jpg").symlink_to("/dev/zero")
    store = Store(str(tmp_path))
    for name in ("leak.jpg", "zero.jpg"):
        with pytest.raises(ItemError) as caught:
            read_source(store, work_for(store, f"persons/{name}"), 1 << 20)
        assert caught.value.code == errors.OUTSIDE_ROOT
        assert "secret" not in caught.value.message.replace(str(secret), "")


def test_a_symlink_within_the_catalog_is_followed(tmp_path):
    store = Store(str(tmp_path))
    store.write_bytes("persons/real.jpg", b"photo")
    (tmp_path / "persons" / "alias.jpg").symlink_to(tmp_path / "persons" / "real.jpg")
    assert read_source(store, work_for(store, "persons/alias.jpg"), 1 << 20) == b"photo"


def test_a_dangling_symlink_is_a_missing_source(tmp_path):
    (tmp_path / "persons").mkdir()
    (tmp_path / "persons" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    assert source_error(Store(str(tmp_path)), "persons/gone.jpg") == errors.SOURCE_MISSING


def test_a_symlink_loop_is_an_unreadable_source(tmp_path):
    (tmp_path / "persons").mkdir()
    (tmp_path / "persons" / "a.jpg").symlink_to(tmp_path / "persons" / "b.jpg")
    (tmp_path / "persons" / "b.jpg").symlink_to(tmp_path / "persons" / "a.jpg")
    store = Store(str(tmp_path))
    assert source_error(store, "persons/a.jpg") == errors.SOURCE_UNREADABLE


def test_a_source_removed_after_listing_is_a_missing_source(tmp_path):
    store = Store(str(tmp_path))
    store.write_bytes("persons/brief.jpg", b"x" * 10)
    work = work_for(store, "persons/brief.jpg")
    os.remove(tmp_path / "persons" / "brief.jpg")
    with pytest.raises(ItemError) as caught:
        read_source(store, work, 1 << 20)
    assert caught.value.code == errors.SOURCE_MISSING


def test_a_source_listed_larger_than_the_limit_is_not_read(tmp_path):
    store = Store(str(tmp_path))
    store.write_bytes("persons/huge.jpg", b"x" * 2000)
    assert source_error(store, "persons/huge.jpg", max_bytes=1000) == errors.SOURCE_TOO_LARGE


def test_a_source_that_grew_past_the_limit_after_listing_is_read_no_further(tmp_path):
    store = Store(str(tmp_path))
    store.write_bytes("persons/grows.jpg", b"x" * 10)
    work = work_for(store, "persons/grows.jpg")
    (tmp_path / "persons" / "grows.jpg").write_bytes(b"x" * 5000)
    with pytest.raises(ItemError) as caught:
        read_source(store, work, 1000)
    assert caught.value.code == errors.SOURCE_TOO_LARGE


class RefusingFileSystem(MemoryFileSystem):
    """An in-memory filesystem whose objects with 'denied' in their name refuse to be read (HTTP 403-like)."""

    protocol = "refusing"

    def cat_file(self, path, start=None, end=None, **kwargs):
        if "denied" in path:
            raise PermissionError(13, "Permission denied", path)
        return super().cat_file(path, start=start, end=end, **kwargs)


def test_a_source_the_store_refuses_to_read_is_that_items_error():
    fsspec.register_implementation("refusing", RefusingFileSystem, clobber=True)
    store = Store("refusing://catalog-refuses")
    store.write_bytes("persons/denied.jpg", b"secret")
    store.write_bytes("persons/fine.jpg", b"fine")
    items = {item.key: item for item in list_items(store, detect_catalog_layout(store), PERSON)}
    with pytest.raises(ItemError) as caught:
        read_source(store, WorkItem(items["denied.jpg"], frozenset()), 1 << 20)
    assert caught.value.code == errors.SOURCE_PERMISSION_DENIED
    assert "secret" not in caught.value.message
    assert read_source(store, WorkItem(items["fine.jpg"], frozenset()), 1 << 20) == b"fine"


# ---------------------------------------------------------------------------------------------
# A stage's result is what its files load back to (so a partial rerun sees what a full run saw)


@pytest.fixture(scope="module")
def sample_results(samples_dir):
    """One person and one garment through every stage, inline: (config, {kind: (work, JobResult)})."""
    config = PreprocessConfig(catalog="-", out="-", workers=0)
    results = {}
    for kind, path in ((PERSON, samples_dir / "image" / "00034_00.jpg"), (GARMENT, samples_dir / "cloth" / "04469_00.jpg")):
        from tasks.records.catalog import CatalogItem

        work = WorkItem(CatalogItem(kind, path.name, path.name, str(path), path.stat().st_size, path.stem),
                        frozenset(stages_for(kind)))
        names = stages_for(kind)
        job = Job(work, names, (), {}, {SOURCE: path.read_bytes()}, keep=names)  # keep: every result back
        result = run_job(config, Weights(), job)
        assert not result.failed, result.fields
        results[kind] = (work, result)
    return config, results


def same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if hasattr(a, "__dataclass_fields__"):
        return all(same(getattr(a, name), getattr(b, name)) for name in a.__dataclass_fields__ if name != "jpeg")
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("kind", [PERSON, GARMENT])
def test_every_loadable_stage_result_is_what_its_written_files_load_back_to(sample_results, kind):
    config, results = sample_results
    work, result = results[kind]
    previous_fit = result.fields["ingest"]["fit"]
    for stage in active_stages(config, kind):
        if stage.load is None:
            continue
        files = tuple(result.files[path] for path in stage.load_paths(config.split, work.stem))
        loaded = stage.load(WorkItem(work.item, frozenset(), previous_fit=previous_fit), files)
        assert same(result.values[stage.name], loaded), f"{kind} {stage.name}: the loaded result differs"


def test_a_job_writes_every_declared_output_of_every_stage(sample_results):
    config, results = sample_results
    for kind, (work, result) in results.items():
        assert sorted(result.files) == sorted(outputs_of(config.split, kind, work.stem))


# ---------------------------------------------------------------------------------------------
# One pass over a shard


def plan_new(catalog: Store, config: PreprocessConfig) -> tuple[dict[str, list[WorkItem]], ShardRun]:
    weights = resolve_weights(config)
    fingerprints = stage_fingerprints(config, weights)
    layout = detect_catalog_layout(catalog)
    _, works = plan_catalog({kind: list_items(catalog, layout, kind) for kind in (PERSON, GARMENT)}, {},
                            fingerprints, Selection())
    return works, ShardRun("20261201T000000Z-test00", fingerprints, weights)


def run_pass(config: PreprocessConfig, run: ShardRun, shard: str, works: list[WorkItem]) -> dict[str, dict]:
    """process_shard in a thread with a hang guard (a blocked read must fail the test, not hang it)."""
    found: dict[str, object] = {}

    def target():
        try:
            found["rows"] = process_shard(config, run, shard, works)
        except BaseException as error:  # noqa: BLE001 - reported below
            found["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(600)
    assert not thread.is_alive(), "the shard pass hung"
    if "error" in found:
        raise found["error"]
    return {(row["key"], row["stage"]): row for row in found["rows"]}


def jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def hostile_catalog(tmp_path_factory, samples_dir) -> Path:
    root = tmp_path_factory.mktemp("hostile") / "catalog"
    (root / "persons").mkdir(parents=True)
    (root / "garments").mkdir()
    for name in ("00034_00.jpg", "00121_00.jpg"):
        (root / "persons" / name).write_bytes((samples_dir / "image" / name).read_bytes())
    (root / "garments" / "04469_00.jpg").write_bytes((samples_dir / "cloth" / "04469_00.jpg").read_bytes())
    os.mkfifo(root / "persons" / "fifo.jpg")
    os.mknod(root / "persons" / "device.jpg", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero
    (root / "persons" / "outside.jpg").symlink_to("/etc/hostname")
    (root / "persons" / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    (root / "persons" / "loop-a.jpg").symlink_to(root / "persons" / "loop-b.jpg")
    (root / "persons" / "loop-b.jpg").symlink_to(root / "persons" / "loop-a.jpg")
    (root / "persons" / "big.jpg").write_bytes(jpeg(np.full((900, 700, 3), 128, np.uint8)) + b"\0" * 300_000)
    (root / "persons" / "nobody.jpg").write_bytes(jpeg(np.full((1024, 768, 3), (90, 140, 200), np.uint8)))
    (root / "persons" / "vanishing.jpg").write_bytes(b"listed, then removed")
    (root / "persons" / LONG_NAME).write_bytes((samples_dir / "image" / "00035_00.jpg").read_bytes())
    return root


LONG_NAME = "a" * 236 + ".jpg"  # a legal 240-byte name: its outputs' temporary names must still fit


HOSTILE_CODES = {
    "fifo.jpg": errors.SOURCE_NOT_A_FILE,
    "device.jpg": errors.SOURCE_NOT_A_FILE,
    "outside.jpg": errors.OUTSIDE_ROOT,
    "dangling.jpg": errors.SOURCE_MISSING,
    "loop-a.jpg": errors.SOURCE_UNREADABLE,
    "loop-b.jpg": errors.SOURCE_UNREADABLE,
    "big.jpg": errors.SOURCE_TOO_LARGE,
    "nobody.jpg": errors.NO_PERSON,
    "vanishing.jpg": errors.SOURCE_MISSING,
}


@pytest.fixture(scope="module")
def hostile_pass(hostile_catalog, tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile-out")
    config = PreprocessConfig(catalog=str(hostile_catalog), out=str(out), workers=2, max_source_bytes=250_000)
    works, run = plan_new(Store(str(hostile_catalog)), config)
    (hostile_catalog / "persons" / "vanishing.jpg").unlink()  # gone between listing and reading
    rows = run_pass(config, run, "person-00000", works[PERSON])
    rows.update(run_pass(config, run, "garment-00000", works[GARMENT]))
    return config, Store(str(out)), run, works, rows


def test_every_unreadable_source_gets_its_own_error_row_and_the_rest_run(hostile_pass):
    _, _, _, works, rows = hostile_pass
    for key, code in HOSTILE_CODES.items():
        failed = [row for (k, _), row in rows.items() if k == key and row["status"] == "error"]
        assert [row["error_code"] for row in failed] == [code], f"{key}: {[(r['stage'], r['error_code']) for r in failed]}"
    for key in ("00034_00.jpg", "00121_00.jpg", LONG_NAME):
        assert {stage: rows[key, stage]["status"] for stage in stages_for(PERSON)} == dict.fromkeys(
            stages_for(PERSON), "ok")
    assert rows["04469_00.jpg", "cloth_mask"]["status"] == "ok"
    assert {key for key, _ in rows} == {work.item.key for kind in works for work in works[kind]}


def test_a_pass_writes_every_output_of_good_items_and_none_of_failed_ones(hostile_pass):
    config, out, _, works, rows = hostile_pass
    for work in works[PERSON] + works[GARMENT]:
        failed = any(row["status"] == "error" for (key, _), row in rows.items() if key == work.item.key)
        present = [path for path in outputs_of(config.split, work.kind, work.stem) if out.exists(path)]
        expected = [] if failed else list(outputs_of(config.split, work.kind, work.stem))
        assert present == expected, f"{work.item.key}: {present}"


def test_a_pass_writes_its_manifest_part(hostile_pass):
    config, out, run, _, rows = hostile_pass
    assert out.exists(manifest_part_path(config.split, run.run_id, "person-00000"))
    assert read_run(out, config.split, run.run_id).num_rows == len(rows)


def test_the_stages_run_in_the_worker_processes_as_they_do_inline(hostile_pass, tmp_path):
    config, out, run, works, _ = hostile_pass
    good = [work for work in works[PERSON] if work.item.key == "00034_00.jpg"]
    inline = config.model_copy(update={"workers": 0, "out": str(tmp_path)})
    run_pass(inline, run, "person-00000", good)
    for path in outputs_of(config.split, PERSON, good[0].stem):
        assert Store(str(tmp_path)).read_bytes(path) == out.read_bytes(path), path


def test_a_missing_earlier_output_makes_the_item_run_from_its_source(hostile_pass, tmp_path):
    config, out, run, works, _ = hostile_pass
    good = next(work for work in works[PERSON] if work.item.key == "00121_00.jpg")
    copy = Store(str(tmp_path))
    for path in outputs_of(config.split, PERSON, good.stem):
        copy.write_bytes(path, out.read_bytes(path))
    copy.remove(f"{config.split}/{contract.DIR_IMAGE}/{good.stem}.jpg")  # someone deleted it
    new_parser = WorkItem(good.item, frozenset({"parse"}), previous_sha256="-", previous_fit=None)
    rows = run_pass(config.model_copy(update={"out": copy.url}), run, "person-00000", [new_parser])
    assert sorted(stage for _, stage in rows) == sorted(stages_for(PERSON))
    assert copy.read_bytes(f"{config.split}/{contract.DIR_IMAGE}/{good.stem}.jpg") == out.read_bytes(
        f"{config.split}/{contract.DIR_IMAGE}/{good.stem}.jpg")


def worker_processes() -> list[multiprocessing.Process]:
    return [child for child in multiprocessing.active_children() if child.is_alive()]


def test_a_worker_process_that_died_is_replaced_and_every_item_finishes(hostile_pass, tmp_path):
    config, _, run, works, _ = hostile_pass
    good = [work for work in works[PERSON] if not work.item.key.startswith(("fifo", "device", "big"))][:2]
    pool = worker_pool(2)
    pool.submit(prepare_models, config)[0].result()
    for child in worker_processes():
        os.kill(child.pid, signal.SIGKILL)  # killed for memory, say, between two shards
    time.sleep(0.5)
    rows = run_pass(config.model_copy(update={"out": str(tmp_path)}), run, "person-00000", good)
    assert {row["status"] for row in rows.values()} == {"ok"}


def test_an_item_on_which_the_worker_dies_twice_gets_a_worker_crashed_row(hostile_pass, tmp_path):
    config, _, run, works, _ = hostile_pass
    garment = works[GARMENT]
    settings = config.model_copy(update={"out": str(tmp_path)})
    run_pass(settings, run, "garment-00000", garment)  # the pool works: a crash now is the input's doing
    stop = threading.Event()

    def kill_every_worker():
        while not stop.is_set():
            for child in worker_processes():
                try:
                    os.kill(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)

    killer = threading.Thread(target=kill_every_worker, daemon=True)
    killer.start()
    try:
        rows = run_pass(settings.model_copy(update={"out": str(tmp_path / "again")}), run, "garment-00000", garment)
    finally:
        stop.set()
        killer.join()
    assert [row["error_code"] for row in rows.values()] == [errors.WORKER_CRASHED]
    assert "died 2 times" in next(iter(rows.values()))["error_message"]


def test_batch_size_changes_nothing_in_the_yolo_parser_outputs(hostile_catalog, tmp_path, yolo_weights):
    results = {}
    for batch in (1, 3):
        out = tmp_path / f"batch{batch}"
        config = PreprocessConfig(catalog=str(hostile_catalog), out=str(out), workers=2,
                                  parser=f"yolo:{yolo_weights}", parse_batch_size=batch)
        works, run = plan_new(Store(str(hostile_catalog)), config)
        good = [work for work in works[PERSON] if work.item.key in ("00034_00.jpg", "00121_00.jpg")]
        rows = run_pass(config, run, "person-00000", good)
        assert {row["status"] for row in rows.values()} == {"ok"}, [r["error_message"] for r in rows.values()]
        results[batch] = {path: Store(str(out)).read_bytes(path) for work in good
                          for path in outputs_of(config.split, PERSON, work.stem)}
    assert results[1] == results[3]


def darkness_unet(path: Path) -> Path:
    """A ClothUNet set by hand to mark what is darker than its white backdrop: the first encoder's
    first channel is minus the mean of the normalised RGB, carried by the top skip connection to the
    last decoder and the head; every deeper path is zero."""
    import torch

    from vitonhd_models.cloth_unet import ClothUNet

    model = ClothUNet().eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(1.0)
        first, last = model.encoders[0], model.decoders[-1]
        first[0].weight[0, :, 1, 1] = -1.0 / 3.0  # 3x3 kernel, centre tap: minus the mean colour
        first[3].weight[0, 0, 1, 1] = 1.0
        skip = last[0].weight.shape[1] // 2  # the skip's channels follow the upsampled ones
        last[0].weight[0, skip, 1, 1] = 1.0
        last[3].weight[0, 0, 1, 1] = 1.0
        model.head.weight[0, 0] = 10.0
        model.head.bias.fill_(-3.0)
    torch.save(model.state_dict(), path)
    return path


def test_the_unet_cloth_mask_runs_batched_and_writes_its_masks(hostile_catalog, tmp_path, samples_dir):
    weights = darkness_unet(tmp_path / "cloth_unet.pt")
    config = PreprocessConfig(catalog=str(hostile_catalog), out=str(tmp_path / "out"), workers=2,
                              cloth_mask_model=str(weights))
    works, run = plan_new(Store(str(hostile_catalog)), config)
    rows = run_pass(config, run, "garment-00000", works[GARMENT])
    row = rows["04469_00.jpg", "cloth_mask"]
    assert row["status"] == "ok", row["error_message"]
    assert row["model"].startswith("cloth_unet.pt@sha256:" + run.weights.of("cloth_mask").sha256[:12])
    assert 0.05 < row["cloth_mask_coverage"] < 0.9, row["cloth_mask_coverage"]
    written = tmp_path / "out" / "test" / "cloth-mask" / "04469_00.jpg"
    assert written.is_file(), "a batched stage that runs last still has its result encoded and written"


@pytest.fixture(scope="module")
def gate_catalog(tmp_path_factory, samples_dir) -> Path:
    """Real photos that are no VITON-HD material beside ones that are."""
    root = tmp_path_factory.mktemp("gate") / "catalog"
    (root / "persons").mkdir(parents=True)
    person = Image.open(samples_dir / "image" / "00034_00.jpg").convert("RGB")
    other = Image.open(samples_dir / "image" / "01992_00.jpg").convert("RGB")
    pair = Image.new("RGB", (1536, 1024), (240, 240, 240))
    pair.paste(person, (0, 0))
    pair.paste(other, (768, 0))
    far = person.copy()
    far.paste(other.resize((192, 256)), (560, 700))  # someone small in the background
    photos = {"upright.jpg": person, "lying.jpg": person.rotate(90, expand=True),
              "upside-down.jpg": person.rotate(180), "two-people.jpg": pair, "far-away-passer-by.jpg": far}
    for name, image in photos.items():
        image.save(root / "persons" / name, quality=95)
    return root


def test_the_pose_gate_refuses_persons_lying_down_upside_down_or_in_company(gate_catalog, tmp_path):
    config = PreprocessConfig(catalog=str(gate_catalog), out=str(tmp_path), workers=2)
    works, run = plan_new(Store(str(gate_catalog)), config)
    rows = run_pass(config, run, "person-00000", works[PERSON])
    codes = {key: row["error_code"] for (key, stage), row in rows.items() if row["status"] == "error"}
    assert codes == {"lying.jpg": "not_upright", "upside-down.jpg": "not_upright", "two-people.jpg": "several_persons"}
    for key in ("upright.jpg", "far-away-passer-by.jpg"):
        assert rows[key, "agnostic"]["status"] == "ok", key
    seen = json.loads(rows["two-people.jpg", "pose_gate"]["details"])
    assert rows["two-people.jpg", "pose_gate"]["persons_detected"] == 2 and seen["other_person_scale"] > 0.5
    assert json.loads(rows["lying.jpg", "pose_gate"]["details"])["torso_tilt_deg"] > 80


def test_vitonhd_photos_with_hips_at_the_lower_edge_or_missed_at_first_get_every_output(rejected_dir, tmp_path):
    """Three VITON-HD test photos the dataset's own OpenPose/CIHP handled: hips past the bottom edge (00482_00),
    a faint hip at it (03052_00), a person the pose model misses on its first look (00802_00)."""
    root = tmp_path / "catalog"
    (root / "persons").mkdir(parents=True)
    for path in sorted(rejected_dir.glob("*.jpg")):
        (root / "persons" / path.name).write_bytes(path.read_bytes())
    config = PreprocessConfig(catalog=str(root), out=str(tmp_path / "out"), workers=2)
    works, run = plan_new(Store(str(root)), config)
    rows = run_pass(config, run, "person-00000", works[PERSON])
    failed = {key: f"{stage}: {row['error_code']} {row['error_message']}" for (key, stage), row in rows.items()
              if row["status"] != "ok"}
    assert not failed, failed
    assert {key for (key, stage), row in rows.items() if stage == "agnostic"} == {
        "00482_00.jpg", "03052_00.jpg", "00802_00.jpg"}, "every photo reaches the agnostic"


def test_the_gate_thresholds_are_the_configurations(gate_catalog, tmp_path):
    config = PreprocessConfig(catalog=str(gate_catalog), out=str(tmp_path), workers=2, max_torso_tilt_deg=180,
                              max_other_person_scale=2.0)
    works, run = plan_new(Store(str(gate_catalog)), config)
    rows = run_pass(config, run, "person-00000", [w for w in works[PERSON] if w.item.key in ("lying.jpg", "two-people.jpg")])
    assert {row["status"] for row in rows.values()} == {"ok"}


def test_a_sidecar_of_several_people_without_their_sizes_is_not_loaded():
    from tasks.stages.pose import PoseResult, pose_from_npz_bytes, pose_to_npz_bytes

    keypoints = np.zeros((25, 3), np.float32)
    data = pose_to_npz_bytes(PoseResult(keypoints, np.zeros((33, 4), np.float32), None, 3, 0.8))
    old = io.BytesIO()
    with np.load(io.BytesIO(data)) as npz:  # as an older version wrote it: no other_person_scale
        np.savez(old, **{name: npz[name] for name in npz.files if name != "other_person_scale"})
    with pytest.raises(ValueError, match="older version"):
        pose_from_npz_bytes(old.getvalue())
    assert pose_from_npz_bytes(data).other_person_scale == pytest.approx(0.8)
