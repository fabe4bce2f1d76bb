"""The Prefect task: one task run = one shard through every planned stage (`tasks.engine.shard`).

A bad item becomes its manifest row and the shard goes on; a storage failure raises and Prefect
retries the task (every write is atomic and every name deterministic, so a retry writes again).
"""

from __future__ import annotations

from typing import Any

from prefect import task

from tasks.engine.shard import ShardRun, process_shard
from tasks.infra.runtime import TASK_OPTIONS
from tasks.records.catalog import WorkItem
from tasks.stages.registry import PreprocessConfig


@task(name="shard", task_run_name="{shard}", **TASK_OPTIONS)
def shard_task(config: PreprocessConfig, run: ShardRun, shard: str, works: list[WorkItem]) -> list[dict[str, Any]]:
    """Run every planned stage of the shard's items in one pass; its manifest rows (also written as its part)."""
    return process_shard(config, run, shard, works)
