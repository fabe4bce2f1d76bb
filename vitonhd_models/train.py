"""Training of the three VITON-HD stages, resumable from any checkpoint, on any fsspec URL.

The official release has no training code (contract §0 item 1, §1.11); the objectives follow the paper:

- seg:   conditional adversarial loss + lambda_ce * cross-entropy against the person's own 13-group parse;
- gmm:   L1 between the warped cloth and the cloth region of the person (white elsewhere, as CP-VTON)
         + lambda_const * the second-order difference constraint on the TPS control points;
- alias: conditional adversarial (multi-scale discriminator) + lambda_fm * feature matching
         + lambda_vgg * VGG19 perceptual loss (only when VGG weights are configured; off otherwise).

Each stage trains alone with ground-truth inputs (the person's own parse); ALIAS takes its warped cloth
from a frozen GMM (a `gmm_final.pth` from the GMM stage, or a random one, which the run reports).

Resuming is exact: the random state of step s is derived from (seed, s) and the data order from
(seed, epoch), so a run stopped after checkpoint k and restarted draws the same noise and the same
batches as one that never stopped. A checkpoint holds the networks, the optimisers and the step.

Layout under the output folder `out`:

    <stage>/checkpoints/step-00000100.pt     training state (networks, optimisers, step, settings)
    <stage>/checkpoints/latest.json          {"step": 100, "file": "step-00000100.pt"}, written last
    <stage>/metrics/steps-00000001-00000100.parquet   one row per step
    <stage>_final.pth + <stage>_final.json   bare weights + architecture, what `tryon` loads
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from vitonhd_models import checkpoints as ckpt
from vitonhd_models import losses, metrics
from vitonhd_models.checkpoints import Architecture
from vitonhd_models.contract import colourise_parse
from vitonhd_models.data import collate_pairs, merge_13_to_7
from vitonhd_models.files import Files
from vitonhd_models.pipeline import (
    generate,
    gmm_input,
    seg_input,
    seg_size,
    to_device,
    to_uint8_images,
    warp,
)

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "vitonprep-train-1"
LATEST = "latest.json"

# Loss weights: the paper combines these terms with hyperparameter weights; these are our defaults
# (lambda_const as in ACGPN's second-order constraint), all configurable.
DEFAULT_LAMBDA_CE = 10.0
DEFAULT_LAMBDA_CONST = 0.04
DEFAULT_LAMBDA_FM = 10.0
DEFAULT_LAMBDA_VGG = 10.0
# Learning rates (generator, discriminator). seg and alias: HR-VITON's train_condition.py and
# train_generator.py defaults (contract §2.7); gmm: CP-VTON's GMM default.
DEFAULT_LR = {"seg": (2e-4, 2e-4), "gmm": (1e-4, 0.0), "alias": (1e-4, 4e-4)}
ADAM_BETAS = (0.5, 0.999)


@dataclass(frozen=True)
class TrainSettings:
    """One stage's training run. Sizes and widths live in `Architecture`."""

    stage: str
    steps: int = 1000
    batch_size: int = 4
    lr_g: float | None = None  # None: DEFAULT_LR[stage]
    lr_d: float | None = None
    checkpoint_every: int = 500
    seed: int = 0
    lambda_ce: float = DEFAULT_LAMBDA_CE
    lambda_const: float = DEFAULT_LAMBDA_CONST
    lambda_fm: float = DEFAULT_LAMBDA_FM
    lambda_vgg: float = DEFAULT_LAMBDA_VGG
    vgg_weights: str | None = None  # a local file (the flow resolves URLs); None: perceptual loss off
    ndf: int = 64  # discriminator width
    num_workers: int = 0
    cache_samples: bool = False  # keep decoded samples in memory (small datasets, tests)

    def __post_init__(self) -> None:
        if self.stage not in ckpt.STAGES:
            raise ValueError(f"stage must be one of {ckpt.STAGES}, got {self.stage!r}")
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("steps, batch_size and checkpoint_every must be positive")

    @property
    def learning_rates(self) -> tuple[float, float]:
        lr_g, lr_d = DEFAULT_LR[self.stage]
        return (self.lr_g if self.lr_g is not None else lr_g, self.lr_d if self.lr_d is not None else lr_d)

    def to_dict(self) -> dict:
        return asdict(self)


# ---- Data ----------------------------------------------------------------------------------------


def holdout_split(pairs: Sequence[tuple[str, str]], fraction: float) -> tuple[list, list]:
    """(train, held out): a pair is held out when the hash of its person name falls under `fraction`.

    Stable under additions: a new person never moves an old one between the two sets.
    """
    train, held = [], []
    for pair in pairs:
        digest = hashlib.sha256(pair[0].encode()).digest()
        (held if int.from_bytes(digest[:8], "big") / 2**64 < fraction else train).append(pair)
    return train, held


class StepBatches(torch.utils.data.Sampler):
    """Index batches for steps [start, end): epoch e is a permutation seeded by (seed, e), so step s
    always gets the same batch, whether or not the run was interrupted before it."""

    def __init__(self, size: int, batch_size: int, seed: int, start: int, end: int):
        self.size, self.batch_size, self.seed, self.start, self.end = size, batch_size, seed, start, end
        self.per_epoch = max(1, size // batch_size) if size >= batch_size else 1

    def batch_at(self, step: int) -> list[int]:
        epoch, index = divmod(step, self.per_epoch)
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
        return order[index * self.batch_size : (index + 1) * self.batch_size].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.end):
            yield self.batch_at(step)

    def __len__(self) -> int:
        return self.end - self.start


class CachedDataset(torch.utils.data.Dataset):
    """Keeps each decoded sample after its first read (the dataset must fit in memory)."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset, self.cache = dataset, {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if index not in self.cache:
            self.cache[index] = self.dataset[index]
        return self.cache[index]


def seed_step(seed: int, step: int) -> None:
    """The random state of one step: torch (dropout, ALIAS noise) and OpenCV (seg noise)."""
    value = (seed * 1_000_003 + step) % 2**31
    torch.manual_seed(value)
    cv2.setRNGSeed(value)


# ---- Stage objectives ------------------------------------------------------------------------------


def cloth_on_person(batch: dict) -> torch.Tensor:
    """The person's cloth region on white (CP-VTON's im_c): the GMM's target."""
    pcm = batch["parse_cloth"]
    return batch["img"] * pcm + (1 - pcm)


def seg_target(batch: dict) -> torch.Tensor:
    """The person's 13-group parse at the seg size (nearest keeps it one-hot)."""
    return F.interpolate(batch["parse"], size=seg_size(batch["parse"].shape[2:]), mode="nearest")


class StageTrainer:
    """Networks, optimisers and one `step` for a stage; `state_dict` / `load` for checkpoints."""

    def __init__(
        self,
        settings: TrainSettings,
        arch: Architecture,
        device: str | torch.device = "cpu",
        frozen_gmm: torch.nn.Module | None = None,
    ):
        self.settings, self.arch, self.device = settings, arch, torch.device(device)
        torch.manual_seed(settings.seed)
        self.net = ckpt.build_network(settings.stage, arch).to(self.device).train()
        lr_g, lr_d = settings.learning_rates
        self.opt_g = torch.optim.Adam(self.net.parameters(), lr=lr_g, betas=ADAM_BETAS)
        self.disc: torch.nn.Module | None = None
        self.opt_d: torch.optim.Optimizer | None = None
        if settings.stage in ("seg", "alias"):
            # seg's D judges (seg input, parse); alias's D judges (parse7, image).
            input_nc = 21 + 13 if settings.stage == "seg" else 7 + 3
            self.disc = losses.MultiscaleDiscriminator(input_nc, ndf=settings.ndf).to(self.device).train()
            self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=lr_d, betas=ADAM_BETAS)
        self.perceptual = None
        if settings.stage == "alias" and settings.vgg_weights:
            self.perceptual = losses.PerceptualLoss(settings.vgg_weights).to(self.device)
        self.frozen_gmm = frozen_gmm.to(self.device).eval() if frozen_gmm is not None else None
        if settings.stage == "alias" and self.frozen_gmm is None:
            raise ValueError("the alias stage needs a GMM for its warped cloth")

    # Each step returns its scalar losses as floats.

    def step(self, batch: dict) -> dict[str, float]:
        batch = to_device(batch, self.device)
        return getattr(self, f"_step_{self.settings.stage}")(batch)

    def _gan_d_step(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        self.opt_d.zero_grad(set_to_none=True)
        loss_d = losses.d_hinge_loss(self.disc(real), self.disc(fake.detach()))
        loss_d.backward()
        self.opt_d.step()
        return loss_d

    def _step_seg(self, batch: dict) -> dict[str, float]:
        x = seg_input(batch)
        target = seg_target(batch)
        pred = self.net(x)
        self.opt_g.zero_grad(set_to_none=True)
        loss_gan = losses.g_hinge_loss(self.disc(torch.cat((x, pred), 1)))
        loss_ce = losses.weighted_cross_entropy(pred, target)
        loss_g = loss_gan + self.settings.lambda_ce * loss_ce
        loss_g.backward()
        self.opt_g.step()
        loss_d = self._gan_d_step(torch.cat((x, target), 1), torch.cat((x, pred), 1))
        return {"loss_g": loss_g.item(), "loss_gan": loss_gan.item(), "loss_ce": loss_ce.item(), "loss_d": loss_d.item()}

    def _step_gmm(self, batch: dict) -> dict[str, float]:
        parse7 = merge_13_to_7(batch["parse"])
        theta, grid = self.net(*gmm_input(parse7, batch))
        warped = warp(grid, batch["cloth"])
        loss_l1 = F.l1_loss(warped, cloth_on_person(batch))
        loss_const = losses.tps_second_order_loss(theta, self.arch.grid_size)
        loss = loss_l1 + self.settings.lambda_const * loss_const
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        return {"loss_g": loss.item(), "loss_l1": loss_l1.item(), "loss_const": loss_const.item()}

    def _alias_inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        parse7 = merge_13_to_7(batch["parse"])
        with torch.no_grad():
            _, grid = self.frozen_gmm(*gmm_input(parse7, batch))
        return parse7, warp(grid, batch["cloth"]), warp(grid, batch["cloth_mask"])

    def _step_alias(self, batch: dict) -> dict[str, float]:
        parse7, warped_c, warped_cm = self._alias_inputs(batch)
        fake = generate(self.net, parse7, warped_c, warped_cm, batch)
        real = batch["img"]
        self.opt_g.zero_grad(set_to_none=True)
        pred_fake = self.disc(torch.cat((parse7, fake), 1))
        with torch.no_grad():
            pred_real = self.disc(torch.cat((parse7, real), 1))
        loss_gan = losses.g_hinge_loss(pred_fake)
        loss_fm = losses.feature_matching_loss(pred_fake, pred_real)
        loss_g = loss_gan + self.settings.lambda_fm * loss_fm
        result = {"loss_gan": loss_gan.item(), "loss_fm": loss_fm.item()}
        if self.perceptual is not None:
            loss_vgg = self.perceptual(fake, real)
            loss_g = loss_g + self.settings.lambda_vgg * loss_vgg
            result["loss_vgg"] = loss_vgg.item()
        loss_g.backward()
        self.opt_g.step()
        loss_d = self._gan_d_step(torch.cat((parse7, real), 1), torch.cat((parse7, fake), 1))
        return {"loss_g": loss_g.item(), **result, "loss_d": loss_d.item()}

    # ---- Outputs for people: predictions on a batch --------------------------------------------

    @torch.no_grad()
    def predict(self, batch: dict) -> dict[str, torch.Tensor]:
        """The stage's output on a batch in eval mode: 13-group parse, warped cloth, or try-on image."""
        batch = to_device(batch, self.device)
        self.net.eval()
        try:
            if self.settings.stage == "seg":
                return {"parse": self.net(seg_input(batch)), "target": seg_target(batch)}
            if self.settings.stage == "gmm":
                parse7 = merge_13_to_7(batch["parse"])
                _, grid = self.net(*gmm_input(parse7, batch))
                return {"warped": warp(grid, batch["cloth"]), "target": cloth_on_person(batch)}
            parse7, warped_c, warped_cm = self._alias_inputs(batch)
            return {"image": generate(self.net, parse7, warped_c, warped_cm, batch), "target": batch["img"]}
        finally:
            self.net.train()

    # ---- Checkpoints ---------------------------------------------------------------------------

    def state_dict(self, step: int) -> dict:
        state = {
            "format": CHECKPOINT_FORMAT,
            "stage": self.settings.stage,
            "step": step,
            "architecture": self.arch.to_dict(),
            "settings": self.settings.to_dict(),
            "model": self.net.state_dict(),
            "optimizer_g": self.opt_g.state_dict(),
        }
        if self.disc is not None:
            state["discriminator"] = self.disc.state_dict()
            state["optimizer_d"] = self.opt_d.state_dict()
        return state

    def load(self, state: dict) -> int:
        """Restore networks and optimisers; returns the step the state was saved at."""
        if state.get("format") != CHECKPOINT_FORMAT or state.get("stage") != self.settings.stage:
            raise ValueError(f"not a {self.settings.stage} training checkpoint of format {CHECKPOINT_FORMAT}")
        if state["architecture"] != self.arch.to_dict():
            raise ValueError(
                f"the checkpoint was trained with {state['architecture']}, this run asks for {self.arch.to_dict()}"
            )
        self.net.load_state_dict(state["model"])
        self.opt_g.load_state_dict(state["optimizer_g"])
        if self.disc is not None:
            self.disc.load_state_dict(state["discriminator"])
            self.opt_d.load_state_dict(state["optimizer_d"])
        return int(state["step"])


def save_training_state(stage_store: Files, trainer: StageTrainer, step: int) -> str:
    """The step's full state, then the `latest.json` pointer (so a crash between the two is harmless)."""
    buffer = io.BytesIO()
    torch.save(trainer.state_dict(step), buffer)
    name = f"step-{step:08d}.pt"
    stage_store.write_bytes(f"checkpoints/{name}", buffer.getvalue())
    stage_store.write_text(f"checkpoints/{LATEST}", json.dumps({"step": step, "file": name}) + "\n")
    return name


def latest_step(stage_store: Files) -> tuple[int, str | None]:
    """(step, file) of the last complete checkpoint, or (0, None)."""
    if not stage_store.exists(f"checkpoints/{LATEST}"):
        return 0, None
    pointer = json.loads(stage_store.read_text(f"checkpoints/{LATEST}"))
    return int(pointer["step"]), pointer["file"]


def load_training_state(stage_store: Files, trainer: StageTrainer) -> int:
    _, name = latest_step(stage_store)
    if name is None:
        return 0
    data = stage_store.read_bytes(f"checkpoints/{name}")
    state = torch.load(io.BytesIO(data), map_location=trainer.device, weights_only=True)
    return trainer.load(state)


# ---- Metrics files -------------------------------------------------------------------------------


def write_metrics(stage_store: Files, rows: list[dict]) -> str | None:
    """One Parquet part per checkpoint interval, named by its step range (a rerun overwrites it)."""
    if not rows:
        return None
    name = f"metrics/steps-{rows[0]['step']:08d}-{rows[-1]['step']:08d}.parquet"
    columns = sorted({key for row in rows for key in row})
    table = pa.table({key: [row.get(key) for row in rows] for key in columns})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    stage_store.write_bytes(name, buffer.getvalue())
    return name


def read_metrics(stage_store: Files) -> list[dict]:
    """Every step's metrics row, one per step (the last written part wins), in step order."""
    if not stage_store.isdir("metrics"):
        return []
    by_step: dict[int, dict] = {}
    for name in sorted(stage_store.listdir("metrics")):
        if name.endswith(".parquet"):
            for row in pq.read_table(io.BytesIO(stage_store.read_bytes(f"metrics/{name}"))).to_pylist():
                by_step[row["step"]] = row
    return [by_step[step] for step in sorted(by_step)]


# ---- The loop --------------------------------------------------------------------------------------


@dataclass
class SegmentResult:
    start: int
    end: int
    rows: list[dict] = field(default_factory=list)
    checkpoint: str | None = None
    skipped_batches: int = 0


def make_loader(dataset: torch.utils.data.Dataset, settings: TrainSettings, start: int, end: int):
    sampler = StepBatches(len(dataset), settings.batch_size, settings.seed, start, end)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_pairs, num_workers=settings.num_workers
    )


def train_segment(
    trainer: StageTrainer,
    dataset: torch.utils.data.Dataset,
    stage_store: Files,
    until_step: int,
    on_step: Callable[[dict], None] | None = None,
) -> SegmentResult:
    """Resume from the last checkpoint, train up to `until_step`, checkpoint, write the metrics part."""
    start = load_training_state(stage_store, trainer)
    result = SegmentResult(start=start, end=max(start, until_step))
    if start >= until_step:
        return result
    loader = make_loader(dataset, trainer.settings, start, until_step)
    for step, batch in zip(range(start + 1, until_step + 1), loader, strict=True):
        started = time.perf_counter()
        if batch is None:  # every pair of the batch was unreadable (logged by the dataset)
            result.skipped_batches += 1
            continue
        seed_step(trainer.settings.seed, step)
        values = trainer.step(batch)
        row = {"step": step, "stage": trainer.settings.stage, "batch": len(batch["img_name"]),
               "step_s": time.perf_counter() - started, **values}  # fmt: skip
        result.rows.append(row)
        if on_step is not None:
            on_step(row)
    result.checkpoint = save_training_state(stage_store, trainer, until_step)
    write_metrics(stage_store, result.rows)
    return result


# ---- Evaluation ----------------------------------------------------------------------------------


def _mean(values: list[float]) -> float:
    clean = [v for v in values if not np.isnan(v)]
    return float(np.mean(clean)) if clean else float("nan")


@torch.no_grad()
def evaluate(
    trainer: StageTrainer,
    dataset: torch.utils.data.Dataset,
    batch_size: int = 4,
    lpips: metrics.LPIPS | None = None,
    fid: metrics.FID | None = None,
) -> dict[str, float]:
    """Paired-mode metrics on held-out pairs.

    seg: pixel accuracy and mean IoU of the 13-group argmax; gmm: SSIM (grayscale, HR-VITON evaluate.py,
    contract §2.8) and masked L1 of the warped cloth against the cloth on the person, inside the cloth
    region; alias: SSIM of the whole try-on image, L1 inside the cloth region and over the whole image.
    With their networks given: LPIPS (gmm, alias; at 128x128 as HR-VITON) and FID (alias; real persons
    against generated ones).
    """
    stage = trainer.settings.stage
    values: dict[str, list[float]] = {}
    seed_step(trainer.settings.seed, -1)
    for start in range(0, len(dataset), batch_size):
        batch = collate_pairs([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        if batch is None:
            continue
        out = trainer.predict(batch)
        if stage == "seg":
            pred, target = out["parse"].argmax(1), out["target"].argmax(1)
            values.setdefault("pixel_accuracy", []).extend((pred == target).float().mean((1, 2)).tolist())
            for p, t in zip(pred, target, strict=True):
                ious = [((p == c) & (t == c)).sum() / ((p == c) | (t == c)).sum()
                        for c in range(out["parse"].shape[1]) if ((p == c) | (t == c)).any()]  # fmt: skip
                values.setdefault("mean_iou", []).append(float(torch.stack(ious).mean()))
            continue
        key = "warped" if stage == "gmm" else "image"
        preds, targets = to_uint8_images(out[key]), to_uint8_images(out["target"])
        masks = batch["parse_cloth"][:, 0].bool().numpy()
        for pred_rgb, target_rgb, mask in zip(preds, targets, masks, strict=True):
            values.setdefault("ssim", []).append(metrics.ssim_gray(pred_rgb, target_rgb))
            values.setdefault("masked_l1", []).append(metrics.masked_l1_uint8(pred_rgb, target_rgb, mask))
            if stage == "alias":
                values.setdefault("l1", []).append(metrics.masked_l1_uint8(pred_rgb, target_rgb))
            if lpips is not None:
                values.setdefault("lpips", []).append(metrics.lpips_distance(lpips, pred_rgb, target_rgb))
        if fid is not None and stage == "alias":
            fid.update(targets, preds)
    summary = {name: _mean(v) for name, v in values.items()}
    if fid is not None and stage == "alias" and fid.num_real >= 2:
        summary["fid"] = fid.compute()
    summary["pairs"] = max((len(v) for v in values.values()), default=0)
    return summary


@torch.no_grad()
def sample_grid(trainer: StageTrainer, batch: dict, rows: int = 4) -> np.ndarray:
    """A uint8 RGB grid, one row per pair: person, cloth, the stage's output, its target."""
    out = trainer.predict(batch)
    persons, cloths = to_uint8_images(batch["img"]), to_uint8_images(batch["cloth"])
    count = min(rows, len(persons))
    if trainer.settings.stage == "seg":
        # 13-group ids drawn with the first 13 CIHP palette colours: enough to tell regions apart.
        shown = [colourise_parse(out["parse"].argmax(1)[i].cpu().numpy().astype(np.uint8)) for i in range(count)]
        targets = [colourise_parse(out["target"].argmax(1)[i].cpu().numpy().astype(np.uint8)) for i in range(count)]
    else:
        key = "warped" if trainer.settings.stage == "gmm" else "image"
        shown, targets = list(to_uint8_images(out[key])), list(to_uint8_images(out["target"]))
    height, width = persons.shape[1:3]

    def fit(image: np.ndarray) -> np.ndarray:
        return image if image.shape[:2] == (height, width) else cv2.resize(image, (width, height), cv2.INTER_NEAREST)

    lines = [np.concatenate([fit(persons[i]), fit(cloths[i]), fit(shown[i]), fit(targets[i])], 1) for i in range(count)]
    return np.concatenate(lines, 0)
