"""The `preprocess` flow: catalog photos in, a VITON-HD dataset out.

Plan: list the catalog, diff each item against the manifest's current view (only new or changed
items and stages run), cut the work into shards, map one task run per shard, which runs every
planned stage of its items in one pass (`tasks.engine.shard`) and writes the shard's manifest part last,
then the pairs file, the run summary and the UI artifacts.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from flows import chain, fanout
from flows.report import RunProgress, announce_run, log_failed_items, publish, run_parameter
from tasks.engine.paired_cloth import PairingWork, apply_pairings, plan_pairings
from tasks.engine.plan import (
    OutputListing,
    apply_refusals,
    index_current,
    plan_catalog,
    read_work_list,
    refuse_collisions,
    split_work,
)
from tasks.engine.shard import ShardRun
from tasks.engine.shard_task import shard_task
from tasks.engine.workers import warm_up, workers_of
from tasks.infra.lease import DatasetLease
from tasks.infra.redaction import redact
from tasks.infra.runtime import SHARDS_IN_FLIGHT, use_storage_secret
from tasks.infra.store import Store
from tasks.records.catalog import (
    GARMENT,
    PERSON,
    WorkItem,
    detect_catalog_layout,
    list_items,
    plan_shards,
    read_worn_pairs,
    unworn_pairs,
)
from tasks.records.config import (
    PreprocessConfig,
    RunPolicy,
    Selection,
)
from tasks.records.manifest import ok_items, read_current, write_summary
from tasks.stages.model_cache import resolve_weights
from tasks.stages.registry import ALL_STAGES, stage_fingerprints, stages_for
from vitonhd_models import contract


def new_run_id() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


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


@dataclass
class Run:
    """One full run: what it was given and what it resolved before planning."""

    config: PreprocessConfig
    selection: Selection
    policy: RunPolicy
    run_id: str
    started: float  # perf_counter
    catalog: Store
    out: Store
    layout: Any
    worn_pairs: list[tuple[str, str]]
    weights: Any
    fingerprints: dict


@dataclass
class Plan:
    """What a run found to do: the current view, its index, every listed key's stem, the work items."""

    current: Any
    index: dict
    listed: dict[str, dict[str, str]]
    works: dict[str, list[WorkItem]]

    @property
    def planned(self) -> int:
        return len(self.works[PERSON]) + len(self.works[GARMENT])


def check_parser_weights(config: PreprocessConfig, weights: Any) -> None:
    """A YOLO checkpoint that would run code when loaded stops the run before anything is processed."""
    if weights.parser is not None:
        from tasks.stages.parse_yolo import check_weights

        check_weights(weights.parser.path, config.trust_weights)


def plan_run(run: Run) -> Plan:
    """List the catalog and the dataset's output folders, diff them against the manifest's current view."""
    current = read_current(run.out, run.config.split)
    index = index_current(current)
    outputs = OutputListing(run.out, run.config.split) if not run.selection.full_refresh else None
    listed, works = plan_catalog(
        {kind: list_items(run.catalog, run.layout, kind) for kind in (PERSON, GARMENT)}, index, run.fingerprints,
        run.selection, outputs=outputs,
    )
    return Plan(current, index, listed, refuse_collisions(listed, works, index))


def run_preprocess(config: PreprocessConfig, selection: Selection, policy: RunPolicy) -> dict[str, Any]:
    """The flow's body: list, diff against the manifest, process (here or in child runs), summarise, chain.

    A run with work holds the dataset's lease from before its first write to after its last
    (`tasks.infra.lease`); a run with nothing to do writes nothing, the lease included.
    """
    logger = get_run_logger()
    announce_run()
    started = time.perf_counter()
    catalog = Store(config.catalog, config.storage_options)
    layout = detect_catalog_layout(catalog)
    weights = resolve_weights(config)
    check_parser_weights(config, weights)
    run = Run(config, selection, policy, new_run_id(), started, catalog,
              Store(config.out, config.storage_options), layout,
              read_worn_pairs(catalog, layout),  # a broken pairs file fails the run before any image
              weights, stage_fingerprints(config, weights))
    plan = plan_run(run)
    # With no item to process, the paired cloth may still be due (a dataset made before it existed):
    # worked out here once, and kept for the finish unless processing changes the current view.
    pairing = None if plan.planned else pairing_work(run, plan.current, plan.listed)
    busy = plan.planned or bool(pairing[0])
    lease = DatasetLease(run.out, run.run_id, wait_s=config.lease_wait_s) if busy else nullcontext()
    with lease:
        if busy and lease.waited:  # the run we waited for may have done some of it
            plan, pairing = plan_run(run), None
        if plan.planned:
            leftovers = run.out.remove_temporaries(min_age_s=time.time() - lease.taken)
            if leftovers:
                logger.info("removed %d partial files left by an interrupted run", leftovers)
        return finish_run(run, plan, logger, pairing)


def finish_run(run: Run, plan: Plan, logger: Any, pairing: tuple | None = None) -> dict[str, Any]:
    """Process the plan (here or in child runs), then write the pairs and the summary, publish, chain."""
    config, selection, policy, run_id, out = run.config, run.selection, run.policy, run.run_id, run.out
    listed, works, current, planned = plan.listed, plan.works, plan.current, plan.planned
    logger.info(
        "run %s: %d of %d persons and %d of %d garments to process (%s layout)",
        run_id, len(works[PERSON]), len(listed[PERSON]), len(works[GARMENT]), len(listed[GARMENT]), run.layout.name,
    )
    children: dict[str, str] = {}
    failed_shards: list[dict[str, str]] = []
    fan_out = bool(policy.items_per_child_run) and planned > policy.items_per_child_run
    if fan_out and not fanout.in_deployment():
        logger.info("%d items exceed items_per_child_run %d, but this run is not a deployment's (no workers "
                    "to share with): processing them all here", planned, policy.items_per_child_run)
        fan_out = False
    if fan_out:
        parts = split_work(works, policy.items_per_child_run)
        logger.info("run %s: splitting %d items into %d child runs of %s",
                    run_id, planned, len(parts), fanout.CHILD_DEPLOYMENT)
        children = fanout.start_children(config, selection, parts, run_id)
        states = fanout.wait_for_children(children, logger)
        rows = fanout.children_rows(config, children)
        unfinished = {children[i]: state for i, state in states.items() if state != "Completed"}
    else:
        rows, failed_shards = process(config, ShardRun(run_id, run.fingerprints, run.weights), works, logger)
        unfinished = {}

    if rows or children:  # else the view read at the start still holds, and so does its pairing
        current, pairing = read_current(out, config.split), None
    pairing, ok, pairs = pairing or pairing_work(run, current, listed)
    write_pairs(out, config.split, pairs)
    paired = apply_pairings(out, config.split, run_id, pairing, current, ok)
    summary = summarise(config, selection, run_id, rows, listed, works, ok, pairs, time.perf_counter() - run.started)
    summary["paired_cloth"] = paired
    summary["child_runs"] = sorted(children.values())
    summary["failed_shards"] = failed_shards
    failure = failure_reason(summary, policy.max_failed_fraction, unfinished)
    if failure is None:
        new_garments = sorted({row["stem"] for row in rows if row["kind"] == GARMENT and row["stem"]}
                              & set(ok[GARMENT].values()))
        summary["started"] = {
            "tryon": chain.start_tryon(policy, config, new_garments, sorted(ok[PERSON].values()), logger),
            "train": chain.start_train(policy, config, len(pairs), logger),
        }
    if planned or children or paired["rows"]:  # an unchanged catalog's run writes nothing
        write_summary(out, config.split, run_id, summary)
    log_failed_items(summary["failed"], logger)
    publish(summary, out, rows, current, keyed=True, failure=failure)
    logger.info(
        "run %s: processed %d persons (%d failed) and %d garments (%d failed) in %.1f s; the dataset holds "
        "%d persons and %d garments",
        run_id, summary["persons"]["total"], summary["persons"]["error"], summary["garments"]["total"],
        summary["garments"]["error"], summary["seconds"], len(ok[PERSON]), len(ok[GARMENT]),
    )
    if failure is not None:
        logger.error("run %s failed: %s", run_id, failure)
        raise RunFailed(failure, summary)
    return summary


def run_part(config: PreprocessConfig, selection: Selection, work_list: str) -> dict[str, Any]:
    """A child run: re-plan the items of a parent's work list against the manifest (a rerun skips what
    is done), process them, summarise. The parent writes the pairs file and judges the whole run."""
    logger = get_run_logger()
    started = time.perf_counter()
    out = Store(config.out, config.storage_options)
    part = read_work_list(out, work_list)
    run_id = part.run_id
    weights = resolve_weights(config)
    check_parser_weights(config, weights)
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
    summary = summarise(config, selection, run_id, rows, listed, works, ok, [], time.perf_counter() - started)
    summary["work_list"] = work_list
    summary["failed_shards"] = failed_shards
    write_summary(out, config.split, run_id, summary)
    log_failed_items(summary["failed"], logger)
    failure = shards_failure(failed_shards) if failed_shards else None
    publish(summary, out, rows, current, keyed=False, failure=failure)
    if failed_shards:  # the parent sees this run Failed and says so; the other shards' rows stand
        raise RunFailed(shards_failure(failed_shards), summary)
    return summary


def ok_listed(current, listed: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Per kind, key -> stem of the listed items whose every stage is ok in the current view."""
    return {kind: {k: s for k, s in ok_items(current, kind, stages_for(kind)).items() if k in listed[kind]}
            for kind in (PERSON, GARMENT)}


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


def collect_shards(futures: dict, logger: Any) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Wait for every shard, reporting progress as each lands; a failed shard never stops the others."""
    progress = RunProgress(len(futures), "Shards finished")
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    for future in as_completed(list(futures)):
        result = future.result(raise_on_failure=False)
        if isinstance(result, BaseException):
            reason = redact(f"{type(result).__name__}: {result}")
            failed.append({"shard": futures[future], "error": reason})
            logger.error("shard %s failed: %s", futures[future], reason)
        else:
            rows.extend(result)
        progress.advance()
    return rows, sorted(failed, key=lambda failure: failure["shard"])


def shards_failure(failed: list[dict[str, str]]) -> str:
    """Why a run with failed shard tasks ends Failed (their items get no rows: the next run does them)."""
    count = f"{len(failed)} shard{'' if len(failed) == 1 else 's'}"
    shown = "; ".join(f"{failure['shard']}: {failure['error']}" for failure in failed[:3])
    return f"{count} failed after their retries, their items are left for the next run: {shown}"


def failure_reason(summary: dict[str, Any], max_failed_fraction: float, unfinished: dict[str, str]) -> str | None:
    """Why the run ends Failed (child runs or shards that did not complete, too many failed items), or None."""
    if summary.get("failed_shards"):
        return shards_failure(summary["failed_shards"])
    if unfinished:
        listed = ", ".join(f"{run} {state}" for run, state in sorted(unfinished.items()))
        return f"{len(unfinished)} of {len(summary['child_runs'])} child runs did not complete: {listed}"
    processed = summary["persons"]["total"] + summary["garments"]["total"]
    failed = summary["persons"]["error"] + summary["garments"]["error"]
    if processed and failed / processed > max_failed_fraction:
        codes = ", ".join(f"{code} {count}" for code, count in sorted(summary["errors"].items()))
        return (f"{failed} of {processed} items failed ({failed / processed:.1%} > max_failed_fraction "
                f"{max_failed_fraction:.1%}): {codes}")
    return None


def collect(futures: list, description: str = "Shards finished") -> list[dict[str, Any]]:
    """Wait for every shard's rows, reporting progress (a progress artifact, the CLI's bar) as each lands."""
    progress = RunProgress(len(futures), description)
    rows: list[dict[str, Any]] = []
    for future in as_completed(futures):
        rows.extend(future.result())
        progress.advance()
    return rows


def pairs_of(
    config: PreprocessConfig, layout, worn_pairs: list[tuple[str, str]], ok: dict[str, dict[str, str]]
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Who wears what (person stem -> garment stem) and the split's pairs, over everything the dataset
    holds: train pairs each person with what they wear (`worn_pairs`: the catalog's, by key), test with
    a garment they don't."""
    worn = {}
    for person_key, garment_key in worn_pairs:
        if person_key in ok[PERSON] and garment_key in ok[GARMENT]:
            worn[ok[PERSON][person_key]] = ok[GARMENT][garment_key]
    if layout.name == "vitonhd" and layout.pairs_file is None:
        # VITON-HD's own convention: image/X.jpg wears cloth/X.jpg.
        garment_stems = set(ok[GARMENT].values())
        worn = {stem: stem for stem in ok[PERSON].values() if stem in garment_stems}
    if config.split == "train":
        pairs = sorted(worn.items())
    else:
        pairs = unworn_pairs(list(ok[PERSON].values()), list(ok[GARMENT].values()), worn)
    return worn, pairs


def write_pairs(out: Store, split: str, pairs: list[tuple[str, str]]) -> None:
    """`<out>/<split>_pairs.txt`, rewritten only when its content changes."""
    lines = "".join(f"{contract.person_image_name(p)} {contract.cloth_image_name(g)}\n" for p, g in pairs)
    name = contract.pairs_file_name(split)
    if not out.exists(name) or out.read_text(name) != lines:  # object stores bill and notify every PUT
        out.write_text(name, lines)


def pairing_work(run: Run, current, listed: dict[str, dict[str, str]]) -> tuple[PairingWork, dict, list]:
    """The paired cloth each usable person should have (`tasks.engine.paired_cloth`), against what the dataset holds."""
    ok = ok_listed(current, listed)
    worn, pairs = pairs_of(run.config, run.layout, run.worn_pairs, ok)
    pairing = plan_pairings(run.out, run.config.split, current, ok, worn, pairs, listed[GARMENT])
    return pairing, ok, pairs


def summarise(
    config: PreprocessConfig,
    selection: Selection,
    run_id: str,
    rows: list[dict],
    listed: dict[str, dict[str, str]],
    works: dict[str, list[WorkItem]],
    ok: dict[str, dict[str, str]],
    pairs: list,
    seconds: float,
) -> dict[str, Any]:
    """What this run did (processed, failed, per stage) and what the dataset now holds."""
    failed: dict[tuple[str, str], dict] = {}
    processed: dict[str, set[str]] = {PERSON: set(), GARMENT: set()}
    for row in rows:
        processed[row["kind"]].add(row["key"])
        if row["status"] == "error":
            failed.setdefault((row["kind"], row["key"]), row)

    def counts(kind: str) -> dict[str, int]:
        errors = sum(1 for (k, _) in failed if k == kind)
        return {"total": len(processed[kind]), "ok": len(processed[kind]) - errors, "error": errors}

    stage_stats = {}
    for stage in ALL_STAGES:
        mine = [row for row in rows if row["stage"] == stage]
        if mine:
            total_ms = sum(row["ms"] or 0.0 for row in mine)
            stage_stats[stage] = {
                "items": len(mine),
                "error": sum(row["status"] == "error" for row in mine),
                "mean_ms": total_ms / len(mine),
                "total_ms": total_ms,
            }
    n_processed = len(processed[PERSON]) + len(processed[GARMENT])
    return {
        "run_id": run_id,
        "flow_run_id": str(flow_run.get_id() or ""),
        "catalog": redact(config.catalog),
        "out": redact(config.out),
        "split": config.split,
        "parser": config.parser,
        "agnostic_recipe": config.agnostic_recipe,
        "selection": selection.model_dump(mode="json"),
        "listed": {"persons": len(listed[PERSON]), "garments": len(listed[GARMENT])},
        "planned": {"persons": len(works[PERSON]), "garments": len(works[GARMENT])},
        "persons": counts(PERSON),
        "garments": counts(GARMENT),
        "errors": dict(Counter(row["error_code"] for row in failed.values())),
        "failed": [
            {"kind": kind, "key": key, "stage": row["stage"], "error_code": row["error_code"],
             "error_message": row["error_message"], "source": redact(row.get("source_url") or "")}
            for (kind, key), row in sorted(failed.items())
        ],
        "stages": stage_stats,
        "dataset": {"persons": len(ok[PERSON]), "garments": len(ok[GARMENT]), "pairs": len(pairs)},
        "pairs": len(pairs),
        "seconds": seconds,
        "images_per_second": n_processed / seconds if seconds > 0 else 0.0,
    }
