"""The `tryon` flow: a VITON-HD dataset and checkpoints in, try-on images out.

Plan: load the networks once (the checkpoint ids name the run's weights), list the pairs, skip those
already rendered with the same weights and options, cut the rest into shards, map `render_shard` over
them (seg -> GMM -> ALIAS, contract §1.8; each shard writes its images, then its manifest part), then
the run summary, a contact sheet and the UI artifacts. Without trained checkpoints the networks are
randomly initialised: the run still goes end to end and says so in the log, the manifest and the summary.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from typing import Any

import numpy as np
from PIL import Image
from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import (
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.report import run_parameter
from flows.runs import collect, new_run_id
from tasks.engine.tryon import (
    CONTACT_SHEET_NAME,
    OK,
    RESULTS_DIR,
    LoadedNetworks,
    RenderSettings,
    cached_networks,
    effective_precision,
    existing_results,
    input_versions,
    inputs_fingerprint,
    latest_rows,
    options_fingerprint,
    pair_input_files,
    plan_pairs,
    plan_tryon_shards,
    read_tryon_rows,
    render_shard,
    result_key,
    run_folder,
    select_pending,
    shard_name,
    write_summary,
)
from tasks.infra.redaction import redact
from tasks.infra.runtime import use_storage_secret
from tasks.infra.store import Store
from tasks.records.config import TryOnConfig
from tasks.stages.contact_sheet import contact_sheet, thumbnail_data_uri
from vitonhd_models import contract
from vitonhd_models.data import detect_split_layout
from vitonhd_models.pipeline import resolve_device

CONTACT_SHEET_PAIRS = 8
CONTACT_SHEET_THUMBNAIL = 512  # pixels high, embedded in the UI artifact
SHARDS_IN_FLIGHT = 2  # render_shard task runs at once: one on the GPU while the next loads its inputs
STALE_TEMPORARY_S = 3600.0  # younger partial files may belong to a run writing to the same output now


def run_name() -> str:
    """The flow run's name in the UI: which pairs of which dataset."""
    config = run_parameter("config", TryOnConfig)
    if config is None:
        return "tryon"
    if config.persons and config.garments:
        what = f"{len(config.garments)} garments x {len(config.persons)} persons"
    elif config.pairs:
        what = f"pairs of {redact(config.pairs)}"
    else:
        what = contract.pairs_file_name(config.split)
    return f"{config.split}: {what} of {redact(config.dataset)}"


@flow(name="tryon", flow_run_name=run_name, task_runner=ThreadPoolTaskRunner(max_workers=SHARDS_IN_FLIGHT), log_prints=False)
def tryon(config: TryOnConfig) -> dict[str, Any]:
    """Render every pair through VITON-HD's seg, GMM and ALIAS networks; return the run summary.

    Args:
        config: the dataset and its pairs (a pairs file, or persons x garments), the checkpoints, the output
            and how to render (batch, device, precision, seed, agnostic image).
    """
    use_storage_secret(config.storage_secret_block)
    return run_tryon(config)


def run_tryon(config: TryOnConfig) -> dict[str, Any]:
    """The flow's body: networks, plan, skip, map over shards, collect, summarise."""
    logger = get_run_logger()
    started = time.perf_counter()
    run_id = new_run_id()
    dataset = Store(config.dataset, config.storage_options)
    out = Store(config.out, config.storage_options)
    leftovers = out.remove_temporaries(RESULTS_DIR, modified_before=time.time() - STALE_TEMPORARY_S)
    if leftovers:
        logger.info("removed %d partial files left by an interrupted run", leftovers)
    split_store = dataset.child(config.split)
    layout = detect_split_layout(split_store)  # fails fast on a URL that holds no such split

    device = resolve_device(config.device)
    precision = effective_precision(config.precision, device)
    if precision != config.precision:
        logger.warning("precision %s is honoured on CUDA only: ignored, running %s on %s", config.precision, precision,
                       device)
    loaded = cached_networks(config.checkpoints, device, config.seed, config.storage_options)
    if loaded.random_init:
        logger.warning(random_init_warning(loaded.random_init))
    settings = RenderSettings(run_id, device, precision, options_fingerprint(config, loaded.arch, precision))

    pairs = plan_pairs(config, dataset)
    versions = input_versions(split_store, layout, config.agnostic)
    inputs = {
        (person, garment): inputs_fingerprint(versions, pair_input_files(layout, person, garment, config.agnostic))
        for person, garment in pairs
    }
    todo, skipped = select_pending(
        pairs, latest_rows(read_tryon_rows(out)), loaded.label, settings.fingerprint, existing_results(out), inputs
    )
    shards = plan_tryon_shards(todo, config.shard_size)
    logger.info(
        "run %s: %d pairs, %d already rendered with these checkpoints, %d to render in %d shards on %s (%s) "
        "at %dx%d with %s",
        run_id, len(pairs), len(skipped), len(todo), len(shards), device, precision,
        loaded.arch.load_width, loaded.arch.load_height, loaded.label,
    )

    parts = render_shard.map(
        unmapped(config), unmapped(settings), [shard_name(i) for i in range(len(shards))], shards
    )
    rows = collect(list(parts), "Try-on shards finished")

    summary = summarise(config, settings, loaded, rows, len(pairs), skipped, time.perf_counter() - started)
    summary["contact_sheet"] = write_contact_sheet(config, dataset, out, rows, skipped)
    if summary["contact_sheet"]:
        create_markdown_artifact(
            f"# tryon contact sheet\n\nperson | cloth | result\n\n"
            f"![contact sheet]({thumbnail_data_uri(out.read_bytes(CONTACT_SHEET_NAME), CONTACT_SHEET_THUMBNAIL)})\n\n"
            f"Full size: `{summary['contact_sheet']}`\n",
            key="tryon-contact-sheet",
            description=f"Try-on contact sheet, run {run_id}",
        )
    write_summary(out, run_id, summary)
    publish(summary)
    logger.info(
        "run %s: %d ok, %d failed, %d skipped of %d pairs in %.1f s (%.2f pairs/s)",
        run_id, summary["pairs"]["ok"], summary["pairs"]["error"], summary["pairs"]["skipped"],
        summary["pairs"]["total"], summary["seconds"], summary["pairs_per_s"],
    )
    if loaded.random_init:
        logger.warning(random_init_warning(loaded.random_init))
    return summary


def random_init_warning(stages: list[str]) -> str:
    return (
        f"randomly initialised networks: {', '.join(stages)} (no trained checkpoint found); "
        "the try-on results are not meaningful"
    )


def summarise(
    config: TryOnConfig,
    settings: RenderSettings,
    loaded: LoadedNetworks,
    rows: list[dict[str, Any]],
    total: int,
    skipped: list[tuple[str, str]],
    seconds: float,
) -> dict[str, Any]:
    """What this run did: counts, failures, weights, timings."""
    ok = [row for row in rows if row["status"] == OK]
    failed = sorted((row for row in rows if row["status"] != OK), key=lambda row: (row["person"], row["garment"]))
    timings = {name: sum(row.get(name) or 0.0 for row in rows) for name in ("load_ms", "infer_ms", "write_ms")}
    return {
        "run_id": settings.run_id,
        "flow_run_id": str(flow_run.get_id() or ""),
        "dataset": redact(config.dataset),
        "out": redact(config.out),
        "split": config.split,
        "pairs_source": (
            "persons x garments" if config.persons is not None
            else redact(config.pairs) if config.pairs is not None
            else contract.pairs_file_name(config.split)
        ),
        "checkpoints": redact(config.checkpoints) if config.checkpoints else None,
        "checkpoint": loaded.label,
        "checkpoint_ids": dict(loaded.ids),
        "random_init": bool(loaded.random_init),
        "random_init_networks": list(loaded.random_init),
        "warning": random_init_warning(loaded.random_init) if loaded.random_init else None,
        "architecture": loaded.arch.to_dict(),
        "device": settings.device,
        "precision": settings.precision,
        "options_fingerprint": settings.fingerprint,
        "agnostic": config.agnostic,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "shard_size": config.shard_size,
        "pairs": {"total": total, "ok": len(ok), "error": len(failed), "skipped": len(skipped)},
        "errors": dict(Counter(row["error_code"] for row in failed)),
        "failed": [
            {"person": row["person"], "garment": row["garment"], "error_code": row["error_code"],
             "error_message": row["error_message"]}
            for row in failed
        ],
        "timings": {
            **{f"{name}_total": value for name, value in timings.items()},
            **{f"{name}_per_pair": value / len(ok) if ok else 0.0 for name, value in timings.items()},
        },
        "manifest": run_folder(settings.run_id),
        "seconds": seconds,
        "pairs_per_s": len(ok) / seconds if seconds > 0 else 0.0,
    }


def read_rgb(store: Store, rel: str) -> np.ndarray | None:
    try:
        with Image.open(io.BytesIO(store.read_bytes(rel))) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError):  # a missing or unreadable file is a placeholder tile
        return None


def write_contact_sheet(
    config: TryOnConfig, dataset: Store, out: Store, rows: list[dict[str, Any]], skipped: list[tuple[str, str]]
) -> str | None:
    """person | cloth | result for up to 8 pairs (this run's first, then already rendered ones)."""
    chosen = [(row["person"], row["garment"], row["result"]) for row in rows if row["status"] == OK]
    chosen.sort()
    chosen += [(person, garment, result_key(person, garment)) for person, garment in skipped]
    chosen = chosen[:CONTACT_SHEET_PAIRS]
    if not chosen:
        return None
    split = dataset.child(config.split)
    sheet = contact_sheet([
        (f"{person} + {garment}", [
            read_rgb(split, f"{contract.DIR_IMAGE}/{person}"),
            read_rgb(split, f"{contract.DIR_CLOTH}/{garment}"),
            read_rgb(out, result),
        ])
        for person, garment, result in chosen
    ])
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="PNG")
    out.write_bytes(CONTACT_SHEET_NAME, buffer.getvalue())
    return redact(out.url_of(CONTACT_SHEET_NAME))


def publish(summary: dict[str, Any]) -> None:
    """A table of counts and a short markdown report, for the Prefect UI."""
    counts = summary["pairs"]
    table = [{"status": status, "pairs": counts[status]} for status in ("ok", "error", "skipped")]
    table.append({"status": "total", "pairs": counts["total"]})
    create_table_artifact(table, key="tryon-pairs", description=f"Try-on pairs, run {summary['run_id']}")
    errors = "\n".join(f"| {code} | {count} |" for code, count in sorted(summary["errors"].items())) or "| none | 0 |"
    warning = f"> **Warning:** {summary['warning']}\n\n" if summary["warning"] else ""
    sheet = f"- contact sheet: {summary['contact_sheet']}\n" if summary["contact_sheet"] else ""
    timings = summary["timings"]
    create_markdown_artifact(
        f"# tryon {summary['run_id']}\n\n{warning}"
        f"- pairs: {counts['ok']} ok, {counts['error']} failed, {counts['skipped']} skipped of {counts['total']}\n"
        f"- checkpoints: `{summary['checkpoint']}`\n"
        f"- {summary['device']} {summary['precision']}, "
        f"{summary['architecture']['load_width']}x{summary['architecture']['load_height']}\n"
        f"- per pair: load {timings['load_ms_per_pair']:.0f} ms, infer {timings['infer_ms_per_pair']:.0f} ms, "
        f"write {timings['write_ms_per_pair']:.0f} ms\n"
        f"- {summary['seconds']:.1f} s, {summary['pairs_per_s']:.2f} pairs/s\n{sheet}\n"
        f"| error code | pairs |\n|---|---|\n{errors}\n",
        key="tryon-summary",
        description="Try-on run summary",
    )
