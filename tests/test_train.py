"""Training: each stage's objective goes down, resuming is exact, the flow's weights load into tryon."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from tasks.infra.store import Store
from tasks.records.config import TrainConfig
from tests.test_metrics_features import (  # noqa: F401  (weight-file fixtures)
    alexnet_path,
    inception_path,
    inception_state,
    lin_path,
    weights_dir,
)
from vitonhd_models import losses
from vitonhd_models.checkpoints import Architecture, build_network, load_networks, read_architecture
from vitonhd_models.data import PairDataset, collate_pairs, read_pairs
from vitonhd_models.train import (
    CachedDataset,
    StageTrainer,
    StepBatches,
    TrainSettings,
    holdout_split,
    latest_step,
    load_training_state,
    make_loader,
    read_metrics,
    seed_step,
    train_segment,
)

TINY = Architecture(load_height=512, load_width=384, seg_ngf=8, gmm_ngf=8, alias_ngf=4, alias_norm_hidden=8)
TINY_FLOW = {
    "load_height": 512, "load_width": 384, "seg_ngf": 8, "gmm_ngf": 8, "alias_ngf": 4, "alias_norm_hidden": 8,
    "ndf": 8, "batch_size": 2, "cache_samples": True, "holdout_fraction": 0.25, "device": "cpu",
}  # fmt: skip


# ---- Pure parts ------------------------------------------------------------------------------------


def test_held_out_pairs_are_chosen_by_person_and_stable_under_additions():
    pairs = [(f"{i:05d}_00.jpg", f"{i:05d}_00.jpg") for i in range(200)]
    train, held = holdout_split(pairs, 0.1)
    assert 8 <= len(held) <= 35 and len(train) + len(held) == 200
    _, held_more = holdout_split(pairs + [("99999_00.jpg", "x_00.jpg")], 0.1)
    assert set(held) <= set(held_more)


def test_a_step_gets_the_same_batch_whether_the_run_started_at_zero_or_resumed():
    straight = list(StepBatches(10, 3, seed=5, start=0, end=9))
    resumed = list(StepBatches(10, 3, seed=5, start=4, end=9))
    assert straight[4:] == resumed


def test_an_epoch_visits_every_full_batch_once():
    batches = list(StepBatches(9, 3, seed=1, start=0, end=3))
    assert sorted(i for batch in batches for i in batch) == list(range(9))


def test_checkpoint_marks_cover_the_run_and_skip_what_is_done():
    from flows.train import checkpoint_steps

    assert checkpoint_steps(0, 10, 4) == [4, 8, 10]
    assert checkpoint_steps(8, 10, 4) == [10]
    assert checkpoint_steps(10, 10, 4) == []


# ---- Each stage learns (a few dozen steps on the CPU) --------------------------------------------------


def probe_loss(trainer: StageTrainer, batch: dict) -> float:
    """The stage's reconstruction objective on a fixed batch, in eval mode with fixed noise."""
    seed_step(0, -1)
    out = trainer.predict(batch)
    if trainer.settings.stage == "seg":
        return losses.weighted_cross_entropy(out["parse"], out["target"]).item()
    return F.l1_loss(out["warped" if trainer.settings.stage == "gmm" else "image"], out["target"]).item()



def make_dataset(split_store, pairs, arch, settings, agnostic):
    """The training pairs as the train flow reads them (cached when the settings say so)."""
    dataset = PairDataset(split_store, pairs, size_hw=arch.load_hw, agnostic=agnostic, targets=True)
    return CachedDataset(dataset) if settings.cache_samples else dataset

@pytest.fixture(scope="module")
def four_pairs(tryon_dataset):
    return read_pairs(tryon_dataset, "train")[:4]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "steps", "batch_size"), [("seg", 20, 2), ("gmm", 20, 2), ("alias", 10, 1)]
)  # fmt: skip
def test_training_lowers_the_stage_objective(stage, steps, batch_size, tryon_dataset, four_pairs):
    settings = TrainSettings(stage=stage, steps=steps, batch_size=batch_size, lr_g=1e-3, ndf=8, cache_samples=True)
    gmm = build_network("gmm", TINY) if stage == "alias" else None
    trainer = StageTrainer(settings, TINY, frozen_gmm=gmm)
    data = make_dataset(tryon_dataset.child("train"), four_pairs, TINY, settings, "vitonhd")
    fixed = collate_pairs([data[i] for i in range(len(data))])
    before = probe_loss(trainer, fixed)
    for step, batch in enumerate(make_loader(data, settings, 0, steps), 1):
        seed_step(settings.seed, step)
        values = trainer.step(batch)
        assert all(torch.isfinite(torch.tensor(v)) for v in values.values()), values
    after = probe_loss(trainer, fixed)
    assert after < 0.95 * before, f"{stage}: objective {before:.4f} -> {after:.4f} after {steps} steps"


# ---- Resume --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_resumed_run_ends_with_exactly_the_weights_of_an_uninterrupted_one(tryon_dataset, four_pairs, tmp_path):
    """seg draws dropout and the noise channel every step and has a discriminator: the hardest case."""
    settings = TrainSettings(stage="seg", steps=4, batch_size=2, ndf=8, cache_samples=True)
    data = make_dataset(tryon_dataset.child("train"), four_pairs, TINY, settings, "vitonhd")

    straight = Store(str(tmp_path / "straight"))
    train_segment(StageTrainer(settings, TINY), data, straight, 4)

    interrupted = Store(str(tmp_path / "interrupted"))
    train_segment(StageTrainer(settings, TINY), data, interrupted, 2)
    assert latest_step(interrupted)[0] == 2
    result = train_segment(StageTrainer(settings, TINY), data, interrupted, 4)  # a fresh process, in effect
    assert (result.start, result.end, len(result.rows)) == (2, 4, 2)

    a, b = StageTrainer(settings, TINY), StageTrainer(settings, TINY)
    assert load_training_state(straight, a) == load_training_state(interrupted, b) == 4
    for (name, x), (_, y) in zip(a.net.state_dict().items(), b.net.state_dict().items(), strict=True):
        assert torch.equal(x, y), f"{name} differs after resuming"
    for (name, x), (_, y) in zip(a.disc.state_dict().items(), b.disc.state_dict().items(), strict=True):
        assert torch.equal(x, y), f"discriminator {name} differs after resuming"
    assert [row["step"] for row in read_metrics(interrupted)] == [1, 2, 3, 4]
    assert [r["loss_g"] for r in read_metrics(interrupted)] == [r["loss_g"] for r in read_metrics(straight)]


def test_a_checkpoint_of_another_architecture_is_refused(tryon_dataset, four_pairs, tmp_path):
    settings = TrainSettings(stage="gmm", steps=1, batch_size=2, cache_samples=True)
    store = Store(str(tmp_path))
    data = make_dataset(tryon_dataset.child("train"), four_pairs, TINY, settings, "vitonhd")
    train_segment(StageTrainer(settings, TINY), data, store, 1)
    wider = Architecture(**{**TINY.to_dict(), "gmm_ngf": 16})
    with pytest.raises(ValueError, match="trained with"):
        load_training_state(store, StageTrainer(settings, wider))


# ---- The flow and the CLI --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tryon_dataset, tmp_path_factory, prefect_server):
    """gmm, then alias on that GMM, then seg: tiny networks, a few steps each, through the train flow."""
    from flows.train import train

    out = tmp_path_factory.mktemp("trained")
    dataset = tryon_dataset.url
    summaries = {
        "gmm": train(TrainConfig(dataset=dataset, stage="gmm", out=str(out), steps=6, checkpoint_every=4, **TINY_FLOW)),
        "alias": train(TrainConfig(dataset=dataset, stage="alias", out=str(out), steps=2, checkpoint_every=2, **TINY_FLOW)),
        "seg": train(TrainConfig(dataset=dataset, stage="seg", out=str(out), steps=4, checkpoint_every=4, **TINY_FLOW)),
    }
    return Store(str(out)), summaries


@pytest.mark.slow
def test_the_flow_writes_checkpoints_metrics_samples_and_final_weights(trained):
    out, summaries = trained
    gmm = out.child("gmm")
    assert latest_step(gmm) == (6, "step-00000006.pt")
    assert gmm.exists("checkpoints/step-00000004.pt")
    assert [row["step"] for row in read_metrics(gmm)] == list(range(1, 7))
    assert gmm.exists("samples/step-00000004.png") and gmm.exists("samples/step-00000006.png")
    assert summaries["gmm"]["evaluation"]["pairs"] == 2 and 0 < summaries["gmm"]["evaluation"]["ssim"] <= 1
    for stage in ("seg", "gmm", "alias"):
        assert out.exists(f"{stage}_final.pth") and out.exists(f"{stage}_final.json"), stage


@pytest.mark.slow
def test_the_alias_stage_warps_with_the_trained_gmm_and_says_the_perceptual_loss_is_off(trained):
    _, summaries = trained
    assert summaries["alias"]["gmm_checkpoint"] == summaries["gmm"]["final"]["checkpoint_id"]
    assert summaries["alias"]["perceptual_loss"].startswith("off")


@pytest.mark.slow
def test_trained_weights_load_into_tryon(trained):
    out, summaries = trained
    nets, arch, ids = load_networks(out)
    assert arch == read_architecture(out) and arch.load_hw == (512, 384)
    assert ids == {stage: summaries[stage]["final"]["checkpoint_id"] for stage in ("seg", "gmm", "alias")}
    assert nets.alias.sh == 4


@pytest.mark.slow
def test_a_rerun_with_more_steps_resumes_from_the_last_checkpoint(trained, tryon_dataset):
    from flows.train import train

    out, _ = trained
    summary = train(TrainConfig(dataset=tryon_dataset.url, stage="seg", out=out.url, steps=6, checkpoint_every=4, **TINY_FLOW))
    assert (summary["resumed_from"], summary["steps_this_run"], summary["steps"]) == (4, 2, 6)
    assert [row["step"] for row in read_metrics(out.child("seg"))] == list(range(1, 7))


@pytest.mark.slow
def test_the_cli_trains_and_prints_a_json_summary(tryon_dataset, tmp_path):
    out = tmp_path / "cli"
    options = [f"--{key.replace('_', '-')}={value}" for key, value in TINY_FLOW.items() if not isinstance(value, bool)]
    command = [sys.executable, "-m", "flows.cli", "train", "--dataset", tryon_dataset.url, "--stage", "gmm",
               "--out", str(out), "--steps", "2", "--checkpoint-every", "1", "--cache-samples", "--json", *options]  # fmt: skip
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["steps"] == 2 and summary["stage"] == "gmm"
    assert (out / "gmm_final.pth").exists()


def test_the_cli_rejects_an_invalid_configuration_with_exit_code_2(tmp_path):
    command = [sys.executable, "-m", "flows.cli", "train", "--dataset", str(tmp_path), "--stage", "gmm",
               "--out", str(tmp_path), "--steps", "0"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "steps" in done.stderr


@pytest.mark.slow
def test_configured_vgg_weights_switch_the_perceptual_loss_on(tryon_dataset, four_pairs, tmp_path):
    import torchvision

    path = tmp_path / "vgg19.pth"
    torch.save(torchvision.models.vgg19(weights=None).features.state_dict(), path)
    settings = TrainSettings(stage="alias", steps=1, batch_size=1, ndf=8, vgg_weights=str(path), cache_samples=True)
    trainer = StageTrainer(settings, TINY, frozen_gmm=build_network("gmm", TINY))
    data = make_dataset(tryon_dataset.child("train"), four_pairs[:1], TINY, settings, "vitonhd")
    values = trainer.step(collate_pairs([data[0]]))
    assert values["loss_vgg"] > 0, values


def test_without_vgg_weights_the_alias_stage_has_no_perceptual_term():
    settings = TrainSettings(stage="alias", steps=1, batch_size=1, ndf=8)
    assert StageTrainer(settings, TINY, frozen_gmm=build_network("gmm", TINY)).perceptual is None


@pytest.mark.slow
def test_evaluation_adds_lpips_and_fid_when_their_weights_are_configured(
    trained, tryon_dataset, four_pairs, alexnet_path, lin_path, inception_path  # noqa: F811  (fixtures)
):
    from tasks.engine.training import evaluate_stage

    out, _ = trained
    config = TrainConfig(
        dataset=tryon_dataset.url, stage="alias", out=out.url, lpips_alexnet_weights=alexnet_path,
        lpips_lin_weights=lin_path, fid_inception_weights=inception_path, **TINY_FLOW,
    )  # fmt: skip
    result = evaluate_stage.fn(config, "train", four_pairs[:2])
    assert result["pairs"] == 2 and result["lpips"] > 0 and result["fid"] >= 0, result


@pytest.mark.slow
def test_evaluation_says_lpips_and_fid_are_off_without_weights(trained):
    _, summaries = trained
    assert summaries["alias"]["evaluation"]["lpips"].startswith("off")
    assert summaries["alias"]["evaluation"]["fid"].startswith("off")
