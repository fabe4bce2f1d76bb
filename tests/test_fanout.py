"""Fan-out into child runs and chaining to try-on/training: the parts that need no workers."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from tasks.engine.plan import child_run_id, read_work_list, refused, split_work, work_list_path, write_work_list
from tasks.infra.store import Store
from tasks.records.catalog import GARMENT, PERSON, CatalogItem, Refusal, WorkItem


def works(persons: int, garments: int) -> dict[str, list[WorkItem]]:
    def item(kind: str, index: int) -> CatalogItem:
        key = f"{kind}-{index:03d}.jpg"
        return CatalogItem(kind=kind, key=key, rel=f"{kind}s/{key}", url=f"/catalog/{kind}s/{key}", size=100 + index,
                           stem=f"{kind}-{index:03d}", modified=1.5e9 + index, etag=None)

    return {kind: [WorkItem(item(kind, i), frozenset({"ingest"})) for i in range(count)]
            for kind, count in ((PERSON, persons), (GARMENT, garments))}


def test_a_plan_splits_into_equal_parts_of_at_most_the_limit():
    parts = split_work(works(7, 4), 4)
    sizes = [len(part[PERSON]) + len(part[GARMENT]) for part in parts]
    assert sizes == [4, 4, 3]
    keys = [work.item.key for part in parts for kind in (PERSON, GARMENT) for work in part[kind]]
    assert len(keys) == len(set(keys)) == 11, "every planned item lands in exactly one part"


def test_an_empty_plan_has_no_parts():
    assert split_work(works(0, 0), 5) == []


def test_a_work_list_round_trips_through_storage(tmp_path):
    store = Store(str(tmp_path))
    part = split_work(works(2, 1), 10)[0]
    rel = work_list_path("test", "20261127T000000Z-abc123", 2, 5)
    assert rel == "_work/test/plans/20261127T000000Z-abc123/part-0002-of-0005.json"
    part[PERSON][0] = refused(part[PERSON][0].item, Refusal("stem_collision", "shares its name", False))
    part[GARMENT][0] = replace(part[GARMENT][0], missing=frozenset({"cloth_mask"}))
    write_work_list(store, rel, child_run_id("20261127T000000Z-abc123", 2), part)
    read = read_work_list(store, rel)
    assert read.run_id == "20261127T000000Z-abc123-p0002"
    assert read.items == {kind: [work.item for work in found] for kind, found in part.items()}
    assert read.refusals == {PERSON: {part[PERSON][0].item.key: part[PERSON][0].refusal}, GARMENT: {}}, \
        "a child sees only its part of the catalog: the parent's refusals travel with the work list"
    assert read.missing == {PERSON: {}, GARMENT: {part[GARMENT][0].item.key: frozenset({"cloth_mask"})}}


def test_child_run_ids_sort_after_their_parent_and_in_part_order():
    parent = "20261127T000000Z-abc123"
    ids = [child_run_id(parent, part) for part in (1, 2, 10)]
    assert sorted([*ids, parent]) == [parent, *ids]


@pytest.fixture()
def registered(prefect_server):
    """tryon/chained-test and train/chained-test registered on the server (no worker: runs stay Scheduled)."""
    from flows.train import train
    from flows.tryon import tryon

    # As in prefect.yaml, the deployments carry what the chaining does not pass (outputs, the stage).
    tryon.to_deployment(name="chained-test", parameters={"config": {
        "dataset": "/d", "out": "/tryon", "checkpoints": "/ckpt", "batch_size": 2}}).apply()
    train.to_deployment(name="chained-test", parameters={"config": {
        "dataset": "/d", "out": "/ckpt", "stage": "gmm", "steps": 50}}).apply()
    return {"tryon": "tryon/chained-test", "train": "train/chained-test"}


def test_a_retried_preprocess_run_starts_the_same_tryon_only_once(registered, tmp_path):
    from prefect import flow
    from prefect.logging import get_logger

    from flows.chain import start_tryon
    from tasks.records.config import RunPolicy
    from tasks.stages.registry import PreprocessConfig

    config = PreprocessConfig(catalog=str(tmp_path / "catalog"), out=str(tmp_path / "dataset"))
    policy = RunPolicy(tryon_deployment=registered["tryon"])
    logger = get_logger("test")

    @flow
    def preprocess_like():  # the same flow run calling twice is what a retry of the run does
        first = start_tryon(policy, config, ["g2", "g1"], ["p1", "p2"], logger)
        again = start_tryon(policy, config, ["g1", "g2"], ["p2", "p1"], logger)
        other = start_tryon(policy, config, ["g3"], ["p1", "p2"], logger)
        return first, again, other

    first, again, other = preprocess_like()
    assert first["flow_run_id"] == again["flow_run_id"], "the same garments must not start a second try-on"
    assert other["flow_run_id"] != first["flow_run_id"]

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(first["flow_run_id"])
    given = run.parameters["config"]
    assert given["garments"] == ["g1", "g2"] and given["persons"] == ["p1", "p2"]
    assert given["dataset"] == config.out
    assert (given["out"], given["checkpoints"], given["batch_size"]) == ("/tryon", "/ckpt", 2), \
        "the deployment's own configuration must survive what the chaining passes"


def test_no_new_garments_start_no_tryon(tmp_path):
    from prefect.logging import get_logger

    from flows.chain import start_tryon
    from tasks.records.config import RunPolicy
    from tasks.stages.registry import PreprocessConfig

    config = PreprocessConfig(catalog=str(tmp_path), out=str(tmp_path))
    assert start_tryon(RunPolicy(tryon_deployment="tryon/bulk"), config, [], ["p1"], get_logger("test")) is None
    assert start_tryon(RunPolicy(), config, ["g1"], ["p1"], get_logger("test")) is None


def test_training_starts_when_enough_new_pairs_arrived_and_counts_from_there(registered, tmp_path):
    from prefect import flow
    from prefect.logging import get_logger

    from flows.chain import start_train
    from tasks.records.config import RunPolicy
    from tasks.stages.registry import PreprocessConfig

    config = PreprocessConfig(catalog=str(tmp_path / "catalog"), out=str(tmp_path / "dataset"), split="train")
    policy = RunPolicy(train_deployment=registered["train"], train_min_new_pairs=10)
    logger = get_logger("test")

    @flow
    def nightly_runs():
        return [start_train(policy, config, pairs, logger) for pairs in (4, 12, 15, 22)]

    started = nightly_runs()
    assert [run is not None for run in started] == [False, True, False, True]
    assert started[1]["new_pairs"] == 12 and started[3]["new_pairs"] == 10
    marker = json.loads((tmp_path / "dataset" / "_work" / "train" / "train-started.json").read_text())
    assert marker["pairs"] == 22

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        given = client.read_flow_run(started[1]["flow_run_id"]).parameters["config"]
    assert (given["dataset"], given["split"]) == (config.out, "train")
    assert (given["out"], given["stage"], given["steps"]) == ("/ckpt", "gmm", 50), \
        "the deployment's stage, output and steps must survive what the chaining passes"


def test_a_deployment_name_must_be_flow_slash_deployment():
    from pydantic import ValidationError

    from tasks.records.config import RunPolicy

    with pytest.raises(ValidationError, match="<flow>/<deployment>"):
        RunPolicy(tryon_deployment="bulk")


def test_a_deployment_run_over_the_limit_hands_its_items_to_child_runs(monkeypatch):
    import logging
    from types import SimpleNamespace

    from flows import fanout
    from flows.preprocess import Processed, process_plan
    from tasks.engine.run_plan import CatalogRun, Plan
    from tasks.records.config import RunPolicy, Selection
    from tasks.stages.registry import PreprocessConfig

    handed: list[dict] = []

    def start_children(config, selection, parts, run_id):
        handed.extend(parts)
        return {f"flow-run-{i}": f"{run_id}-p{i:04d}" for i in range(1, len(parts) + 1)}

    monkeypatch.setattr(fanout, "in_deployment", lambda: True)
    monkeypatch.setattr(fanout, "start_children", start_children)
    monkeypatch.setattr(fanout, "wait_for_children",
                        lambda children, logger: {"flow-run-1": "Completed", "flow-run-2": "Crashed"})
    monkeypatch.setattr(fanout, "children_rows", lambda config, children: [{"key": "a child's row"}])
    run = CatalogRun(run_id="r", catalog=None, layout=SimpleNamespace(name="catalog"), worn_pairs=[], selection=Selection(),
              out=None, split="test", weights=None, fingerprints={}, stages=())
    plan = Plan(current=None, index={}, listed={PERSON: {}, GARMENT: {}}, works=works(3, 1))
    done = process_plan(PreprocessConfig(catalog="/catalog", out="/dataset"), RunPolicy(items_per_child_run=2), run,
                        plan, logging.getLogger("test"))
    assert [len(part[PERSON]) + len(part[GARMENT]) for part in handed] == [2, 2]
    assert done == Processed(rows=[{"key": "a child's row"}], children={"flow-run-1": "r-p0001", "flow-run-2": "r-p0002"},
                             unfinished={"r-p0002": "Crashed"})
