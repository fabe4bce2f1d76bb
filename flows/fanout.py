"""Fan-out: a large preprocess plan runs as child flow runs that any worker in the pool picks up.

The parent writes one work list per child (`_work/<split>/plans/<run id>/part-NNNN-of-MMMM.json`),
starts each child from the `preprocess/shard-range` deployment with `run_deployment` (as a subflow,
so the UI links parent and children; with an idempotency key, so a repeated request never starts a
part twice) and waits for them through the API, updating its progress artifact as they finish. The
children write the manifest; their rows are the parent's result.
"""

from __future__ import annotations

import time
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment
from prefect.runtime import deployment, flow_run

from flows.report import RunProgress
from tasks.engine.plan import child_run_id, work_list_path, write_work_list
from tasks.infra.store import Store
from tasks.records.catalog import WorkItem
from tasks.records.config import Selection
from tasks.records.manifest import read_run
from tasks.stages.registry import PreprocessConfig

CHILD_DEPLOYMENT = "preprocess/shard-range"
POLL_S = 2.0  # how often the parent asks the API about its children


def in_deployment() -> bool:
    """Is this flow run a deployment's (so workers exist to take child runs)?"""
    return deployment.get_id() is not None


def start_children(
    config: PreprocessConfig, selection: Selection, parts: list[dict[str, list[WorkItem]]], run_id: str
) -> dict[str, str]:
    """Write each part's work list and start its child run; returns Prefect flow run id -> our child run id."""
    out = Store(config.out, config.storage_options)
    children = {}
    for part, items in enumerate(parts, start=1):
        rel = work_list_path(config.split, run_id, part, len(parts))
        write_work_list(out, rel, child_run_id(run_id, part), items)
        child = run_deployment(
            CHILD_DEPLOYMENT,
            parameters={"config": config.model_dump(mode="json"), "work_list": rel,
                        "full_refresh": selection.full_refresh},
            flow_run_name=f"{flow_run.get_name()} · part {part} of {len(parts)}",
            timeout=0,
            as_subflow=True,
            idempotency_key=f"{flow_run.get_id()}:{rel}",
        )
        children[str(child.id)] = child_run_id(run_id, part)
    return children


def wait_for_children(children: dict[str, str], logger: Any) -> dict[str, str]:
    """Poll the API until every child run is final; returns Prefect id -> final state name."""
    progress = RunProgress(len(children), "Child runs finished")
    final: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        while len(final) < len(children):
            pending = [child for child in children if child not in final]
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=pending)))
            for run in runs:
                if run.state is not None and run.state.is_final():
                    final[str(run.id)] = run.state.name
                    progress.advance()
                    logger.info("child run %s (%s) ended %s; %d of %d done",
                                run.name, children[str(run.id)], run.state.name, len(final), len(children))
            if len(final) < len(children):
                time.sleep(POLL_S)
    return final


def children_rows(config: PreprocessConfig, children: dict[str, str]) -> list[dict[str, Any]]:
    """Every manifest row the child runs wrote (a failed child's finished shards included)."""
    out = Store(config.out, config.storage_options)
    rows: list[dict[str, Any]] = []
    for run_id in children.values():
        rows.extend(read_run(out, config.split, run_id).to_pylist())
    return rows
