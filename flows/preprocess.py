"""The `preprocess` flow: catalog photos in, a VITON-HD dataset out.

Plan: list the catalog, cut persons and garments into shards, map one task run per shard and stage
(ingest -> pose -> parse -> agnostic for persons, ingest -> cloth mask for garments), write each
shard's manifest part last, then the pairs file, the run summary and the UI artifacts.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Literal

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from tasks import contract
from tasks.catalog import (
    GARMENT,
    PERSON,
    check_unique_stems,
    detect_layout,
    list_items,
    plan_shards,
    read_worn_pairs,
    unworn_pairs,
)
from tasks.config import DEFAULT_MAX_PIXELS, DEFAULT_SHARD_SIZE, PreprocessConfig
from tasks.manifest import STAGES, write_summary
from tasks.shards import agnostic_shard, cloth_mask_shard, finish_shard, ingest_shard, parse_shard, pose_shard
from tasks.storage import Store

# The CLI listens here to draw its progress bar; records carry `done` and `total` shards.
progress_logger = logging.getLogger("vitonprep.progress")
progress_logger.propagate = False  # for progress bars, not for the console log


def new_run_id() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


@flow(name="preprocess", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=False)
def preprocess(
    catalog: str,
    out: str,
    split: Literal["test", "train"] = "test",
    shard_size: int = DEFAULT_SHARD_SIZE,
    parser: str = "geometric",
    fit: Literal["pad", "crop"] = "pad",
    agnostic_recipe: Literal["hrviton", "vitonhd"] = "hrviton",
    pose_model: str | None = None,
    cloth_mask_model: str | None = None,
    visibility_threshold: float = 0.5,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Turn the catalog at `catalog` into a VITON-HD dataset at `out`; return the run summary.

    Args:
        catalog: catalog root URL: persons/ + garments/ (+ pairs.csv), or image/ + cloth/.
        out: dataset root URL; outputs go under <out>/<split>/.
        split: the dataset split to write.
        shard_size: images per task run.
        parser: 'geometric' (bundled, approximate) or 'yolo:<weights URL>'.
        fit: how other aspect ratios reach 768x1024: pad with the background, or crop around the person.
        agnostic_recipe: the clothing-agnostic image recipe, HR-VITON's or VITON-HD's.
        pose_model: URL of a MediaPipe Tasks .task pose model; empty for the bundled model.
        cloth_mask_model: URL of a ClothUNet checkpoint; empty for classical background removal.
        visibility_threshold: joints MediaPipe sees less well than this are written as 0,0,0.
        max_pixels: larger images are rejected as decompression bombs.
        storage_options: fsspec options for every URL (endpoint_url, profile, ...).
    """
    config = PreprocessConfig(
        catalog=catalog,
        out=out,
        split=split,
        shard_size=shard_size,
        parser=parser,
        fit=fit,
        agnostic_recipe=agnostic_recipe,
        pose_model=pose_model,
        cloth_mask_model=cloth_mask_model,
        visibility_threshold=visibility_threshold,
        max_pixels=max_pixels,
        storage_options=storage_options or {},
    )
    return run_preprocess(config)


def run_preprocess(config: PreprocessConfig) -> dict[str, Any]:
    """The flow's body: list, plan, map the stages over shards, collect, write pairs and summary."""
    logger = get_run_logger()
    started = time.perf_counter()
    run_id = new_run_id()
    catalog = Store(config.catalog, config.storage_options)
    layout = detect_layout(catalog)
    persons = list(list_items(catalog, layout, PERSON))
    garments = list(list_items(catalog, layout, GARMENT))
    check_unique_stems(persons)
    check_unique_stems(garments)
    person_shards = plan_shards(persons, config.shard_size)
    garment_shards = plan_shards(garments, config.shard_size)
    logger.info(
        "run %s: %d persons in %d shards, %d garments in %d shards (%s layout)",
        run_id, len(persons), len(person_shards), len(garments), len(garment_shards), layout.name,
    )

    cfg = unmapped(config)
    ingested = ingest_shard.map(cfg, person_shards)
    posed = pose_shard.map(cfg, person_shards, ingested)
    parsed = parse_shard.map(cfg, person_shards, posed)
    freed = agnostic_shard.map(cfg, person_shards, parsed)
    person_parts = finish_shard.map(
        cfg,
        unmapped(run_id),
        [f"person-{i:05d}" for i in range(len(person_shards))],
        person_shards,
        [list(stages) for stages in zip(ingested, posed, parsed, freed)],
    )
    garment_ingested = ingest_shard.map(cfg, garment_shards)
    masked = cloth_mask_shard.map(cfg, garment_shards, garment_ingested)
    garment_parts = finish_shard.map(
        cfg,
        unmapped(run_id),
        [f"garment-{i:05d}" for i in range(len(garment_shards))],
        garment_shards,
        [list(stages) for stages in zip(garment_ingested, masked)],
    )

    rows = collect(list(person_parts) + list(garment_parts))
    out = Store(config.out, config.storage_options)
    pairs = write_pairs(out, config, catalog, layout, rows)
    summary = summarise(config, run_id, rows, pairs, time.perf_counter() - started)
    write_summary(out, config.split, run_id, summary)
    publish(summary)
    logger.info(
        "run %s: %d/%d persons and %d/%d garments ok in %.1f s",
        run_id, summary["persons"]["ok"], summary["persons"]["total"],
        summary["garments"]["ok"], summary["garments"]["total"], summary["seconds"],
    )
    return summary


def collect(futures: list) -> list[dict[str, Any]]:
    """Wait for every shard's manifest part, reporting progress as each lands."""
    total = len(futures)
    artifact = create_progress_artifact(0.0, description="Shards finished") if total else None
    progress_logger.info("start", extra={"done": 0, "total": total})
    rows: list[dict[str, Any]] = []
    for done, future in enumerate(as_completed(futures), start=1):
        rows.extend(future.result())
        if artifact is not None:
            update_progress_artifact(artifact, 100.0 * done / total)
        progress_logger.info("shard", extra={"done": done, "total": total})
    return rows


def write_pairs(out: Store, config: PreprocessConfig, catalog: Store, layout, rows: list[dict]) -> list[tuple[str, str]]:
    """`<out>/<split>_pairs.txt`: train pairs each person with what they wear, test with what they don't."""
    ok = {(row["kind"], row["key"]): row["stem"] for row in rows if row["status"] == "ok"}
    worn = {}
    for person_key, garment_key in read_worn_pairs(catalog, layout):
        if (PERSON, person_key) in ok and (GARMENT, garment_key) in ok:
            worn[ok[PERSON, person_key]] = ok[GARMENT, garment_key]
    if layout.name == "vitonhd" and layout.pairs_file is None:
        # VITON-HD's own convention: image/X.jpg wears cloth/X.jpg.
        garment_stems = {stem for (kind, _), stem in ok.items() if kind == GARMENT}
        worn = {stem: stem for (kind, _), stem in ok.items() if kind == PERSON and stem in garment_stems}
    if config.split == "train":
        pairs = sorted(worn.items())
    else:
        person_stems = [stem for (kind, _), stem in ok.items() if kind == PERSON]
        garment_stems = [stem for (kind, _), stem in ok.items() if kind == GARMENT]
        pairs = unworn_pairs(person_stems, garment_stems, worn)
    lines = "".join(f"{contract.person_image_name(p)} {contract.cloth_image_name(g)}\n" for p, g in pairs)
    out.write_text(contract.pairs_file_name(config.split), lines)
    return pairs


def summarise(config: PreprocessConfig, run_id: str, rows: list[dict], pairs: list, seconds: float) -> dict[str, Any]:
    def counts(kind: str) -> dict[str, int]:
        mine = [row for row in rows if row["kind"] == kind]
        ok = sum(row["status"] == "ok" for row in mine)
        return {"total": len(mine), "ok": ok, "error": len(mine) - ok}

    stage_ms = {}
    for stage in STAGES:
        values = [row[f"{stage}_ms"] for row in rows if row.get(f"{stage}_ms") is not None]
        if values:
            stage_ms[stage] = {"items": len(values), "mean_ms": sum(values) / len(values), "total_ms": sum(values)}
    return {
        "run_id": run_id,
        "flow_run_id": str(flow_run.get_id() or ""),
        "catalog": config.catalog,
        "out": config.out,
        "split": config.split,
        "parser": config.parser,
        "agnostic_recipe": config.agnostic_recipe,
        "persons": counts(PERSON),
        "garments": counts(GARMENT),
        "errors": dict(Counter(row["error_code"] for row in rows if row["status"] == "error")),
        "failed": [
            {"kind": row["kind"], "key": row["key"], "error_code": row["error_code"], "error_message": row["error_message"]}
            for row in rows
            if row["status"] == "error"
        ],
        "pairs": len(pairs),
        "stages": stage_ms,
        "seconds": seconds,
        "images_per_second": len(rows) / seconds if seconds > 0 else 0.0,
    }


def publish(summary: dict[str, Any]) -> None:
    """The run's stage table and a short markdown report, for the Prefect UI."""
    table = [
        {"stage": stage, "items": stats["items"], "mean_ms": round(stats["mean_ms"], 1)}
        for stage, stats in summary["stages"].items()
    ]
    create_table_artifact(table, key="preprocess-stages", description=f"Per-stage timings, run {summary['run_id']}")
    errors = "\n".join(f"| {code} | {count} |" for code, count in sorted(summary["errors"].items())) or "| none | 0 |"
    create_markdown_artifact(
        f"# preprocess {summary['run_id']}\n\n"
        f"- persons: {summary['persons']['ok']} ok of {summary['persons']['total']}\n"
        f"- garments: {summary['garments']['ok']} ok of {summary['garments']['total']}\n"
        f"- pairs written: {summary['pairs']}\n"
        f"- {summary['seconds']:.1f} s, {summary['images_per_second']:.2f} images/s\n\n"
        f"| error code | items |\n|---|---|\n{errors}\n",
        key="preprocess-summary",
        description="Run summary",
    )
