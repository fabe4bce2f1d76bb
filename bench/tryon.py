"""Benchmark: try-on inference (pairs/s) and the three training stages (steps/s) at each load size.

    .venv/bin/python bench/tryon.py [--dataset URL] [--resolutions 512x384,1024x768] [--device auto]

Without --dataset it builds a dataset first: the sample photos of ../shared/samples/vitonhd and their
mirror images (tests/tryon_dataset.py's catalog) through our `preprocess` flow, in a temporary folder
under a temporary Prefect server. Then, for each resolution (height x width):

1. inference: the official architecture (`Architecture()` widths, the load size changed), randomly
   initialised, run through `pipeline.try_on` batch by batch after one warm-up batch. Reading a pair
   (`load_pair`: decode, agnostic image, resize) is timed per pair; seg, GMM + warp and ALIAS are
   timed inside `try_on` by wrapping the pipeline's `predict_parse7`, `warp_cloth` and `generate`
   (with a CUDA synchronise around each); end to end is reading plus `try_on`;
2. training: a `StageTrainer` per stage (official widths, discriminator ndf 64, no VGG loss) does one
   warm-up step and then `--train-steps` timed `step`s on one batch read and collated beforehand (that
   reading is reported on its own line and is not part of the step).

Weights are random, so the outputs mean nothing; only the time does. Nothing is asserted about time.
Progress goes to stderr, the tables (markdown) or the JSON to stdout. On a 2-core CPU the full run takes
a while: a 1024x768 try-on pair is about a minute, an ALIAS training step at 1024x768 several minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.machine import device_info, log, peak_rss_gib, release, synchronizer
from tasks.infra.store import Store
from vitonhd_models import pipeline
from vitonhd_models.checkpoints import Architecture, build_network, load_networks, with_load_size
from vitonhd_models.data import PairDataset, collate_pairs, read_pairs
from vitonhd_models.networks import NUM_UPSAMPLINGS
from vitonhd_models.train import StageTrainer, TrainSettings, seed_step

DEFAULT_SAMPLES = Path(__file__).resolve().parent.parent.parent / "shared" / "samples" / "vitonhd"
DEFAULT_RESOLUTIONS = "512x384,1024x768"
STAGES = ("seg", "gmm", "alias")
PRECISIONS = ("fp32", "fp16")
DEVICES = ("auto", "cpu", "cuda")
SEED = 0
PREPROCESS_SHARD_SIZE = 4  # as tests/tryon_dataset.py
PREFECT_STARTUP_TIMEOUT_S = 120
GMM_MIN_SIDE = 256  # networks.GMM: load sizes at least 256 and multiples of 4
# The parts of try_on timed one by one: (label, function of vitonhd_models.pipeline that try_on calls).
TRYON_PARTS = (("seg", "predict_parse7"), ("gmm + warp", "warp_cloth"), ("alias", "generate"))




# ---- Configuration, validated once --------------------------------------------------------------


def parse_resolutions(text: str, upsampling: str) -> tuple[tuple[int, int], ...]:
    """'512x384,1024x768' (height x width) -> ((512, 384), (1024, 768)); a ValueError names a bad one."""
    multiple = 2 ** NUM_UPSAMPLINGS[upsampling]
    sizes = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            height, width = (int(value) for value in item.lower().split("x"))
        except ValueError:
            raise ValueError(f"resolution {item!r} is not HEIGHTxWIDTH, e.g. 1024x768") from None
        if height % multiple or width % multiple or min(height, width) < GMM_MIN_SIDE:
            raise ValueError(f"resolution {item!r}: ALIAS ({upsampling!r}) needs multiples of {multiple} and the "
                             f"GMM sides of at least {GMM_MIN_SIDE}")
        sizes.append((height, width))
    if not sizes:
        raise ValueError("no resolution given")
    return tuple(sizes)


@dataclass(frozen=True)
class BenchConfig:
    dataset: str | None
    split: str
    samples: str
    device: str  # resolved: cpu or cuda
    resolutions: tuple[tuple[int, int], ...]
    batch_size: int
    infer_pairs: int
    train_steps: int
    stages: tuple[str, ...]
    precision: str
    json: bool
    out: str | None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.infer_pairs < 1 or self.train_steps < 1:
            raise ValueError("--batch-size, --infer-pairs and --train-steps must be positive")
        unknown = set(self.stages) - set(STAGES)
        if unknown or not self.stages:
            raise ValueError(f"--stages takes some of {','.join(STAGES)}, got {','.join(self.stages) or 'none'}")
        if self.precision == "fp16" and self.device != "cuda":
            raise ValueError("--precision fp16 runs on CUDA only (the pipeline's autocast); this run is on the CPU")


def config_from_args(argv: list[str] | None = None) -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="root URL of an existing dataset (<split>/ and <split>_pairs.txt); "
                        "default: build one from --samples with the preprocess flow")
    parser.add_argument("--split", default="train", help="dataset split (default train)")
    parser.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES,
                        help="folder with image/ and cloth/ for the built dataset (default ../shared/samples/vitonhd)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="default auto: CUDA when there is one")
    parser.add_argument("--resolutions", default=DEFAULT_RESOLUTIONS,
                        help=f"comma-separated HEIGHTxWIDTH load sizes (default {DEFAULT_RESOLUTIONS})")
    parser.add_argument("--batch-size", type=int, default=2, help="pairs per batch, inference and training (default 2)")
    parser.add_argument("--infer-pairs", type=int, default=4, help="timed try-on pairs per resolution (default 4)")
    parser.add_argument("--train-steps", type=int, default=3,
                        help="timed steps per stage and resolution, after one warm-up step (default 3)")
    parser.add_argument("--stages", default=",".join(STAGES), help="training stages to time (default seg,gmm,alias)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="inference precision; fp16 (autocast on seg and ALIAS) on CUDA only. Training is fp32")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of tables")
    parser.add_argument("--out", help="folder URL to write the JSON to as well (tryon-<device>-<time>.json)")
    args = parser.parse_args(argv)
    try:
        return BenchConfig(
            dataset=args.dataset,
            split=args.split,
            samples=str(args.samples),
            device=pipeline.resolve_device(args.device),
            resolutions=parse_resolutions(args.resolutions, Architecture().num_upsampling_layers),
            batch_size=args.batch_size,
            infer_pairs=args.infer_pairs,
            train_steps=args.train_steps,
            stages=tuple(filter(None, (s.strip() for s in args.stages.split(",")))),
            precision=args.precision,
            json=args.json,
            out=args.out,
        )
    except ValueError as exc:
        parser.error(str(exc))
        raise  # parser.error exits; this keeps type checkers content


# ---- The machine ---------------------------------------------------------------------------------






# ---- The dataset ---------------------------------------------------------------------------------


@contextlib.contextmanager
def dataset_root(config: BenchConfig) -> Iterator[Store]:
    """The given dataset, or one built from the sample photos in a temporary folder (removed after)."""
    if config.dataset:
        yield Store(config.dataset)
        return
    samples = Path(config.samples)
    if not (samples / "image").is_dir() or not (samples / "cloth").is_dir():
        raise SystemExit(f"no sample photos at {samples} (image/ and cloth/); pass --samples or --dataset")
    from prefect.testing.utilities import prefect_test_harness

    from flows.preprocess import preprocess
    from tasks.stages.registry import PreprocessConfig
    from tests.tryon_dataset import build_catalog

    work = Path(tempfile.mkdtemp(prefix="vitonprep-bench-tryon-"))
    try:
        catalog, out = Store(str(work / "catalog")), Store(str(work / "dataset"))
        pairs = build_catalog(catalog, samples)
        log(f"building a dataset of {len(pairs)} pairs with the preprocess flow in {work}")
        started = time.perf_counter()
        with prefect_test_harness(server_startup_timeout=PREFECT_STARTUP_TIMEOUT_S):
            summary = preprocess(PreprocessConfig(catalog=catalog.url, out=out.url, split=config.split,
                                                  shard_size=PREPROCESS_SHARD_SIZE))
        if summary["persons"]["error"] or summary["garments"]["error"]:
            raise SystemExit(f"preprocess failed on some images: {summary['failed']}")
        log(f"dataset ready in {time.perf_counter() - started:.0f} s")
        yield out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def read_batch(dataset: PairDataset, indices: list[int]) -> tuple[dict, float]:
    """(collated batch, seconds to read and collate it); every pair must be readable."""
    started = time.perf_counter()
    batch = collate_pairs([dataset[i % len(dataset)] for i in indices])
    seconds = time.perf_counter() - started
    if batch is None or len(batch["img_name"]) != len(indices):
        raise SystemExit(f"some pairs of {dataset.split_store.url} could not be read (see the warnings above)")
    return batch, seconds


# ---- Inference -----------------------------------------------------------------------------------


@contextlib.contextmanager
def timed_parts(times: dict[str, float], sync: Callable[[], None]) -> Iterator[None]:
    """Wrap the pipeline functions try_on calls so each call adds its seconds to times[label]."""
    originals = {name: getattr(pipeline, name) for _, name in TRYON_PARTS}

    def timed(label: str, function: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            sync()
            started = time.perf_counter()
            result = function(*args, **kwargs)
            sync()
            times[label] += time.perf_counter() - started
            return result

        return wrapper

    for label, name in TRYON_PARTS:
        setattr(pipeline, name, timed(label, originals[name]))
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(pipeline, name, function)


def bench_inference(config: BenchConfig, split: Store, pairs: list, hw: tuple[int, int]) -> dict:
    sync = synchronizer(config.device)
    reset_peak(config.device)
    arch = with_load_size(Architecture(), *hw)
    nets, _, _ = load_networks(None, config.device, SEED, arch)
    dataset = PairDataset(split, pairs, size_hw=hw)
    fp16 = config.precision == "fp16"
    batches = [list(range(start, min(start + config.batch_size, config.infer_pairs)))
               for start in range(0, config.infer_pairs, config.batch_size)]  # fmt: skip
    warmup = list(range(config.infer_pairs, config.infer_pairs + config.batch_size))
    parts = {label: 0.0 for label, _ in TRYON_PARTS}
    load_s = compute_s = 0.0
    for number, indices in enumerate([warmup, *batches]):
        batch, seconds = read_batch(dataset, indices)
        started = time.perf_counter()
        pipeline.seed_everything(SEED + indices[0])
        if number == 0:
            pipeline.try_on(nets, pipeline.to_device(batch, config.device), fp16=fp16)
            sync()
            log(f"  inference {hw[0]}x{hw[1]} warm-up batch: {time.perf_counter() - started:.1f} s")
            continue
        with timed_parts(parts, sync):
            pipeline.try_on(nets, pipeline.to_device(batch, config.device), fp16=fp16)
            sync()
        elapsed = time.perf_counter() - started
        load_s, compute_s = load_s + seconds, compute_s + elapsed
        log(f"  inference {hw[0]}x{hw[1]} batch {number}/{len(batches)}: read {seconds:.1f} s, "
            f"try_on {elapsed:.1f} s ({len(indices)} pairs)")
    del nets
    release(config.device)
    n = config.infer_pairs
    rows = [("read pair (load_pair)", load_s)]
    rows += [(label, parts[label]) for label, _ in TRYON_PARTS]
    rows.append(("other (transfer, casts)", compute_s - sum(parts.values())))
    rows.append(("try_on", compute_s))
    rows.append(("end to end (read + try_on)", load_s + compute_s))
    return {"resolution": f"{hw[0]}x{hw[1]}", "pairs": n, "batch_size": config.batch_size,
            "precision": config.precision, "cuda_peak_gib": cuda_peak_gib(config.device),
            "parts": [{"part": part, "seconds": s, "ms_per_pair": 1000 * s / n, "pairs_per_s": n / s if s > 0 else None}
                      for part, s in rows]}  # fmt: skip


# ---- Training ------------------------------------------------------------------------------------


def bench_stage(config: BenchConfig, stage: str, arch: Architecture, batch: dict) -> dict:
    sync = synchronizer(config.device)
    reset_peak(config.device)
    settings = TrainSettings(stage=stage, batch_size=config.batch_size, seed=SEED, cache_samples=True)
    frozen_gmm = build_network("gmm", arch) if stage == "alias" else None
    started = time.perf_counter()
    trainer = StageTrainer(settings, arch, config.device, frozen_gmm=frozen_gmm)
    build_s = time.perf_counter() - started
    times = []
    for step in range(config.train_steps + 1):
        sync()
        started = time.perf_counter()
        seed_step(SEED, step)
        trainer.step(batch)
        sync()
        elapsed = time.perf_counter() - started
        label = "warm-up step" if step == 0 else f"step {step}/{config.train_steps}"
        log(f"  train {stage} {arch.load_height}x{arch.load_width} {label}: {elapsed:.1f} s")
        if step:
            times.append(elapsed)
    params = sum(p.numel() for p in trainer.net.parameters())
    peak = cuda_peak_gib(config.device)
    del trainer, frozen_gmm
    release(config.device)
    seconds = sum(times)
    pairs = len(batch["img_name"])
    return {"stage": stage, "steps": len(times), "batch_size": pairs, "build_s": build_s, "parameters": params,
            "cuda_peak_gib": peak, "s_per_step": seconds / len(times), "steps_per_s": len(times) / seconds,
            "pairs_per_s": pairs * len(times) / seconds}  # fmt: skip


def bench_training(config: BenchConfig, split: Store, pairs: list, hw: tuple[int, int]) -> dict:
    arch = with_load_size(Architecture(), *hw)
    dataset = PairDataset(split, pairs, size_hw=hw, targets=True)
    batch, read_s = read_batch(dataset, list(range(config.batch_size)))
    batch = pipeline.to_device(batch, config.device)
    log(f"  train {hw[0]}x{hw[1]}: read a batch of {config.batch_size} with targets in {read_s:.1f} s")
    stages = [guarded(f"training {stage}", {"stage": stage}, bench_stage, config, stage, arch, batch)
              for stage in config.stages]  # fmt: skip
    return {"resolution": f"{hw[0]}x{hw[1]}", "read_ms_per_pair": 1000 * read_s / config.batch_size,
            "stages": stages}  # fmt: skip




def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def cuda_peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None




def guarded(what: str, identity: dict, function: Callable[..., dict], *args) -> dict:
    """function(*args), or identity plus the error when it runs out of memory or fails in PyTorch: one
    resolution or stage that does not fit must not lose the figures of the others."""
    try:
        return function(*args)
    except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    log(f"  {what} failed: {error}")
    release(args[0].device)  # after the except block, which kept the failed frame's tensors alive
    return {**identity, "error": error}


# ---- Report --------------------------------------------------------------------------------------


def machine_line(info: dict) -> str:
    where = f"{info['gpu']} (CUDA {info['cuda']})" if info["device"] == "cuda" else f"CPU {info['cpu']}"
    return (f"{where}; {info['cpus']} CPUs, torch {info['torch']} with {info['threads']} threads; "
            f"load average {info['loadavg_start'][0]:.2f} at the start, {info['loadavg_end'][0]:.2f} at the end; "
            f"peak RSS {info['peak_rss_gib']:.1f} GiB")


def plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def print_tables(report: dict) -> None:
    info, config = report["machine"], report["config"]
    print(f"\n{machine_line(info)}")
    print(f"random-init official widths (ngf 64, discriminator ndf 64), batch size {config['batch_size']}, "
          f"wall {report['wall_s']:.0f} s")
    print(f"\nInference ({config['precision']}, {plural(config['infer_pairs'], 'timed pair')} per resolution "
          "after one warm-up batch)\n")
    print("| resolution | part | ms/pair | pairs/s |")
    print("|---|---|---:|---:|")
    for result in report["inference"]:
        if "error" in result:
            print(f"| {result['resolution']} | failed: {result['error']} | - | - |")
            continue
        for part in result["parts"]:
            rate = f"{part['pairs_per_s']:.3f}" if part["pairs_per_s"] else "-"
            print(f"| {result['resolution']} | {part['part']} | {part['ms_per_pair']:.0f} | {rate} |")
    print(f"\nTraining (fp32, {plural(config['train_steps'], 'timed step')} per stage after one warm-up step, "
          "on one batch read beforehand)\n")
    print("| resolution | stage | s/step | steps/s | pairs/s |")
    print("|---|---|---:|---:|---:|")
    for result in report["training"]:
        resolution = result["resolution"]
        if "error" in result:
            print(f"| {resolution} | failed: {result['error']} | - | - | - |")
            continue
        read = result["read_ms_per_pair"] / 1000
        print(f"| {resolution} | read pair with targets (not in the steps) | {read:.2f} s/pair | - | {1 / read:.2f} |")
        for stage in result["stages"]:
            if "error" in stage:
                print(f"| {resolution} | {stage['stage']} failed: {stage['error']} | - | - | - |")
                continue
            print(f"| {resolution} | {stage['stage']} | {stage['s_per_step']:.2f} "
                  f"| {stage['steps_per_s']:.3f} | {stage['pairs_per_s']:.3f} |")


def main(argv: list[str] | None = None) -> int:
    config = config_from_args(argv)
    logging.getLogger("vitonhd_models.checkpoints").setLevel(logging.ERROR)  # "randomly initialised": on purpose
    info = {**device_info(config.device), "loadavg_start": os.getloadavg()}
    log(f"bench tryon on {info.get('gpu', info['cpu'])} ({config.device}), resolutions "
        f"{', '.join(f'{h}x{w}' for h, w in config.resolutions)}")
    started = time.perf_counter()
    inference, training = [], []
    with dataset_root(config) as root:
        split = root.child(config.split)
        pairs = read_pairs(root, config.split)
        if not pairs:
            raise SystemExit(f"{root.url} has no pairs in its {config.split} split")
        for hw in config.resolutions:
            log(f"inference at {hw[0]}x{hw[1]}")
            inference.append(guarded(f"inference {hw[0]}x{hw[1]}", {"resolution": f"{hw[0]}x{hw[1]}"},
                                     bench_inference, config, split, pairs, hw))
            log(f"training at {hw[0]}x{hw[1]}")
            training.append(guarded(f"training {hw[0]}x{hw[1]}", {"resolution": f"{hw[0]}x{hw[1]}"},
                                    bench_training, config, split, pairs, hw))
    info["loadavg_end"] = os.getloadavg()
    info["peak_rss_gib"] = peak_rss_gib()
    report = {"machine": info, "config": {**asdict(config), "resolutions": [f"{h}x{w}" for h, w in config.resolutions]},
              "wall_s": time.perf_counter() - started,
              "inference": inference, "training": training}  # fmt: skip
    text = json.dumps(report, indent=2)
    if config.out:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        name = f"tryon-{config.device}-{stamp}.json"
        Store(config.out).write_text(name, text + "\n")
        log(f"wrote {Store(config.out).url_of(name)}")
    if config.json:
        print(text)
    else:
        print_tables(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
