"""A preprocess run's summary and its verdict: what the run did and what the dataset holds (the JSON the
run writes beside its manifest part, the UI shows and the CLI prints), and why a run ends Failed.

Pure functions of the run's rows, listing and plan: the flow gathers those and its own flow run id, and
judges the run by `failure_reason`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow as pa

from tasks.infra.redaction import redact
from tasks.records.catalog import GARMENT, PERSON, WorkItem
from tasks.records.config import Selection
from tasks.records.manifest import ok_items
from tasks.stages.registry import ALL_STAGES, PreprocessConfig, stages_for


def ok_listed(current: pa.Table, listed: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Per kind, key -> stem of the listed items whose every stage is ok in the current view."""
    return {kind: {k: s for k, s in ok_items(current, kind, stages_for(kind)).items() if k in listed[kind]}
            for kind in (PERSON, GARMENT)}


def summarise(
    config: PreprocessConfig,
    selection: Selection,
    run_id: str,
    flow_run_id: str,
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
        "flow_run_id": flow_run_id,
        "catalog": redact(config.catalog),
        "out": redact(config.out),
        "split": config.split,
        "parser": config.parser,
        "agnostic_recipe": config.agnostic_recipe,
        "densepose": config.densepose,
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
