"""The preprocess run's UI artifacts: a keyed per-stage table and a markdown report with a contact sheet."""

from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from prefect import get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run
from pydantic import BaseModel, ValidationError

from tasks.infra.redaction import redact
from tasks.infra.store import Store
from tasks.records.catalog import GARMENT, PERSON
from tasks.records.manifest import item_view, run_folder
from tasks.stages.contact_sheet import dataset_contact_sheet, encode_png, thumbnail_data_uri

# The CLI listens here to draw its progress bar; records carry `done` and `total`.
progress_logger = logging.getLogger("vitonprep.progress")
progress_logger.propagate = False  # for progress bars, not for the console log


# The CLI listens here to print the run's UI link as soon as the run starts (a server is configured).
run_logger = logging.getLogger("vitonprep.run")
run_logger.propagate = False


M = TypeVar("M", bound=BaseModel)


def run_parameter(name: str, model: type[M]) -> M | None:
    """A parameter group of the current flow run as its model, for the run's name: a direct call holds the
    model, a deployment run its JSON (a missing group is the model's defaults; None if it has none)."""
    value = flow_run.get_parameters().get(name, {})
    if isinstance(value, model):
        return value
    try:
        return model.model_validate(value)
    except ValidationError:
        return None


def announce_run() -> None:
    """Tell listeners (the CLI) which flow run this is."""
    from prefect.runtime import flow_run

    run_logger.info("started", extra={"flow_run_id": str(flow_run.get_id())})


def flow_run_page(ui_url: str, flow_run_id: str) -> str:
    """The flow run's page in the UI the server opens at its root (the new UI where it is the default)."""
    import json
    import urllib.request

    base = ui_url.rstrip("/")
    try:
        with urllib.request.urlopen(f"{base}/ui-settings", timeout=5) as response:
            settings = json.loads(response.read())
    except (OSError, ValueError):
        settings = {}  # an older server, without the setting: its one UI at the root
    if settings.get("default_ui") == "v2" and settings.get("v2_base_url"):
        base += settings["v2_base_url"].rstrip("/")
    return f"{base}/runs/flow-run/{flow_run_id}"


class RunProgress:
    """One progress artifact per run (and the CLI's bar), advanced as each unit of work finishes."""

    def __init__(self, total: int, description: str):
        self.total, self.done = total, 0
        self.artifact = create_progress_artifact(0.0, description=description) if total else None
        progress_logger.info("start", extra={"done": 0, "total": total})

    def advance(self) -> None:
        self.done += 1
        if self.artifact is not None:
            update_progress_artifact(self.artifact, 100.0 * self.done / self.total)
        progress_logger.info("done", extra={"done": self.done, "total": self.total})


CONTACT_SHEET_ITEMS = 6  # items shown in the run's contact sheet artifact
FAILED_ITEMS_LOGGED = 50  # failed items that get a WARNING line each; the rest are counted
CONTACT_SHEET_HEIGHT = 1200  # pixels, as embedded in the artifact


def artifact_key(name: str) -> str:
    """`preprocess-<deployment>-<name>`: one history per deployment on the Artifacts page."""
    from prefect.runtime import deployment

    where = re.sub(r"[^a-z0-9]+", "-", (deployment.get_name() or "local").lower()).strip("-")
    return f"preprocess-{where}-{name}"


def stage_table(summary: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per stage: items, ok, failed, mean and total time, and the error codes with their counts."""
    table = []
    for stage, stats in summary["stages"].items():
        codes = Counter(row["error_code"] for row in rows if row["stage"] == stage and row["status"] == "error")
        table.append({
            "stage": stage,
            "items": stats["items"],
            "ok": stats["items"] - stats["error"],
            "failed": stats["error"],
            "mean_ms": round(stats["mean_ms"], 1),
            "total_s": round(stats["total_ms"] / 1000.0, 1),
            "error_codes": ", ".join(f"{code} {n}" for code, n in sorted(codes.items())) or "-",
        })
    return table


def failed_items_table(failed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The run summary's failed items (one per item, the stage it failed at) as the artifact's rows."""
    return [{"kind": item["kind"], "key": item["key"], "stage": item["stage"], "error_code": item["error_code"],
             "reason": redact(item["error_message"] or ""), "source": item.get("source", "")} for item in failed]


def log_failed_items(failed: list[dict[str, Any]], logger: Any) -> None:
    """A WARNING line per failed item of the run summary (the first FAILED_ITEMS_LOGGED), then how many
    more there are."""
    for item in failed[:FAILED_ITEMS_LOGGED]:
        logger.warning("failed %s %s at %s: %s: %s", item["kind"], item["key"], item["stage"], item["error_code"],
                       redact(item["error_message"] or ""))
    if len(failed) > FAILED_ITEMS_LOGGED:
        logger.warning("... and %d more failed items (the run's failed-items artifact lists them all)",
                       len(failed) - FAILED_ITEMS_LOGGED)


def sample_items(
    rows: list[dict[str, Any]], current: pa.Table, count: int = CONTACT_SHEET_ITEMS
) -> list[dict[str, Any]]:
    """A few items this run processed, for people to look at (failures first, then persons and garments),
    as the current view holds them: every stage's outputs, also those of stages this run did not rerun."""
    status: dict[tuple[str, str], str] = {}
    for row in rows:
        if status.get((row["kind"], row["key"])) != "error":
            status[(row["kind"], row["key"])] = row["status"]
    failed = [item for item, state in status.items() if state == "error"]
    persons = [item for item, state in status.items() if state == "ok" and item[0] == PERSON]
    garments = [item for item, state in status.items() if state == "ok" and item[0] == GARMENT]
    chosen = failed[: count // 3]
    while len(chosen) < count and (persons or garments):
        for pool in (persons, persons, garments):
            if pool and len(chosen) < count:
                chosen.append(pool.pop(0))
    if not chosen:
        return []
    mine = current.filter(pc.is_in(current["key"], value_set=pa.array(sorted({key for _, key in chosen}))))
    items = {(item["kind"], item["key"]): item for item in item_view(mine)}
    return [items[item] for item in chosen if item in items]


def verdict(summary: dict[str, Any], failure: str | None) -> str:
    """How the run ends, in one line: "Completed: ..." or "Failed: <why>"."""
    if failure is not None:
        return f"Failed: {failure}"
    processed = summary["persons"]["total"] + summary["garments"]["total"]
    failed = summary["persons"]["error"] + summary["garments"]["error"]
    if not processed:
        return "Completed: nothing to do"
    return f"Completed: {processed - failed} of {processed} items ok" + (f", {failed} failed" if failed else "")


def publish(
    summary: dict[str, Any], out: Store, rows: list[dict[str, Any]], current: pa.Table, keyed: bool,
    failure: str | None = None,
) -> None:
    """The run's UI artifacts: a keyed per-stage table (a history across runs), a table of the items it
    failed, and a markdown report: the verdict first, then the counts and a contact sheet of a sample of
    the items it processed."""
    run_id = summary["run_id"]
    create_table_artifact(
        stage_table(summary, rows),
        key=artifact_key("stages") if keyed else None,
        description=f"Per-stage counts, timings and error codes, run {run_id}",
    )
    failed = failed_items_table(summary["failed"])
    create_table_artifact(
        failed or [{"kind": "-", "key": "-", "stage": "-", "error_code": "-", "reason": "no item failed", "source": "-"}],
        key=artifact_key("failed-items") if keyed else None,
        description=f"The {len(failed)} items run {run_id} failed: the stage, the code and why",
    )
    sheet = ""
    sample = sample_items(rows, current)
    if sample:
        try:
            png = encode_png(dataset_contact_sheet(out, sample))
            out.write_bytes(f"{run_folder(summary['split'], run_id)}/contact_sheet.png", png)
            sheet = (f"\n## Sample (photo, pose, parse, agnostic; garment, mask)\n\n"
                     f"![contact sheet]({thumbnail_data_uri(png, CONTACT_SHEET_HEIGHT)})\n")
        except (OSError, ValueError, KeyError, IndexError) as error:  # a report never fails a finished run
            get_run_logger().warning("no contact sheet for run %s: %s", run_id, error)
    errors = "\n".join(f"| {code} | {count} |" for code, count in sorted(summary["errors"].items())) or "| none | 0 |"
    started = "".join(
        f"- started {info['deployment']}: {info['flow_run_name']}\n"
        for info in (summary.get("started") or {}).values() if info
    )
    create_markdown_artifact(
        f"# {verdict(summary, failure)}\n\npreprocess run {run_id}\n\n"
        f"- persons: {summary['persons']['ok']} ok of {summary['persons']['total']} processed\n"
        f"- garments: {summary['garments']['ok']} ok of {summary['garments']['total']} processed\n"
        f"- the dataset holds {summary['dataset']['persons']} persons, {summary['dataset']['garments']} garments, "
        f"{summary['pairs']} pairs\n"
        f"- {summary['seconds']:.1f} s, {summary['images_per_second']:.2f} images/s\n"
        f"{started}\n"
        f"| error code | items |\n|---|---|\n{errors}\n{sheet}",
        key=artifact_key("summary") if keyed else None,
        description=f"Run {run_id}",
    )
