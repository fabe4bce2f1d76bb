"""The preprocess run's summary and verdict (`tasks.engine.run_summary`), on hand-made rows."""

from __future__ import annotations

import pyarrow as pa

from tasks.engine.run_summary import failure_reason, ok_listed, shards_failure, summarise
from tasks.records.catalog import GARMENT, PERSON
from tasks.records.config import Selection
from tasks.stages.registry import PreprocessConfig


def row(kind: str, key: str, stage: str, error_code: str | None = None, ms: float = 10.0) -> dict:
    return {"kind": kind, "key": key, "stem": key.split(".")[0], "stage": stage, "ms": ms,
            "status": "error" if error_code else "ok", "error_code": error_code,
            "error_message": f"{error_code} happened" if error_code else None, "source_url": f"s3://cat/{key}"}


def summary_of(rows: list[dict], ok: dict | None = None, pairs: list | None = None, seconds: float = 2.0) -> dict:
    listed = {PERSON: {"p1.jpg": "p1", "p2.jpg": "p2", "p3.jpg": "p3"}, GARMENT: {"g1.jpg": "g1"}}
    works = {PERSON: [object(), object()], GARMENT: [object()]}
    ok = ok or {PERSON: {"p1.jpg": "p1"}, GARMENT: {"g1.jpg": "g1"}}
    config = PreprocessConfig(catalog="/catalog", out="/dataset")
    return summarise(config, Selection(prefix="p"), "run-1", "flow-run-1", rows, listed, works, ok, pairs or [],
                     seconds)


def test_an_item_failing_at_several_stages_is_one_failure_at_its_first():
    rows = [row(PERSON, "p1.jpg", "ingest"), row(PERSON, "p2.jpg", "ingest"),
            row(PERSON, "p2.jpg", "pose", "no_person"), row(PERSON, "p2.jpg", "parse", "upstream_failed")]
    summary = summary_of(rows)
    assert summary["persons"] == {"total": 2, "ok": 1, "error": 1}
    assert summary["errors"] == {"no_person": 1}
    assert [(failure["key"], failure["stage"]) for failure in summary["failed"]] == [("p2.jpg", "pose")]


def test_stage_timings_cover_the_stages_that_ran_in_registry_order():
    rows = [row(GARMENT, "g1.jpg", "cloth_mask", ms=30.0), row(PERSON, "p1.jpg", "ingest", ms=10.0),
            row(PERSON, "p2.jpg", "ingest", "unreadable", ms=20.0)]
    stages = summary_of(rows)["stages"]
    assert list(stages) == ["ingest", "cloth_mask"]
    assert stages["ingest"] == {"items": 2, "error": 1, "mean_ms": 15.0, "total_ms": 30.0}


def test_the_summary_names_the_run_the_flow_run_and_what_the_dataset_holds():
    summary = summary_of([row(PERSON, "p1.jpg", "ingest")], pairs=[("p1", "g1")], seconds=0.5)
    assert (summary["run_id"], summary["flow_run_id"]) == ("run-1", "flow-run-1")
    assert summary["selection"]["prefix"] == "p"
    assert summary["listed"] == {"persons": 3, "garments": 1}
    assert summary["planned"] == {"persons": 2, "garments": 1}
    assert summary["dataset"] == {"persons": 1, "garments": 1, "pairs": 1}
    assert summary["images_per_second"] == 2.0


def test_a_run_that_took_no_time_reports_no_rate():
    assert summary_of([], seconds=0.0)["images_per_second"] == 0.0


def test_failed_items_within_max_failed_fraction_pass():
    rows = [row(PERSON, f"p{i}.jpg", "ingest") for i in range(9)] + [row(PERSON, "p9.jpg", "pose", "no_person")]
    assert failure_reason(summary_of(rows), 0.1, {}) is None


def test_failed_items_over_max_failed_fraction_fail_the_run_with_their_codes():
    rows = [row(PERSON, "p1.jpg", "ingest"), row(PERSON, "p2.jpg", "pose", "no_person")]
    assert failure_reason(summary_of(rows), 0.1, {}) == (
        "1 of 2 items failed (50.0% > max_failed_fraction 10.0%): no_person 1")


def test_failed_shards_fail_the_run_whatever_the_items():
    summary = {**summary_of([]), "failed_shards": [{"shard": "person-00001", "error": "OSError: gone"}]}
    assert failure_reason(summary, 1.0, {}) == shards_failure(summary["failed_shards"])
    assert shards_failure(summary["failed_shards"]) == (
        "1 shard failed after their retries, their items are left for the next run: person-00001: OSError: gone")


def test_unfinished_child_runs_fail_the_run():
    summary = {**summary_of([]), "child_runs": ["a", "b"]}
    assert failure_reason(summary, 1.0, {"b": "Crashed"}) == "1 of 2 child runs did not complete: b Crashed"


def test_ok_listed_keeps_the_listed_items_ok_at_every_stage():
    person_stages = ("ingest", "pose", "pose_gate", "parse", "agnostic", "densepose")
    n = len(person_stages)
    current = pa.table({
        "kind": [PERSON] * (3 * n - 1) + [GARMENT] * 2,
        "key": ["a.jpg"] * n + ["b.jpg"] * n + ["c.jpg"] * (n - 1) + ["g.jpg"] * 2,
        "stem": ["a"] * n + ["b"] * n + ["c"] * (n - 1) + ["g"] * 2,
        "stage": [*person_stages, *person_stages, *person_stages[:-1], "ingest", "cloth_mask"],
        "status": ["ok"] * n + ["ok"] * (n - 1) + ["error"] + ["ok"] * (n - 1) + ["ok"] * 2,
    })
    listed = {PERSON: {"a.jpg": "a", "b.jpg": "b", "c.jpg": "c"}, GARMENT: {}}
    # c.jpg has no row of the newest stage yet (a dataset made before it): not ok until that stage ran for it
    assert ok_listed(current, listed) == {PERSON: {"a.jpg": "a"}, GARMENT: {}}
