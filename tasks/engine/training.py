"""Prefect tasks around `vitonhd_models.train`: train up to a step, evaluate, export the final weights.

Every task rebuilds its trainer from the configuration and the last checkpoint, so a retried or rerun
task resumes where the last checkpoint left off; nothing lives only in memory between tasks.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError

from tasks.infra.runtime import TASK_OPTIONS, gpu_slot
from tasks.infra.store import Store
from tasks.infra.weight_cache import local_file
from tasks.records.config import TrainConfig
from vitonhd_models import checkpoints as ckpt
from vitonhd_models import metrics
from vitonhd_models import train as training
from vitonhd_models.data import PairDataset, collate_pairs, read_pairs
from vitonhd_models.pipeline import resolve_device

SAMPLE_PAIRS = 4
# The CLI listens here to draw its progress bar; records carry `done` and `total` steps.
progress_logger = logging.getLogger("vitonprep.progress.train")
progress_logger.propagate = False


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:  # called outside a run (tests, benchmarks)
        return logging.getLogger(__name__)


def architecture(config: TrainConfig) -> ckpt.Architecture:
    return ckpt.Architecture(
        load_height=config.load_height,
        load_width=config.load_width,
        seg_ngf=config.seg_ngf,
        gmm_ngf=config.gmm_ngf,
        alias_ngf=config.alias_ngf,
        alias_norm_hidden=config.alias_norm_hidden,
        num_upsampling_layers=config.num_upsampling_layers,
    )


def settings(config: TrainConfig) -> training.TrainSettings:
    vgg = None
    if config.stage == "alias" and config.vgg_weights:
        vgg = local_file(config.vgg_weights, config.storage_options)
    return training.TrainSettings(
        stage=config.stage,
        steps=config.steps,
        batch_size=config.batch_size,
        lr_g=config.lr_g,
        lr_d=config.lr_d,
        checkpoint_every=config.checkpoint_every,
        seed=config.seed,
        lambda_ce=config.lambda_ce,
        lambda_const=config.lambda_const,
        lambda_fm=config.lambda_fm,
        lambda_vgg=config.lambda_vgg,
        vgg_weights=vgg,
        ndf=config.ndf,
        num_workers=config.num_workers,
        cache_samples=config.cache_samples,
    )


def stage_store(config: TrainConfig) -> Store:
    return Store(config.out, config.storage_options).child(config.stage)


# ---- Pairs and datasets ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PairSplit:
    train: list[tuple[str, str]]
    evaluation: list[tuple[str, str]]
    eval_split: str


def pair_split(config: TrainConfig) -> PairSplit:
    """Training pairs and evaluation pairs: held out by hash, or another split's pairs."""
    root = Store(config.dataset, config.storage_options)
    pairs = read_pairs(root, config.split)
    if config.eval_split is not None:
        return PairSplit(pairs, read_pairs(root, config.eval_split), config.eval_split)
    train, held = training.holdout_split(pairs, config.holdout_fraction)
    if not train:
        raise ValueError(f"no training pairs left in {config.split} after holding out {config.holdout_fraction:.0%}")
    return PairSplit(train, held, config.split)


_DATASETS: dict[tuple, torch.utils.data.Dataset] = {}


def dataset(config: TrainConfig, split: str, pairs: list[tuple[str, str]]) -> torch.utils.data.Dataset:
    """The pairs as samples at the training size; with cache_samples, one decoded copy per process."""
    key = (config.dataset, split, tuple(pairs), config.load_height, config.load_width, config.agnostic)
    if key in _DATASETS:
        return _DATASETS[key]
    store = Store(config.dataset, config.storage_options).child(split)
    data: torch.utils.data.Dataset = PairDataset(
        store, pairs, size_hw=(config.load_height, config.load_width), agnostic=config.agnostic, targets=True
    )
    if config.cache_samples:
        data = training.CachedDataset(data)
        _DATASETS[key] = data
    return data


def frozen_gmm(config: TrainConfig, arch: ckpt.Architecture) -> tuple[torch.nn.Module | None, str | None]:
    """The alias stage's GMM: `gmm_final.pth` from `gmm_checkpoints` (default: out), else random."""
    if config.stage != "alias":
        return None, None
    store = Store(config.gmm_checkpoints or config.out, config.storage_options)
    gmm_arch = ckpt.read_architecture(store)
    if (store.exists(ckpt.arch_name("gmm")) and gmm_arch.load_hw != arch.load_hw):
        raise ValueError(
            f"the GMM in {store.url} was trained at {gmm_arch.load_hw}, this alias run at {arch.load_hw}"
        )
    gmm_arch = ckpt.Architecture(**{**arch.to_dict(), "gmm_ngf": gmm_arch.gmm_ngf, "grid_size": gmm_arch.grid_size})
    net = ckpt.build_network("gmm", gmm_arch)
    checkpoint_id = ckpt.load_weights(net, store, "gmm")
    if checkpoint_id == ckpt.RANDOM_INIT:
        _logger().warning(
            "alias stage: the warped cloth comes from a randomly initialised GMM "
            "(train the gmm stage first, or set gmm_checkpoints)"
        )
    return net, checkpoint_id


def build_trainer(config: TrainConfig) -> tuple[training.StageTrainer, dict[str, Any]]:
    arch = architecture(config)
    run_settings = settings(config)
    gmm, gmm_id = frozen_gmm(config, arch)
    trainer = training.StageTrainer(run_settings, arch, resolve_device(config.device), frozen_gmm=gmm)
    info = {"device": str(trainer.device), "gmm_checkpoint": gmm_id}
    if config.stage == "alias":
        info["perceptual_loss"] = "on" if trainer.perceptual is not None else "off (no vgg_weights configured)"
    return trainer, info


# ---- Tasks -----------------------------------------------------------------------------------------


def grid_png(grid: np.ndarray, max_height: int = 1024) -> bytes:
    image = Image.fromarray(grid)
    if image.height > max_height:
        image = image.resize((image.width * max_height // image.height, max_height), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@task(name="train-until", **TASK_OPTIONS)
def train_until(config: TrainConfig, until_step: int, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Resume from the last checkpoint, train to `until_step`, checkpoint, write metrics and a sample grid.

    A retry (or a rerun) resumes from the checkpoint the failed attempt left.
    """
    with gpu_slot(resolve_device(config.device) == "cuda"):
        return train_to_step(config, until_step, pairs)


def train_to_step(config: TrainConfig, until_step: int, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    logger = _logger()
    trainer, info = build_trainer(config)
    store = stage_store(config)
    data = dataset(config, config.split, pairs)

    def on_step(row: dict[str, Any]) -> None:
        if row["step"] % config.log_every == 0 or row["step"] == until_step:
            losses = ", ".join(f"{name} {value:.4f}" for name, value in row.items() if name.startswith("loss"))
            logger.info("%s step %d/%d: %s (%.2f s)", config.stage, row["step"], config.steps, losses, row["step_s"])
        progress_logger.info("step", extra={"done": row["step"], "total": config.steps})

    result = training.train_segment(trainer, data, store, until_step, on_step)
    if not result.rows:
        return {"start": result.start, "end": result.end, "steps": 0, "checkpoint": None, **info}
    sample = collate_pairs([data[i] for i in range(min(SAMPLE_PAIRS, len(data)))])
    sample_key = None
    if sample is not None:
        sample_key = f"samples/step-{until_step:08d}.png"
        store.write_bytes(sample_key, grid_png(training.sample_grid(trainer, sample)))
    last = result.rows[-1]
    means = {
        name: float(np.mean([row[name] for row in result.rows if name in row]))
        for name in last
        if name.startswith("loss")
    }
    logger.info(
        "%s steps %d-%d: %s (%.2f s/step)",
        config.stage, result.start + 1, result.end,
        ", ".join(f"{name} {value:.4f}" for name, value in means.items()),
        float(np.mean([row["step_s"] for row in result.rows])),
    )  # fmt: skip
    return {
        "start": result.start,
        "end": result.end,
        "steps": len(result.rows),
        "skipped_batches": result.skipped_batches,
        "checkpoint": result.checkpoint,
        "sample": store.url_of(sample_key) if sample_key else None,
        "mean_losses": means,
        "step_s": float(np.mean([row["step_s"] for row in result.rows])),
        **info,
    }


def feature_metrics(config: TrainConfig) -> tuple[metrics.LPIPS | None, metrics.FID | None, dict[str, str]]:
    """LPIPS and FID networks when their weights are configured; otherwise None and a note saying so."""
    lpips = fid = None
    notes = {}
    if config.stage in ("gmm", "alias"):
        if config.lpips_alexnet_weights and config.lpips_lin_weights:
            lpips = metrics.LPIPS(
                local_file(config.lpips_alexnet_weights, config.storage_options),
                local_file(config.lpips_lin_weights, config.storage_options),
            )
        else:
            notes["lpips"] = "off (lpips_alexnet_weights and lpips_lin_weights not configured)"
    if config.stage == "alias":
        if config.fid_inception_weights:
            fid = metrics.FID(local_file(config.fid_inception_weights, config.storage_options))
        else:
            notes["fid"] = "off (fid_inception_weights not configured)"
    return lpips, fid, notes


@task(name="evaluate-stage", **TASK_OPTIONS)
def evaluate_stage(config: TrainConfig, split: str, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Paired-mode metrics of the last checkpoint on the evaluation pairs, also written to eval.json."""
    with gpu_slot(resolve_device(config.device) == "cuda"):
        return evaluate_checkpoint(config, split, pairs)


def evaluate_checkpoint(config: TrainConfig, split: str, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    trainer, _ = build_trainer(config)
    store = stage_store(config)
    step = training.load_training_state(store, trainer)
    if not pairs:
        return {"step": step, "pairs": 0, "split": split}
    lpips, fid, notes = feature_metrics(config)
    scores = training.evaluate(trainer, dataset(config, split, pairs), config.batch_size, lpips=lpips, fid=fid)
    result = {"step": step, "split": split, **scores, **notes}
    store.write_text("eval.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


@task(name="export-final", **TASK_OPTIONS)
def export_final(config: TrainConfig) -> dict[str, Any]:
    """`<out>/<stage>_final.pth` (bare weights, the name test.py and tryon load) and its sidecar."""
    trainer, info = build_trainer(config)
    step = training.load_training_state(stage_store(config), trainer)
    out = Store(config.out, config.storage_options)
    checkpoint_id = ckpt.save_final(
        out, config.stage, trainer.net, trainer.arch,
        {"step": step, "trained_on": config.dataset, "split": config.split, **info},
    )  # fmt: skip
    return {"step": step, "checkpoint_id": checkpoint_id, "weights": out.url_of(ckpt.checkpoint_name(config.stage))}
