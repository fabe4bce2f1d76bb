"""Incremental runs: a rerun does only what changed, per item and stage, against the manifest."""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.compute as pc
import pytest

from tasks.infra.store import Store
from tasks.records.config import RunPolicy, Selection
from tasks.records.manifest import read_all, read_current, read_run
from tasks.stages.registry import PreprocessConfig

pytestmark = pytest.mark.slow

OLD = datetime(2020, 1, 1, tzinfo=timezone.utc).timestamp()


def run(catalog: Path, out: Path, selection: Selection = Selection(), **options) -> dict:  # noqa: B008
    from flows.preprocess import preprocess

    # The catalog holds a broken photo on purpose; these tests are about what reruns, not the threshold.
    config = PreprocessConfig(catalog=str(catalog), out=str(out), **options)
    return preprocess(config, selection, RunPolicy(max_failed_fraction=1.0))


def stages_run(out: Path, summary: dict) -> dict[tuple[str, str], set[str]]:
    """(kind, key) -> the stages this run ran for it."""
    table = read_run(Store(str(out)), "test", summary["run_id"])
    ran: dict[tuple[str, str], set[str]] = {}
    for kind, key, stage in zip(table["kind"].to_pylist(), table["key"].to_pylist(), table["stage"].to_pylist()):
        ran.setdefault((kind, key), set()).add(stage)
    return ran


@pytest.fixture(scope="module")
def first_run(samples_dir, tmp_path_factory, prefect_server):
    """Two persons and two garments, processed once."""
    root = tmp_path_factory.mktemp("incremental")
    catalog = root / "catalog"
    for folder, names in (("image", ("00034_00.jpg", "00121_00.jpg")), ("cloth", ("04469_00.jpg", "09163_00.jpg"))):
        target = catalog / ("persons" if folder == "image" else "garments")
        target.mkdir(parents=True)
        for name in names:
            shutil.copy2(samples_dir / folder / name, target / name)
    (catalog / "persons" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no jpeg")
    for path in catalog.rglob("*.jpg"):
        os.utime(path, (OLD, OLD))
    out = root / "dataset"
    summary = run(catalog, out)
    assert summary["persons"] == {"total": 3, "ok": 2, "error": 1}, summary["failed"]
    return catalog, out, summary


@pytest.fixture
def copy(first_run, tmp_path):
    """A private copy of the catalog and dataset after the first run, to change."""
    catalog, out, summary = first_run
    shutil.copytree(catalog, tmp_path / "catalog", copy_function=shutil.copy2)
    shutil.copytree(out, tmp_path / "dataset", copy_function=shutil.copy2)
    return tmp_path / "catalog", tmp_path / "dataset", summary


def test_a_rerun_over_an_unchanged_catalog_processes_nothing(copy):
    catalog, out, first = copy
    again = run(catalog, out)
    assert again["planned"] == {"persons": 0, "garments": 0}
    assert stages_run(out, again) == {}, "an unchanged catalog must not run any stage"
    assert again["dataset"] == first["dataset"]
    assert (out / "test_pairs.txt").read_text().strip(), "the pairs file must survive a no-op run"


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file below `root`: (inode, size, modification time in ns)."""
    return {str(path.relative_to(root)): (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            for path in root.rglob("*") if path.is_file() for stat in [path.stat()]}


def test_a_rerun_over_an_unchanged_catalog_writes_nothing_at_all(copy):
    catalog, out, _ = copy
    before = snapshot(out)
    run(catalog, out)
    assert snapshot(out) == before, "an unchanged catalog must not write a file (object stores bill every PUT)"


def test_a_new_parser_reads_the_written_image_and_pose_never_the_source(copy, yolo_weights):
    catalog, out, _ = copy
    for name in ("00034_00.jpg", "00121_00.jpg"):  # same size, same mtime: only a read would notice
        path = catalog / "persons" / name
        stat = path.stat()
        path.write_bytes(b"\0" * stat.st_size)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    summary = run(catalog, out, parser=f"yolo:{yolo_weights}")
    assert summary["persons"] == {"total": 2, "ok": 2, "error": 0}, summary["failed"]
    assert stages_run(out, summary) == {("person", "00034_00.jpg"): {"parse", "agnostic", "densepose"},
                                        ("person", "00121_00.jpg"): {"parse", "agnostic", "densepose"}}


def test_new_garments_are_processed_and_nothing_else(copy, samples_dir):
    catalog, out, _ = copy
    for name in ("04743_00.jpg", "09133_00.jpg"):
        shutil.copy(samples_dir / "cloth" / name, catalog / "garments" / f"new-{name}")
    pairs_before = (out / "test_pairs.txt").read_text().splitlines()
    summary = run(catalog, out)
    ran = stages_run(out, summary)
    moved = {("person", line.split()[0]): {"paired_cloth"} for line in
             set((out / "test_pairs.txt").read_text().splitlines()) - set(pairs_before)}
    assert ran == {
        ("garment", "new-04743_00.jpg"): {"ingest", "cloth_mask"},
        ("garment", "new-09133_00.jpg"): {"ingest", "cloth_mask"},
        **moved,  # a person whose test pair is now a new garment gets that garment as their paired cloth
    }
    assert summary["dataset"]["garments"] == 4


def test_a_new_parser_reruns_parse_and_what_reads_it_for_every_person_only(copy, yolo_weights):
    catalog, out, _ = copy
    summary = run(catalog, out, parser=f"yolo:{yolo_weights}")
    ran = stages_run(out, summary)
    assert ran == {
        ("person", "00034_00.jpg"): {"parse", "agnostic", "densepose"},
        ("person", "00121_00.jpg"): {"parse", "agnostic", "densepose"},
    }, "the failed item stays failed: its failure (at ingest) does not depend on the parser"


def test_a_new_version_of_the_geometric_parser_reruns_parse_and_what_reads_it_only(copy, monkeypatch):
    from tasks.stages.parse_geometric import GeometricParser

    catalog, out, _ = copy
    monkeypatch.setattr(GeometricParser, "parser_id", "geometric-v99")  # what a release bumping it does
    ran = stages_run(out, run(catalog, out))
    assert ran == {("person", "00034_00.jpg"): {"parse", "agnostic", "densepose"},
                   ("person", "00121_00.jpg"): {"parse", "agnostic", "densepose"}}


def test_a_touched_but_unchanged_source_is_only_rehashed(copy):
    catalog, out, _ = copy
    os.utime(catalog / "persons" / "00034_00.jpg", None)  # now
    summary = run(catalog, out)
    assert stages_run(out, summary) == {("person", "00034_00.jpg"): {"ingest"}}


def test_a_changed_source_reruns_every_stage_of_that_item(copy, samples_dir):
    catalog, out, _ = copy
    shutil.copy(samples_dir / "image" / "01992_00.jpg", catalog / "persons" / "00034_00.jpg")
    summary = run(catalog, out)
    assert stages_run(out, summary) == {
        ("person", "00034_00.jpg"): {"ingest", "pose", "pose_gate", "parse", "agnostic", "densepose"}}


def test_a_failed_item_is_retried_once_its_source_is_replaced(copy, samples_dir):
    catalog, out, _ = copy
    assert stages_run(out, run(catalog, out)) == {}, "an unchanged failure must not be retried"
    shutil.copy(samples_dir / "image" / "00035_00.jpg", catalog / "persons" / "broken.jpg")
    summary = run(catalog, out)
    ran = stages_run(out, summary)
    # Now usable, it gets its test pair's garment as its paired cloth; others whose pair it took may too.
    assert ran.pop(("person", "broken.jpg")) == {"ingest", "pose", "pose_gate", "parse", "agnostic", "densepose",
                                                 "paired_cloth"}
    assert all(stages == {"paired_cloth"} for stages in ran.values()), ran
    assert summary["dataset"]["persons"] == 3


def test_backfill_by_prefix_with_full_refresh_reruns_just_the_selection(copy):
    catalog, out, _ = copy
    summary = run(catalog, out, Selection(prefix="garments/", full_refresh=True))
    assert stages_run(out, summary) == {
        ("garment", "04469_00.jpg"): {"ingest", "cloth_mask"},
        ("garment", "09163_00.jpg"): {"ingest", "cloth_mask"},
    }


def test_backfill_by_modification_time(copy, samples_dir):
    catalog, out, _ = copy
    shutil.copy(samples_dir / "cloth" / "04743_00.jpg", catalog / "garments" / "recent.jpg")  # modified now
    summary = run(catalog, out, Selection(since=datetime(2024, 1, 1, tzinfo=timezone.utc), full_refresh=True))
    assert set(stages_run(out, summary)) == {("garment", "recent.jpg")}
    summary = run(catalog, out, Selection(until=datetime(2021, 1, 1, tzinfo=timezone.utc), full_refresh=True))
    assert ("garment", "recent.jpg") not in stages_run(out, summary)
    assert ("garment", "04469_00.jpg") in stages_run(out, summary)


def test_the_current_view_has_one_row_per_item_and_stage(copy, samples_dir):
    catalog, out, _ = copy
    shutil.copy(samples_dir / "cloth" / "04743_00.jpg", catalog / "garments" / "another.jpg")
    run(catalog, out)
    run(catalog, out, Selection(full_refresh=True, prefix="persons/00034"))
    store = Store(str(out))
    current = read_current(store, "test")
    keys = list(zip(current["kind"].to_pylist(), current["key"].to_pylist(), current["stage"].to_pylist()))
    assert len(keys) == len(set(keys)), "duplicate (item, stage) rows in the current view"
    assert read_all(store, "test").num_rows > current.num_rows, "history is kept; the view picks the latest"
    persons = current.filter(pc.equal(current["kind"], "person"))
    latest = {k: r for k, r in zip(persons["key"].to_pylist(), persons["run_id"].to_pylist())}
    assert latest["00034_00.jpg"] > latest["00121_00.jpg"], "the refreshed person's rows come from the last run"


def test_outputs_deleted_behind_the_manifests_back_are_made_again(copy):
    catalog, out, _ = copy
    (out / "test" / "image-parse-v3" / "00034_00.png").unlink()
    (out / "test" / "cloth-mask" / "04469_00.jpg").unlink()
    summary = run(catalog, out)
    assert stages_run(out, summary) == {
        ("person", "00034_00.jpg"): {"parse", "agnostic", "densepose"},  # they read the parse it had lost
        ("garment", "04469_00.jpg"): {"cloth_mask"},
    }
    assert (out / "test" / "image-parse-v3" / "00034_00.png").exists()
    assert (out / "test" / "cloth-mask" / "04469_00.jpg").exists()
