"""The `train` flow: one VITON-HD stage (seg, gmm or alias) trained on a dataset we prepared.

Plan: read the split's pairs and hold some out, then one `train-until` task run per checkpoint interval
(each resumes from the last checkpoint, so a rerun or a retry continues where the run stopped), then
evaluate on the held-out pairs in paired mode and export `<out>/<stage>_final.pth`, which the `tryon`
flow loads. Losses per step go to the log and to Parquet; each interval leaves a sample grid.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from tasks.engine.training import evaluate_stage, export_final, pair_split, stage_store, train_until
from tasks.infra.redaction import redact
from tasks.infra.runtime import use_storage_secret
from tasks.records.config import StorageOptions, TrainConfig
from tasks.stages.contact_sheet import thumbnail_data_uri
from vitonhd_models.train import latest_step, read_metrics

THUMBNAIL_HEIGHT = 384  # sample grids embedded in the UI's markdown artifact


def run_name() -> str:
    """The flow run's name in the UI: stage, steps and dataset."""
    params = flow_run.get_parameters()
    return (f"{params.get('stage', '?')} to step {params.get('steps', 1000)} on "
            f"{redact(str(params.get('dataset', '')))} {params.get('split', 'train')}")


@flow(name="train", flow_run_name=run_name, log_prints=False)
def train(
    dataset: str,
    stage: Literal["seg", "gmm", "alias"],
    out: str,
    split: str = "train",
    steps: int = 1000,
    batch_size: int = 4,
    lr_g: float | None = None,
    lr_d: float | None = None,
    checkpoint_every: int = 500,
    log_every: int = 1,
    seed: int = 0,
    load_height: int = 1024,
    load_width: int = 768,
    seg_ngf: int = 64,
    gmm_ngf: int = 64,
    alias_ngf: int = 64,
    alias_norm_hidden: int = 128,
    num_upsampling_layers: Literal["normal", "more", "most"] = "most",
    ndf: int = 64,
    lambda_ce: float = 10.0,
    lambda_const: float = 0.04,
    lambda_fm: float = 10.0,
    lambda_vgg: float = 10.0,
    vgg_weights: str | None = None,
    gmm_checkpoints: str | None = None,
    lpips_alexnet_weights: str | None = None,
    lpips_lin_weights: str | None = None,
    fid_inception_weights: str | None = None,
    holdout_fraction: float = 0.1,
    eval_split: str | None = None,
    agnostic: Literal["vitonhd", "hrviton", "disk"] = "vitonhd",
    device: Literal["auto", "cpu", "cuda"] = "auto",
    num_workers: int = 0,
    cache_samples: bool = False,
    storage_options: StorageOptions | None = None,
    storage_secret_block: str | None = None,
) -> dict[str, Any]:
    """Train one stage of VITON-HD on `dataset` into `out`; return the run summary.

    Args:
        dataset: dataset root URL (holds {split}/ and {split}_pairs.txt, as preprocess writes them).
        stage: seg (segmentation generator), gmm (geometric matching) or alias (ALIAS generator).
        out: output URL for checkpoints, metrics, samples and {stage}_final.pth (what tryon loads).
        split: the split to train on; its pairs must pair each person with the garment they wear.
        steps: total optimiser steps; a rerun resumes from the last checkpoint up to this.
        batch_size: pairs per step.
        lr_g: generator learning rate (empty: the stage default).
        lr_d: discriminator learning rate (empty: the stage default).
        checkpoint_every: steps between checkpoints, metrics files and sample grids.
        log_every: steps between loss lines in the run log (the metrics files get every step).
        seed: seeds initialisation, data order and the noise of every step.
        load_height: training resolution, height (the files stay 1024x768).
        load_width: training resolution, width.
        seg_ngf: seg U-Net width (64 = official).
        gmm_ngf: GMM feature width (64 = official).
        alias_ngf: ALIAS generator width (64 = official).
        alias_norm_hidden: ALIASNorm hidden width (128 = official).
        num_upsampling_layers: ALIAS depth: normal, more or most (official).
        ndf: discriminator width.
        lambda_ce: seg: weight of the cross-entropy term.
        lambda_const: gmm: weight of the TPS second-order constraint.
        lambda_fm: alias: weight of the feature-matching term.
        lambda_vgg: alias: weight of the perceptual term.
        vgg_weights: URL of torchvision VGG19 weights for the perceptual loss (empty: that loss is off).
        gmm_checkpoints: alias: folder holding gmm_final.pth (empty: out).
        lpips_alexnet_weights: URL of torchvision AlexNet weights; with lpips_lin_weights, LPIPS is evaluated.
        lpips_lin_weights: URL of the LPIPS v0.1 alex linear-layer weights.
        fid_inception_weights: URL of torchvision Inception v3 weights; alias: FID is evaluated.
        holdout_fraction: share of pairs held out for evaluation.
        eval_split: evaluate on this split's pairs instead of held-out ones.
        agnostic: clothing-agnostic image: vitonhd or hrviton recipe online, or disk (agnostic-v3.2/).
        device: auto (CUDA when there is one), cpu or cuda.
        num_workers: DataLoader worker processes.
        cache_samples: keep decoded samples in memory (small datasets).
        storage_options: fsspec options for every URL, never credentials.
        storage_secret_block: name of a Prefect Secret block holding the storage credentials (a JSON object
            such as {"key": ..., "secret": ...}); loaded where the run runs, never a parameter itself.
    """
    config = TrainConfig(
        dataset=dataset, stage=stage, out=out, split=split, steps=steps, batch_size=batch_size, lr_g=lr_g,
        lr_d=lr_d, checkpoint_every=checkpoint_every, log_every=log_every, seed=seed, load_height=load_height, load_width=load_width,
        seg_ngf=seg_ngf, gmm_ngf=gmm_ngf, alias_ngf=alias_ngf, alias_norm_hidden=alias_norm_hidden,
        num_upsampling_layers=num_upsampling_layers, ndf=ndf, lambda_ce=lambda_ce, lambda_const=lambda_const,
        lambda_fm=lambda_fm, lambda_vgg=lambda_vgg, vgg_weights=vgg_weights, gmm_checkpoints=gmm_checkpoints,
        lpips_alexnet_weights=lpips_alexnet_weights, lpips_lin_weights=lpips_lin_weights,
        fid_inception_weights=fid_inception_weights, holdout_fraction=holdout_fraction, eval_split=eval_split, agnostic=agnostic, device=device,
        num_workers=num_workers, cache_samples=cache_samples, storage_options=storage_options or {},
        storage_secret_block=storage_secret_block,
    )  # fmt: skip
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

