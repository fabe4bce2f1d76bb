"""The `train` flow: one VITON-HD stage (seg, gmm or alias) trained on a dataset we prepared.

Plan: read the split's pairs and hold some out, then one `train-until` task run per checkpoint interval
(each resumes from the last checkpoint, so a rerun or a retry continues where the run stopped), then
evaluate on the held-out pairs in paired mode and export `<out>/<stage>_final.pth`, which the `tryon`
flow loads. Losses per step go to the log and to Parquet; each interval leaves a sample grid.
"""

from __future__ import annotations

import json
import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from flows.report import run_parameter
from tasks.engine.training import evaluate_stage, export_final, pair_split, stage_store, train_until
from tasks.infra.redaction import redact
from tasks.infra.runtime import use_storage_secret
from tasks.records.config import TrainConfig
from tasks.stages.contact_sheet import thumbnail_data_uri
from vitonhd_models.train import latest_step, read_metrics

THUMBNAIL_HEIGHT = 384  # sample grids embedded in the UI's markdown artifact


def run_name() -> str:
    """The flow run's name in the UI: stage, steps and dataset."""
    config = run_parameter("config", TrainConfig)
    if config is None:
        return "train"
    return f"{config.stage} to step {config.steps} on {redact(config.dataset)} {config.split}"


@flow(name="train", flow_run_name=run_name, log_prints=False)
def train(config: TrainConfig) -> dict[str, Any]:
    """Train one stage of VITON-HD on config.dataset into config.out; return the run summary.

    Args:
        config: the dataset and split, the stage (seg, gmm or alias), the output, the schedule (steps,
            checkpoints), the architecture, the loss weights and the evaluation weights.
    """
    use_storage_secret(config.storage_secret_block)
    return run_train(config)


def checkpoint_steps(done: int, steps: int, every: int) -> list[int]:
    """The step counts to train up to, one task run each: every multiple of `every` past `done`, then `steps`."""
    marks = list(range(every, steps, every)) + [steps]
    return [mark for mark in marks if mark > done]


def run_train(config: TrainConfig) -> dict[str, Any]:
    logger = get_run_logger()
    started = time.perf_counter()
    pairs = pair_split(config)
    store = stage_store(config)
    done, _ = latest_step(store)
    marks = checkpoint_steps(done, config.steps, config.checkpoint_every)
    logger.info(
        "train %s: %d training pairs, %d evaluation pairs (%s); %s", config.stage, len(pairs.train),
        len(pairs.evaluation), pairs.eval_split,
        f"resuming at step {done}" if done else "starting at step 0",
    )  # fmt: skip
    segments = []
    for mark in marks:
        segment = train_until(config, mark, pairs.train)
        segments.append(segment)
        if segment.get("sample"):
            publish_sample(config, segment)
    evaluation = evaluate_stage(config, pairs.eval_split, pairs.evaluation)
    final = export_final(config)
    trained = sum(segment["steps"] for segment in segments)
    seconds = time.perf_counter() - started
    info = next((s for s in segments if "device" in s), {})
    summary = {
        "flow_run_id": str(flow_run.get_id() or ""),
        "stage": config.stage,
        "dataset": redact(config.dataset),
        "out": redact(config.out),
        "resumed_from": done,
        "steps": final["step"],
        "steps_this_run": trained,
        "training_pairs": len(pairs.train),
        "evaluation_pairs": len(pairs.evaluation),
        "evaluation": evaluation,
        "final": {**final, "weights": redact(final["weights"])},
        "segments": segments,
        "device": info.get("device"),
        "gmm_checkpoint": info.get("gmm_checkpoint"),
        "perceptual_loss": info.get("perceptual_loss"),
        "seconds": seconds,
        "steps_per_second": trained / seconds if seconds > 0 and trained else 0.0,
    }
    store.write_text("summary.json", _json(summary))
    publish(config, summary, read_metrics(store))
    return summary


def _json(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"


def publish_sample(config: TrainConfig, segment: dict[str, Any]) -> None:
    """The interval's sample grid (person | cloth | output | target per row) as a markdown artifact."""
    store = stage_store(config)
    key = f"samples/step-{segment['end']:08d}.png"
    create_markdown_artifact(
        f"# {config.stage} samples at step {segment['end']}\n\n"
        f"person | cloth | output | target\n\n![samples]({thumbnail_data_uri(store.read_bytes(key), THUMBNAIL_HEIGHT)})\n\n"
        f"Full size: `{redact(store.url_of(key))}`\n",
        key=f"train-{config.stage}-samples",
        description=f"{config.stage} sample grid, step {segment['end']}",
    )


def publish(config: TrainConfig, summary: dict[str, Any], metrics: list[dict]) -> None:
    """Loss curve table (every checkpoint interval's means) and a markdown report, for the Prefect UI."""
    table = [
        {"steps": f"{s['start'] + 1}-{s['end']}", **{k: round(v, 5) for k, v in s["mean_losses"].items()},
         "s_per_step": round(s["step_s"], 3)}
        for s in summary["segments"] if s["steps"]
    ]  # fmt: skip
    if table:
        create_table_artifact(table, key=f"train-{config.stage}-losses", description="Mean losses per interval")
    evaluation = "\n".join(
        f"| {name} | {value:.4f} |" if isinstance(value, float) else f"| {name} | {value} |"
        for name, value in summary["evaluation"].items()
    )
    notes = []
    if summary["gmm_checkpoint"] == "random-init":
        notes.append("- **The GMM was randomly initialised**: train the gmm stage first for meaningful results.")
    if summary["perceptual_loss"] and summary["perceptual_loss"] != "on":
        notes.append(f"- Perceptual loss: {summary['perceptual_loss']}.")
    create_markdown_artifact(
        f"# train {config.stage}\n\n"
        f"- steps: {summary['steps']} ({summary['steps_this_run']} this run, resumed from {summary['resumed_from']})\n"
        f"- pairs: {summary['training_pairs']} training, {summary['evaluation_pairs']} evaluation\n"
        f"- {summary['steps_per_second']:.3f} steps/s on {summary['device']}\n"
        f"- metrics rows: {len(metrics)}\n"
        f"- weights: `{summary['final']['weights']}` ({summary['final']['checkpoint_id']})\n"
        + ("\n".join(notes) + "\n" if notes else "")
        + f"\n| evaluation | value |\n|---|---|\n{evaluation}\n",
        key=f"train-{config.stage}-summary",
        description="Run summary",
    )

