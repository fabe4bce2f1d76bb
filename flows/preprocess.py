"""The `preprocess` flow: catalog photos in, a VITON-HD dataset out.

Plan: list the catalog, diff each item against the manifest's current view (only new or changed
items and stages run), cut the work into shards, map one task run per shard, which runs every
planned stage of its items in one pass (`tasks.engine.shard`) and writes the shard's manifest part last,
then the pairs file, the run summary and the UI artifacts.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.runtime import flow_run
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from flows import chain, fanout
from flows.report import announce_run, log_failed_items, publish, run_parameter
from flows.runs import collect_shards, new_run_id
from tasks.engine.paired_cloth import apply_pairings
from tasks.engine.pairs import write_pairs
from tasks.engine.plan import apply_refusals, index_current, plan_catalog, read_work_list, split_work
from tasks.engine.run_plan import CatalogRun, Plan, open_catalog, pairing_work, plan_run
from tasks.engine.run_summary import failure_reason, ok_listed, shards_failure, summarise
from tasks.engine.shard import ShardRun
from tasks.engine.shard_task import shard_task
from tasks.engine.workers import warm_up, workers_of
from tasks.infra.lease import DatasetLease
from tasks.infra.redaction import redact
from tasks.infra.runtime import SHARDS_IN_FLIGHT, use_storage_secret
from tasks.infra.store import Store
from tasks.records.catalog import GARMENT, PERSON, WorkItem, plan_shards
from tasks.records.config import RunPolicy, Selection
from tasks.records.manifest import read_current, write_summary
from tasks.stages.registry import PreprocessConfig, check_weights, resolve_weights, stage_fingerprints


class RunFailed(RuntimeError):
    """The run finished its work but did too badly to call it Completed; `summary` says what happened."""

    def __init__(self, message: str, summary: dict[str, Any]):
        super().__init__(message)
        self.summary = summary

    def __reduce__(self):  # Prefect pickles a failed run's exception as its result
        return (RunFailed, (str(self), self.summary))


def run_name() -> str:
    """The flow run's name in the UI: what it covers (split, catalog, selection). A child run is named
    by its parent when it starts it (`flows.fanout`): the parent's name and the part."""
    config, selection = run_parameter("config", PreprocessConfig), run_parameter("selection", Selection)
    if config is None or selection is None:
        return "preprocess"
    words = [config.split, "<-", redact(config.catalog)]
    if selection.prefix:
        words.append(f"prefix {selection.prefix}")
    for bound in ("since", "until"):
        if getattr(selection, bound):
            words.append(f"{bound} {getattr(selection, bound).isoformat()[:19]}")
    if selection.full_refresh:
        words.append("full refresh")
    return " ".join(words)


@flow(name="preprocess", flow_run_name=run_name, task_runner=ThreadPoolTaskRunner(max_workers=SHARDS_IN_FLIGHT),
      log_prints=False)
def preprocess(
    config: PreprocessConfig, selection: Selection = Selection(), policy: RunPolicy = RunPolicy()  # noqa: B008
) -> dict[str, Any]:
    """Turn the catalog at config.catalog into a VITON-HD dataset at config.out; return the run summary.

    Args:
        config: what to make: the catalog, the dataset, the models and the limits on what is read.
        selection: which catalog items to look at (a backfill: a key prefix, a modification-time range)
            and whether to ignore what the dataset already holds.
        policy: how the run behaves in the service: its failure threshold, child runs, the deployments it starts.
    """
    use_storage_secret(config.storage_secret_block)
    try:
        return run_preprocess(config, selection, policy)
    except RunFailed as failure:  # an outcome, not a crash: the run ends Failed with its reason and no traceback
        return Failed(message=f"Failed: {failure}", data=failure)


@flow(name="preprocess", task_runner=ThreadPoolTaskRunner(max_workers=SHARDS_IN_FLIGHT), log_prints=False)
def preprocess_part(config: PreprocessConfig, work_list: str, full_refresh: bool = False) -> dict[str, Any]:
    """One part of a large preprocess run: the items of a work list its parent wrote (the shard-range
    deployment; the parent starts it and judges the whole run).

    Args:
        config: the parent run's configuration.
        work_list: the dataset-relative path of the work list the parent wrote for this part.
        full_refresh: rerun every stage of the items, as the parent was asked to.
    """
    use_storage_secret(config.storage_secret_block)
    try:
        return run_part(config, Selection(full_refresh=full_refresh), work_list)
    except RunFailed as failure:
        return Failed(message=f"Failed: {failure}", data=failure)


def run_preprocess(config: PreprocessConfig, selection: Selection, policy: RunPolicy) -> dict[str, Any]:
    """The flow's body: list, diff against the manifest, process (here or in child runs), summarise, chain.

    A run with work holds the dataset's lease from before its first write to after its last
    (`tasks.infra.lease`); a run with nothing to do takes no lease and writes nothing (it only removes
    temporary files no live run can own: `DatasetLease.remove_orphaned_temporaries`).
    """
    logger = get_run_logger()
    announce_run()
    started = time.perf_counter()
    run = open_catalog(config, selection, new_run_id())
    plan = plan_run(run)
    # With no item to process, the paired cloth may still be due (a dataset made before it existed):
    # worked out here once, and kept for the finish unless processing changes the current view.
    pairing = None if plan.planned else pairing_work(run, plan.current, plan.listed)
    busy = plan.planned or bool(pairing[0])
    lease = DatasetLease(run.out, run.run_id, wait_s=config.lease_wait_s)
    with lease if busy else nullcontext():
        if lease.waited:  # the run we waited for may have done some of it
            plan, pairing = plan_run(run), None
        leftovers = lease.remove_orphaned_temporaries()  # held or not: only what no live run can own
        if leftovers:
            logger.info("removed %d partial files left by an interrupted run", leftovers)
        done = process_plan(config, policy, run, plan, logger)
        return finish_run(config, policy, run, plan, done, started, logger, pairing)


@dataclass
class Processed:
    """What processing a plan left: the finished shards' rows, the child runs (part -> flow run id), those
    that did not complete (flow run id -> state) and the shard tasks that failed."""

    rows: list[dict[str, Any]]
    children: dict[str, str] = field(default_factory=dict)
    unfinished: dict[str, str] = field(default_factory=dict)
    failed_shards: list[dict[str, str]] = field(default_factory=list)


def process_plan(config: PreprocessConfig, policy: RunPolicy, run: CatalogRun, plan: Plan, logger: Any) -> Processed:
    """The plan's items: one task run per shard here or, from a deployment with more than
    `policy.items_per_child_run` of them, child runs of the shard-range deployment (`flows.fanout`)."""
    listed, works, planned = plan.listed, plan.works, plan.planned
    logger.info(
        "run %s: %d of %d persons and %d of %d garments to process (%s layout)",
        run.run_id, len(works[PERSON]), len(listed[PERSON]), len(works[GARMENT]), len(listed[GARMENT]),
        run.layout.name,
    )
    fan_out = bool(policy.items_per_child_run) and planned > policy.items_per_child_run
    if fan_out and not fanout.in_deployment():
        logger.info("%d items exceed items_per_child_run %d, but this run is not a deployment's (no workers "
                    "to share with): processing them all here", planned, policy.items_per_child_run)
        fan_out = False
    if not fan_out:
        rows, failed_shards = process(config, ShardRun(run.run_id, run.fingerprints, run.weights), works, logger)
        return Processed(rows, failed_shards=failed_shards)
    parts = split_work(works, policy.items_per_child_run)
    logger.info("run %s: splitting %d items into %d child runs of %s",
                run.run_id, planned, len(parts), fanout.CHILD_DEPLOYMENT)
    children = fanout.start_children(config, run.selection, parts, run.run_id)
    states = fanout.wait_for_children(children, logger)
    rows = fanout.children_rows(config, children)
    return Processed(rows, children, unfinished={children[i]: state for i, state in states.items()
                                                 if state != "Completed"})


def finish_run(
    config: PreprocessConfig, policy: RunPolicy, run: CatalogRun, plan: Plan, done: Processed, started: float, logger: Any,
    pairing: tuple | None = None,
) -> dict[str, Any]:
    """After processing: the pairs and the paired cloth, the summary and its verdict, the chained runs,
    the UI artifacts; a run judged Failed raises `RunFailed` with its summary."""
    current = plan.current
    if done.rows or done.children:  # else the view read at the start still holds, and so does its pairing
        current, pairing = read_current(run.out, run.split), None
    pairing, ok, pairs = pairing or pairing_work(run, current, plan.listed)
    write_pairs(run.out, run.split, pairs)
    paired = apply_pairings(run.out, run.split, run.run_id, pairing, current, ok)
    summary = summarise(config, run.selection, run.run_id, str(flow_run.get_id() or ""), done.rows, plan.listed,
                        plan.works, ok, pairs, time.perf_counter() - started)
    summary["paired_cloth"] = paired
    summary["child_runs"] = sorted(done.children.values())
    summary["failed_shards"] = done.failed_shards
    failure = failure_reason(summary, policy.max_failed_fraction, done.unfinished)
    if failure is None:
        summary["started"] = start_chained(config, policy, done.rows, ok, pairs, logger)
    if plan.planned or done.children or paired["rows"]:  # an unchanged catalog's run writes nothing
        write_summary(run.out, run.split, run.run_id, summary)
    log_failed_items(summary["failed"], logger)
    publish(summary, run.out, done.rows, current, keyed=True, failure=failure)
    logger.info(
        "run %s: processed %d persons (%d failed) and %d garments (%d failed) in %.1f s; the dataset holds "
        "%d persons and %d garments",
        run.run_id, summary["persons"]["total"], summary["persons"]["error"], summary["garments"]["total"],
        summary["garments"]["error"], summary["seconds"], len(ok[PERSON]), len(ok[GARMENT]),
    )
    if failure is not None:
        logger.error("run %s failed: %s", run.run_id, failure)
        raise RunFailed(failure, summary)
    return summary


def start_chained(
    config: PreprocessConfig, policy: RunPolicy, rows: list[dict[str, Any]], ok: dict[str, dict[str, str]],
    pairs: list[tuple[str, str]], logger: Any,
) -> dict[str, Any]:
    """What comes next (`flows.chain`): try-on for the garments this run made usable, training after
    enough pairs; what each started, or None."""
    new_garments = sorted({row["stem"] for row in rows if row["kind"] == GARMENT and row["stem"]}
                          & set(ok[GARMENT].values()))
    return {
        "tryon": chain.start_tryon(policy, config, new_garments, sorted(ok[PERSON].values()), logger),
        "train": chain.start_train(policy, config, len(pairs), logger),
    }


def run_part(config: PreprocessConfig, selection: Selection, work_list: str) -> dict[str, Any]:
    """A child run: re-plan the items of a parent's work list against the manifest (a rerun skips what
    is done), process them, summarise. The parent writes the pairs file and judges the whole run."""
    logger = get_run_logger()
    started = time.perf_counter()
    out = Store(config.out, config.storage_options)
    part = read_work_list(out, work_list)
    run_id = part.run_id
    weights = resolve_weights(config)
    check_weights(config, weights)
    fingerprints = stage_fingerprints(config, weights)
    index = index_current(read_current(out, config.split))
    listed, works = plan_catalog(part.items, index, fingerprints, selection,
                                 missing=part.missing)
    works = apply_refusals(works, part.refusals)
    logger.info("run %s: %d of %d persons and %d of %d garments of %s to process", run_id,
                len(works[PERSON]), len(listed[PERSON]), len(works[GARMENT]), len(listed[GARMENT]), work_list)
    rows, failed_shards = process(config, ShardRun(run_id, fingerprints, weights), works, logger)
    current = read_current(out, config.split)
    ok = ok_listed(current, listed)
    summary = summarise(config, selection, run_id, str(flow_run.get_id() or ""), rows, listed, works, ok, [],
                        time.perf_counter() - started)
    summary["work_list"] = work_list
    summary["failed_shards"] = failed_shards
    write_summary(out, config.split, run_id, summary)
    log_failed_items(summary["failed"], logger)
    failure = shards_failure(failed_shards) if failed_shards else None
    publish(summary, out, rows, current, keyed=False, failure=failure)
    if failed_shards:  # the parent sees this run Failed and says so; the other shards' rows stand
        raise RunFailed(shards_failure(failed_shards), summary)
    return summary


def process(
    config: PreprocessConfig, run: ShardRun, works: dict[str, list[WorkItem]], logger: Any
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """One task run per shard (persons and garments), each through every planned stage in one pass;
    returns every finished shard's rows and the shards that failed (their items have no rows yet)."""
    shards = [(f"{kind}-{i:05d}", shard) for kind in (PERSON, GARMENT)
              for i, shard in enumerate(plan_shards(works[kind], config.shard_size))]
    logger.info("run %s: %d person and %d garment items in %d shards of up to %d, %d worker processes",
                run.run_id, len(works[PERSON]), len(works[GARMENT]), len(shards), config.shard_size,
                workers_of(config))
    if not shards:
        return [], []
    warm_up(config)  # starts the worker processes while the first shards read their inputs
    futures = shard_task.map(unmapped(config), unmapped(run), [name for name, _ in shards],
                             [shard for _, shard in shards])
    return collect_shards(dict(zip(futures, (name for name, _ in shards))), logger)
