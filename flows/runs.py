"""What the preprocess and try-on flows share: a run's id and waiting for its mapped shard task runs."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from prefect.futures import as_completed

from flows.report import RunProgress
from tasks.infra.redaction import redact


def new_run_id() -> str:
    """`<UTC time>-<6 hex digits>`: sorts by start time, unique across runs started in the same second."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


def collect(futures: list, description: str = "Shards finished") -> list[dict[str, Any]]:
    """Wait for every shard's rows, reporting progress (a progress artifact, the CLI's bar) as each lands."""
    progress = RunProgress(len(futures), description)
    rows: list[dict[str, Any]] = []
    for future in as_completed(futures):
        rows.extend(future.result())
        progress.advance()
    return rows


def collect_shards(futures: dict, logger: Any) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Wait for every shard (future -> shard name), reporting progress as each lands; a failed shard never
    stops the others. Returns the finished shards' rows and the failed shards, each with its error."""
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
