"""Benchmark: one prepared GPU run, one table (`bash bench/gpu.sh`, `make bench-gpu`).

    .venv/bin/python bench/gpu.py [--tiny] [--budget-s 480] [--samples ../shared/samples/vitonhd] [--json] [--out F]

GPU time comes in short windows, so this measures in one call what the GPU side of the project does:

1. shard pass: `tasks.engine.shard.process_shard` over a generated catalog of person photos (the sample photos
   copied under new names), planned and cut into shards as the flow does and run on as many threads as the flow
   runs shard tasks, without Prefect (no server: the GPU slot is not taken), the per-item stages in the engine's
   worker processes, the YOLO parser (`yolov8x-seg`, random weights built offline from Ultralytics' architecture
   file and saved as a checkpoint, `parser="yolo:<path>"`) on the model thread at each parse batch size.
   Persons/s, GPU utilisation and memory (nvidia-smi, sampled in the background), and where the time goes: each
   stage's ms per person from the manifest rows (a batched stage's row holds its share of the batch), the
   catalog reads and output writes (summed over the I/O threads), and how busy the model thread was.
2. cloth mask: the U-Net option (`tasks.stages.cloth_mask`, a ClothUNet checkpoint with random weights) one
   garment at a time as the worker processes run it today (`mask_cloth`, CPU, one process), and batched
   (`mask_cloth_batch`, on CUDA when there is one) at a few batch sizes: garments/s, and prepare / forward /
   mask ms per garment.
3. try-on: `vitonhd_models.pipeline.try_on` (seg -> GMM -> ALIAS, official widths, random weights) on synthetic
   inputs (`bench/tryon_networks.py`) in bulk batches at 1024x768, fp32 and fp16 (CUDA only): pairs/s.
4. training: one `vitonhd_models.train.StageTrainer` per stage (seg, gmm, alias; discriminator ndf 64, no VGG
   loss) on one synthetic batch with targets at 1024x768: steps/s. (bench/tryon.py measures the same on a real
   dataset, which would need a preprocess flow run first.)

Every measurement starts after a warm-up (worker processes started, models built, one call at the same
shapes) and stops after `torch.cuda.synchronize()`. A budget (--budget-s, 480 s by default) keeps the call
short: a setting that would start with less than its share of the budget left is reported as skipped, and
SIGTERM (bench/gpu.sh's timeout) prints the rows measured so far. A section whose packages are missing (a bare
GPU machine without the project's virtualenv) is reported as skipped with the import error.

--tiny (automatic without CUDA) is the same run at toy sizes, well under a minute on a 2-core CPU: 4 persons
through the shard pass in this process (workers=0) with yolov8n-seg at parse batches 1 and 2, 2 garments,
try-on and training at 256x256 (the GMM's smallest) with narrow networks (widths 8, ALIAS "normal").
tests/test_gpu_bench.py runs it so that this script keeps working. Weights are random: speed is real, outputs
are not (the random YOLO model detects nothing at the parser's conf 0.25, so its masks and the composite cost
less than a trained model's). Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import cpu_model, log

DEFAULT_SAMPLES = REPO.parent / "shared" / "samples" / "vitonhd"
SEED = 0
DEFAULT_BUDGET_S = 480.0  # bench/gpu.sh stops the run at 540 s; a device call may run 600 s
SMI_INTERVAL_MS = 200
TRAIN_STAGES = ("seg", "gmm", "alias")
PRECISIONS = ("fp32", "fp16")


# ---- Configuration, validated once --------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """The sizes of one run: full (CUDA) or tiny (a smoke run on a CPU)."""

    name: str
    yolo_size: str
    persons: int  # timed persons per parse batch size (fewer when the budget runs short)
    warm_persons: int  # one untimed pass first: worker processes, models, first jobs
    parse_batches: tuple[int, ...]
    shard_size: int
    workers: int | None  # None: one per core, as the engine's default
    garments: int  # batched cloth mask: garments per batch size
    garments_one_by_one: int  # the per-item path (CPU, one process)
    mask_batches: tuple[int, ...]
    tryon_hw: tuple[int, int]
    tryon_batch: int
    tryon_repeats: int
    train_batch: int
    train_steps: int
    widths: int | None  # None: the official widths (ngf 64); else every generator's ngf and the discriminator's ndf
    upsampling: str  # ALIAS num_upsampling_layers ("most" is official: sides multiples of 128)
    # Seconds a setting needs at least to be started (the budget guard): shard pass, cloth mask, try-on, training.
    need_s: dict[str, float] = field(default_factory=dict)


FULL = Profile(
    name="full", yolo_size="x", persons=256, warm_persons=32, parse_batches=(1, 8, 32), shard_size=64, workers=None,
    garments=256, garments_one_by_one=32, mask_batches=(1, 8, 32), tryon_hw=(1024, 768), tryon_batch=8,
    tryon_repeats=3, train_batch=2, train_steps=5, widths=None, upsampling="most",
    need_s={"shard": 45.0, "mask": 15.0, "tryon": 20.0, "train": 30.0},
)
TINY = Profile(
    name="tiny", yolo_size="n", persons=4, warm_persons=1, parse_batches=(1, 2), shard_size=4, workers=0,
    garments=2, garments_one_by_one=1, mask_batches=(1, 2), tryon_hw=(256, 256), tryon_batch=1, tryon_repeats=1,
    train_batch=2, train_steps=1, widths=8, upsampling="normal",  # 256x256: the GMM's smallest sides
    need_s={"shard": 0.0, "mask": 0.0, "tryon": 0.0, "train": 0.0},
)


@dataclass(frozen=True)
class BenchConfig:
    profile: Profile
    device: str
    budget_s: float
    samples: str
    json: bool
    out: str | None


def config_from_args(argv: list[str] | None = None) -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="toy sizes (automatic without CUDA)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds the whole run may take; settings that would start later are skipped "
                             f"(default {DEFAULT_BUDGET_S:.0f})")
    parser.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES,
                        help="folder with image/ and cloth/ (768x1024 JPEGs; default ../shared/samples/vitonhd)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON after the table")
    parser.add_argument("--out", type=Path, help="file to write the report to as JSON as well")
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        parser.error("--budget-s must be positive")
    if not (args.samples / "image").is_dir() or not (args.samples / "cloth").is_dir():
        parser.error(f"no sample photos at {args.samples} (image/ and cloth/)")
    device = cuda_device()
    profile = TINY if args.tiny or device == "cpu" else FULL
    return BenchConfig(profile=profile, device=device, budget_s=args.budget_s, samples=str(args.samples),
                       json=args.json, out=str(args.out) if args.out else None)


def cuda_device() -> str:
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


# ---- Rows, the budget, the GPU sampler ------------------------------------------------------------


@dataclass
class Row:
    what: str
    setting: str
    items: str = "-"
    seconds: float | None = None
    rate: float | None = None
    unit: str = ""
    gpu_util: str = "n/a"
    gpu_mem_mib: str = "n/a"
    where: str = ""


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.perf_counter() + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def allows(self, need_s: float) -> bool:
        return self.left() >= need_s


class GpuSampler:
    """GPU utilisation and memory while a measurement runs: `nvidia-smi -lms` in the background (a reader
    thread), else `torch.cuda.utilization()` polled, else nothing ("n/a", as on a CPU)."""

    def __init__(self, device: str):
        self.device = device
        self.util: list[float] = []
        self.mem: list[float] = []
        self._process: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def __enter__(self) -> GpuSampler:
        if self.device != "cuda":
            return self
        if shutil.which("nvidia-smi"):
            gpu = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]  # the one torch calls cuda:0
            self._process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                 f"--loop-ms={SMI_INTERVAL_MS}", f"--id={gpu}"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._read_smi, daemon=True)
        else:
            self._thread = threading.Thread(target=self._poll_torch, daemon=True)
        self._thread.start()
        return self

    def _read_smi(self) -> None:
        for line in self._process.stdout:
            with contextlib.suppress(ValueError):
                util, mem = (float(part) for part in line.split(",")[:2])
                self.util.append(util)
                self.mem.append(mem)

    def _poll_torch(self) -> None:
        import torch

        while not self._stop.wait(SMI_INTERVAL_MS / 1000):
            try:
                self.util.append(float(torch.cuda.utilization()))
                self.mem.append(torch.cuda.memory_reserved() / 2**20)
            except Exception:  # noqa: BLE001 - no NVML: nothing to report
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._process is not None:
            self._process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def fill(self, row: Row) -> Row:
        if self.util:
            row.gpu_util = f"{statistics.mean(self.util):.0f} / {max(self.util):.0f}"
            row.gpu_mem_mib = f"{max(self.mem):.0f}"
        return row


def synchronizer(device: str) -> Callable[[], None]:
    from bench.machine import synchronizer as make

    return make(device)


def release(device: str) -> None:
    from bench.machine import release as free

    free(device)


def plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def skipped(what: str, setting: str, why: str) -> Row:
    return Row(what, setting, where=f"skipped: {why}")


def failed(what: str, setting: str, error: BaseException) -> Row:
    first = str(error).splitlines()[0] if str(error) else ""
    return Row(what, setting, where=f"failed: {type(error).__name__}: {first[:200]}")


# ---- 1. The shard pass with the YOLO parser ----------------------------------------------------


def person_photos(samples: str) -> list[Path]:
    paths = sorted((Path(samples) / "image").glob("*.jpg"))
    if not paths:
        raise FileNotFoundError(f"no person photos in {samples}/image")
    return paths


def build_person_catalog(samples: str, root: Path, count: int) -> None:
    """persons/ with `count` photos: the samples, copied under new names."""
    photos = person_photos(samples)
    (root / "persons").mkdir(parents=True)
    for index in range(count):
        source = photos[index % len(photos)]
        shutil.copyfile(source, root / "persons" / f"{source.stem}-{index:05d}.jpg")


def random_yolo_checkpoint(size: str, path: Path) -> Path:
    """yolov8{size}-seg with the parser's 8 classes and random (seeded) weights, built from Ultralytics' bundled
    architecture file and saved as a checkpoint (bench/parser.py's `build_model`): nothing is downloaded."""
    import tasks.stages.parse_yolo  # noqa: F401 - its environment (offline, threads) before Ultralytics loads

    with contextlib.redirect_stdout(sys.stderr):
        from bench.parser import build_model

        build_model(size).save(path)
    return path


class IoTimer:
    """Seconds the shard pass spends in catalog reads and output writes (summed over its I/O threads)."""

    def __init__(self):
        self.seconds = {"read": 0.0, "write": 0.0}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        from tasks.infra.store import Store

        originals = {"read_bounded": Store.read_bounded, "write_bytes": Store.write_bytes}

        def timed(kind: str, function: Callable) -> Callable:
            def wrapper(*args, **kwargs):
                started = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    with self._lock:
                        self.seconds[kind] += time.perf_counter() - started

            return wrapper

        Store.read_bounded = timed("read", originals["read_bounded"])
        Store.write_bytes = timed("write", originals["write_bytes"])
        try:
            yield
        finally:
            Store.read_bounded = originals["read_bounded"]
            Store.write_bytes = originals["write_bytes"]


@contextlib.contextmanager
def no_gpu_slot() -> Iterator[None]:
    """No Prefect server here: the batched stages run without taking the machine's GPU slot."""
    from tasks.infra import runtime

    original = runtime.gpu_slot
    runtime.gpu_slot = lambda on_gpu: contextlib.nullcontext()
    try:
        yield
    finally:
        runtime.gpu_slot = original


def shard_rows(config: BenchConfig, budget: Budget, work: Path, rows: list[Row]) -> None:
    profile = config.profile
    what = f"shard pass, YOLO parser (yolov8{profile.yolo_size}-seg)"
    settings = [f"parse batch {batch}" for batch in profile.parse_batches]
    try:
        from tasks.engine.plan import plan_catalog
        from tasks.engine.shard import ShardRun, process_shard
        from tasks.engine.workers import model_thread, prepare_models, worker_pool, workers_of
        from tasks.infra.runtime import SHARDS_IN_FLIGHT
        from tasks.infra.store import Store
        from tasks.records.catalog import PERSON, detect_catalog_layout, list_items, plan_shards
        from tasks.records.config import Selection
        from tasks.stages.normalize import Ingested
        from tasks.stages.parse_yolo import UntrustedWeightsError
        from tasks.stages.registry import (
            PreprocessConfig,
            StageEnv,
            StageInput,
            active_stages,
            check_weights,
            resolve_weights,
            stage_fingerprints,
        )
    except ImportError as error:
        rows.extend(skipped(what, setting, f"cannot import: {error}") for setting in settings)
        return

    import contextvars

    import numpy as np
    from PIL import Image

    log(f"shard pass: building yolov8{profile.yolo_size}-seg with random weights")
    weights_path = random_yolo_checkpoint(profile.yolo_size, work / f"yolov8{profile.yolo_size}-seg-random.pt")
    catalog = work / "catalog"
    total = profile.warm_persons + profile.persons
    build_person_catalog(config.samples, catalog, total)

    def config_for(batch: int, out: Path, trust: bool) -> PreprocessConfig:
        return PreprocessConfig(catalog=str(catalog), out=str(out), shard_size=profile.shard_size,
                                workers=profile.workers, parser=f"yolo:{weights_path}", parse_batch_size=batch,
                                trust_weights=trust)

    trust = False
    base = config_for(profile.parse_batches[0], work / "out-plan", trust)
    weights = resolve_weights(base)
    try:
        check_weights(base, weights)
    except UntrustedWeightsError:  # our own file: say so and load it as Ultralytics does
        log("shard pass: the random checkpoint is refused by the safe loader; loading it as trusted")
        trust = True
        base = config_for(profile.parse_batches[0], work / "out-plan", trust)
    run = ShardRun("bench-gpu", stage_fingerprints(base, weights), weights)
    store = Store(str(catalog))
    _, works = plan_catalog({PERSON: list_items(store, detect_catalog_layout(store), PERSON)}, {},
                            run.fingerprints, Selection())
    persons = works[PERSON]
    warm, timed = persons[: profile.warm_persons], persons[profile.warm_persons:]

    workers = workers_of(base)
    log(f"shard pass: {workers} worker processes" if workers else "shard pass: stages inline (workers=0)")
    if workers:
        pool = worker_pool(workers)
        for future in [pool.submit(prepare_models, base)[0] for _ in range(workers)]:
            future.result()
    shard_threads = ThreadPoolExecutor(SHARDS_IN_FLIGHT, thread_name_prefix="bench-shard")
    photos = [np.asarray(Image.open(path).convert("RGB")) for path in person_photos(config.samples)]

    def run_pass(cfg: PreprocessConfig, items: list) -> list[dict]:
        shards = [(f"person-{i:05d}", shard) for i, shard in enumerate(plan_shards(items, cfg.shard_size))]
        return [row for part in shard_threads.map(lambda shard: process_shard(cfg, run, *shard), shards)
                for row in part]

    def warm_model_thread(cfg: PreprocessConfig, batch: int) -> None:
        """Build the parser on the model thread and run one batch of this size there (untimed)."""
        env = StageEnv(cfg, weights)
        [parse] = [entry for entry in active_stages(cfg, PERSON) if entry.name == "parse"]
        inputs = [StageInput(timed[0], {"ingest": Ingested(photos[i % len(photos)], None)}) for i in range(batch)]
        model_thread.submit(contextvars.copy_context().run, parse.run, env, inputs).result()

    done = 0
    rate: float | None = None
    with no_gpu_slot():
        try:
            log(f"shard pass: warm-up pass over {len(warm)} persons")
            run_pass(config_for(profile.parse_batches[0], work / "out-warm", trust), warm)
            sync = synchronizer(config.device)
            for batch, setting in zip(profile.parse_batches, settings):
                if not budget.allows(profile.need_s["shard"]):
                    rows.append(skipped(what, setting, f"budget ({budget.left():.0f} s left)"))
                    continue
                count = len(timed)
                if rate and profile.name == "full":  # keep each setting within its share of what is left
                    share = budget.left() / (len(settings) - done + 3)  # the other sections' share too
                    count = max(min(count, 2 * batch), min(count, int(rate * share)))
                items = timed[:count]
                cfg = config_for(batch, work / f"out-batch{batch}", trust)
                try:
                    warm_model_thread(cfg, batch)
                    io = IoTimer()
                    with io.patched(), GpuSampler(config.device) as gpu:
                        started = time.perf_counter()
                        manifest = run_pass(cfg, items)
                        sync()
                        seconds = time.perf_counter() - started
                except Exception as error:  # noqa: BLE001 - one setting lost, not the table
                    log(f"shard pass batch {batch} failed: {error!r}")
                    rows.append(failed(what, setting, error))
                    continue
                done += 1
                ok = {row["key"] for row in manifest if row["stage"] == "agnostic" and row["status"] == "ok"}
                errors = sorted({row["error_code"] for row in manifest if row["status"] == "error"})
                rate = len(items) / seconds
                stage_ms = {}
                for name in ("ingest", "pose", "pose_gate", "parse", "agnostic", "densepose"):
                    values = [row["ms"] for row in manifest if row["stage"] == name and row["ms"] is not None]
                    stage_ms[name] = sum(values) / len(values) if values else None
                parse_s = sum(row["ms"] or 0.0 for row in manifest if row["stage"] == "parse") / 1000
                parts = [f"read {1000 * io.seconds['read'] / len(items):.1f}"]
                parts += [f"{name} {ms:.1f}" for name, ms in stage_ms.items() if ms is not None]
                parts.append(f"write {1000 * io.seconds['write'] / len(items):.1f}")
                where = (f"ms/person: {', '.join(parts)}; model thread busy {100 * parse_s / seconds:.0f}%; "
                         f"{len(ok)}/{len(items)} persons ok")
                if errors:
                    where += f" (errors: {', '.join(errors)})"
                rows.append(gpu.fill(Row(what, setting, plural(len(items), "person"), seconds, rate, "persons/s",
                                         where=where)))
                log(f"shard pass batch {batch}: {len(items)} persons in {seconds:.1f} s")
        finally:
            shard_threads.shutdown(wait=False, cancel_futures=True)  # after SIGTERM, passes still running are left


# ---- 2. The U-Net cloth mask, one at a time and batched -----------------------------------------


def random_unet_checkpoint(path: Path) -> Path:
    """A ClothUNet with random (seeded) weights, its head's bias set so the sigmoid straddles 0.5 on a plain
    input: masks of some size, so the post-processing does the work a trained model's output gives it."""
    import torch

    from vitonhd_models.cloth_unet import ClothUNet

    torch.manual_seed(SEED)
    model = ClothUNet().eval()
    with torch.no_grad():
        model.head.bias.zero_()
        probability = model(torch.zeros(1, 3, 320, 240)).clamp(1e-6, 1 - 1e-6)
        model.head.bias.fill_(-float(torch.logit(probability).median()))
    torch.save(model.state_dict(), path)
    return path


class PartTimer:
    """Seconds spent in named module functions (patched for the duration), synchronised on CUDA."""

    def __init__(self, module, names: tuple[str, ...], sync: Callable[[], None]):
        self.module, self.names, self.sync = module, names, sync
        self.seconds = dict.fromkeys(names, 0.0)

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        originals = {name: getattr(self.module, name) for name in self.names}

        def timed(name: str, function: Callable) -> Callable:
            def wrapper(*args, **kwargs):
                self.sync()
                started = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    self.sync()
                    self.seconds[name] += time.perf_counter() - started

            return wrapper

        for name, function in originals.items():
            setattr(self.module, name, timed(name, function))
        try:
            yield
        finally:
            for name, function in originals.items():
                setattr(self.module, name, function)


def mask_rows(config: BenchConfig, budget: Budget, work: Path, rows: list[Row]) -> None:
    profile = config.profile
    what = "cloth mask, U-Net (ClothUNet)"
    one_by_one = "one at a time (mask_cloth, CPU, 1 process)"
    settings = [one_by_one] + [f"batched {batch} ({config.device})" for batch in profile.mask_batches]
    try:
        from tasks.stages import cloth_mask
        from tasks.stages.normalize import Ingested
        from tasks.stages.registry import PreprocessConfig, StageEnv, StageInput, per_item, resolve_weights
    except ImportError as error:
        rows.extend(skipped(what, setting, f"cannot import: {error}") for setting in settings)
        return
    if not hasattr(cloth_mask, "mask_cloth_batch"):
        rows.extend(skipped(what, setting, "tasks.stages.cloth_mask has no mask_cloth_batch") for setting in settings)
        return
    import numpy as np
    from PIL import Image

    checkpoint = random_unet_checkpoint(work / "cloth_unet-random.pt")
    run_config = PreprocessConfig(catalog="-", out="-", cloth_mask_model=str(checkpoint))
    env = StageEnv(run_config, resolve_weights(run_config))
    photos = [np.asarray(Image.open(path).convert("RGB")) for path in sorted((Path(config.samples) / "cloth").glob("*.jpg"))]
    if not photos:
        rows.extend(skipped(what, setting, f"no garment photos in {config.samples}/cloth") for setting in settings)
        return
    garments = [StageInput(None, {"ingest": Ingested(photos[i % len(photos)], None)}) for i in range(profile.garments)]
    sync = synchronizer(config.device)

    def measure(setting: str, items: list, call: Callable[[list], list], parts: PartTimer, sampler_device: str) -> Row:
        call(items[:1])  # warm-up: the model built (and moved), the first call's allocations
        sync()
        with parts.patched(), GpuSampler(sampler_device) as gpu:
            started = time.perf_counter()
            results = call(items)
            sync()
            seconds = time.perf_counter() - started
        masked = sum(1 for result in results if not isinstance(result, BaseException))
        split = ", ".join(f"{name.replace('unet_', '').replace('_of', '')} {1000 * s / len(items):.1f}"
                          for name, s in parts.seconds.items())
        return gpu.fill(Row(what, setting, plural(len(items), "garment"), seconds, len(items) / seconds, "garments/s",
                            where=f"ms/garment: {split}; {masked}/{len(items)} masks pass the coverage check"))

    if budget.allows(profile.need_s["mask"]):
        try:
            items = garments[: profile.garments_one_by_one]
            parts = PartTimer(cloth_mask, ("postprocess_probability",), sync)
            one_at_a_time = per_item(cloth_mask.mask_cloth)
            row = measure(one_by_one, items, lambda chunk: one_at_a_time(env, chunk), parts, "cpu")
            row.where = row.where.replace("postprocess_probability", "post-processing")
            rows.append(row)
        except Exception as error:  # noqa: BLE001
            rows.append(failed(what, one_by_one, error))
    else:
        rows.append(skipped(what, one_by_one, f"budget ({budget.left():.0f} s left)"))
    for batch, setting in zip(profile.mask_batches, settings[1:]):
        if not budget.allows(profile.need_s["mask"]):
            rows.append(skipped(what, setting, f"budget ({budget.left():.0f} s left)"))
            continue

        def batched(items: list, batch: int = batch) -> list:
            results = []
            for start in range(0, len(items), batch):
                results += cloth_mask.mask_cloth_batch(env, items[start : start + batch])
            return results

        try:
            parts = PartTimer(cloth_mask, ("unet_input", "unet_forward", "unet_mask_of"), sync)
            rows.append(measure(setting, garments, batched, parts, config.device))
        except Exception as error:  # noqa: BLE001
            rows.append(failed(what, setting, error))
        log(f"cloth mask {setting}: {rows[-1].where}")


# ---- 3. and 4. Try-on and training ----------------------------------------------------------------


def architecture(profile: Profile):
    from vitonhd_models.checkpoints import Architecture, with_load_size

    arch = Architecture(num_upsampling_layers=profile.upsampling)
    if profile.widths:
        arch = replace(arch, seg_ngf=profile.widths, gmm_ngf=profile.widths, alias_ngf=profile.widths,
                       alias_norm_hidden=2 * profile.widths)
    return with_load_size(arch, *profile.tryon_hw)


def training_batch(batch: int, height: int, width: int, device: str) -> dict:
    """bench/tryon_networks.py's synthetic try-on inputs plus what training reads: the person image, its own
    13-group parse (the same one-hot layout as the parse-agnostic) and its upper-clothes region."""
    import torch

    from bench.tryon_networks import synthetic_batch
    from vitonhd_models.data import UPPER_GROUP_13

    inputs = synthetic_batch(batch, height, width, device)
    generator = torch.Generator().manual_seed(SEED + 2)
    parse = inputs["parse_agnostic"].clone()
    return {**inputs, "img_name": [f"person{i}" for i in range(batch)],
            "img": (torch.rand(batch, 3, height, width, generator=generator) * 2 - 1).to(device),
            "parse": parse, "parse_cloth": parse[:, UPPER_GROUP_13 : UPPER_GROUP_13 + 1].clone()}


def tryon_rows(config: BenchConfig, budget: Budget, rows: list[Row]) -> None:
    profile = config.profile
    height, width = profile.tryon_hw
    what = f"try-on seg->GMM->ALIAS, {height}x{width}"
    settings = [f"{precision}, batch {profile.tryon_batch}" for precision in PRECISIONS]
    try:
        import torch

        from bench.tryon_networks import synthetic_batch
        from vitonhd_models import pipeline
        from vitonhd_models.checkpoints import load_networks
    except ImportError as error:
        rows.extend(skipped(what, setting, f"cannot import: {error}") for setting in settings)
        return
    try:  # the split into seg / GMM / ALIAS; bench/tryon.py needs fsspec besides torch
        from bench.tryon import TRYON_PARTS, timed_parts
    except ImportError:
        TRYON_PARTS = timed_parts = None
    device, sync = config.device, synchronizer(config.device)
    torch.backends.cudnn.benchmark = True
    nets = None
    try:
        for precision, setting in zip(PRECISIONS, settings):
            if precision == "fp16" and device != "cuda":
                rows.append(skipped(what, setting, "fp16 runs on CUDA only"))
                continue
            if not budget.allows(profile.need_s["tryon"]):
                rows.append(skipped(what, setting, f"budget ({budget.left():.0f} s left)"))
                continue
            try:
                if nets is None:
                    nets, _, _ = load_networks(None, device, SEED, architecture(profile))
                batch = synthetic_batch(profile.tryon_batch, height, width, device)
                seeds = list(range(profile.tryon_batch))

                def call(nets=nets, batch: dict = batch, fp16: bool = precision == "fp16", seeds=seeds) -> None:
                    pipeline.try_on(nets, batch, fp16=fp16, seeds=seeds)

                call()  # warm-up (cuDNN autotuning, the allocator)
                sync()
                with GpuSampler(device) as gpu:
                    started = time.perf_counter()
                    for _ in range(profile.tryon_repeats):
                        call()
                    sync()
                    seconds = time.perf_counter() - started
                split = "n/a (bench/tryon.py does not import)"
                if timed_parts is not None:
                    parts = {label: 0.0 for label, _ in TRYON_PARTS}
                    with timed_parts(parts, sync):  # one more call, each part synchronised, for the split
                        call()
                    split = ", ".join(f"{label} {1000 * s / profile.tryon_batch:.0f}" for label, s in parts.items())
                pairs = profile.tryon_batch * profile.tryon_repeats
                peak = f"; CUDA peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device == "cuda" else ""
                rows.append(gpu.fill(Row(what, setting, plural(pairs, "pair"), seconds, pairs / seconds, "pairs/s",
                                         where=f"ms/pair: {split}{peak}")))
                log(f"try-on {setting}: {pairs / seconds:.2f} pairs/s")
            except Exception as error:  # noqa: BLE001 - out of memory (a RuntimeError) or else: one row lost
                rows.append(failed(what, setting, error))
    finally:
        del nets
        release(device)


def train_rows(config: BenchConfig, budget: Budget, rows: list[Row]) -> None:
    profile = config.profile
    height, width = profile.tryon_hw
    what = f"training, {height}x{width}"
    settings = [f"{stage}, batch {profile.train_batch}" for stage in TRAIN_STAGES]
    try:
        import torch

        from vitonhd_models.checkpoints import build_network
        from vitonhd_models.train import StageTrainer, TrainSettings, seed_step
    except ImportError as error:
        rows.extend(skipped(what, setting, f"cannot import: {error}") for setting in settings)
        return
    device, sync = config.device, synchronizer(config.device)
    arch = architecture(profile)
    batch = training_batch(profile.train_batch, height, width, device)
    for stage, setting in zip(TRAIN_STAGES, settings):
        if not budget.allows(profile.need_s["train"]):
            rows.append(skipped(what, setting, f"budget ({budget.left():.0f} s left)"))
            continue
        trainer = frozen_gmm = None
        try:
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            frozen_gmm = build_network("gmm", arch) if stage == "alias" else None
            settings_ = TrainSettings(stage=stage, batch_size=profile.train_batch, seed=SEED,
                                      ndf=profile.widths or 64)
            trainer = StageTrainer(settings_, arch, device, frozen_gmm=frozen_gmm)
            seed_step(SEED, 0)
            trainer.step(batch)  # warm-up
            sync()
            with GpuSampler(device) as gpu:
                started = time.perf_counter()
                for step in range(1, profile.train_steps + 1):
                    seed_step(SEED, step)
                    trainer.step(batch)
                sync()
                seconds = time.perf_counter() - started
            params = sum(p.numel() for p in trainer.net.parameters()) / 1e6
            peak = f", CUDA peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device == "cuda" else ""
            pairs_per_s = profile.train_batch * profile.train_steps / seconds
            rows.append(gpu.fill(Row(what, setting, plural(profile.train_steps, "step"), seconds,
                                     profile.train_steps / seconds, "steps/s",
                                     where=f"{1000 * seconds / profile.train_steps:.0f} ms/step, {pairs_per_s:.2f} "
                                           f"pairs/s; generator {params:.1f} M parameters{peak}")))
            log(f"training {setting}: {profile.train_steps / seconds:.3f} steps/s")
        except Exception as error:  # noqa: BLE001 - out of memory (a RuntimeError) or else: one row lost
            rows.append(failed(what, setting, error))
        finally:
            del trainer, frozen_gmm
            release(device)


# ---- Report --------------------------------------------------------------------------------------


def machine_line(config: BenchConfig) -> str:
    parts = [f"{os.cpu_count()} CPUs ({cpu_model()})"]
    try:
        import torch

        parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
        if config.device == "cuda":
            parts.insert(0, f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})")
    except ImportError:
        parts.append("no torch")
    return "; ".join(parts)


def cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(config: BenchConfig, rows: list[Row], wall_s: float, note: str = "") -> None:
    profile = config.profile
    print(f"\n{machine_line(config)}; profile {profile.name}; wall {wall_s:.0f} s of a {config.budget_s:.0f} s budget"
          f"{note}")
    print("random weights throughout (speed is real, outputs are not); warm-up excluded; GPU util % mean / max "
          "and memory from nvidia-smi; the shard pass runs without Prefect (no GPU slot taken)\n")
    print("| what | setting | items | s | rate | unit | GPU util % | GPU MiB | where the time goes |")
    print("|---|---|---:|---:|---:|---|---:|---:|---|")
    for row in rows:
        print(f"| {row.what} | {row.setting} | {row.items} | {cell(row.seconds, '.2f')} | {cell(row.rate, '.2f')} "
              f"| {row.unit} | {row.gpu_util} | {row.gpu_mem_mib} | {row.where} |")
    sys.stdout.flush()


class Stopped(BaseException):
    """SIGTERM (bench/gpu.sh's timeout): print what was measured. A BaseException, as KeyboardInterrupt, so that
    no section's `except Exception` takes it for a failed setting."""


def main(argv: list[str] | None = None) -> int:
    config = config_from_args(argv)
    profile = config.profile

    def stop(signum, frame):
        raise Stopped()

    signal.signal(signal.SIGTERM, stop)
    logging.getLogger("vitonhd_models.checkpoints").setLevel(logging.ERROR)  # "randomly initialised": on purpose
    log(f"bench gpu: profile {profile.name} on {config.device}, budget {config.budget_s:.0f} s")
    started = time.perf_counter()
    budget = Budget(config.budget_s)
    rows: list[Row] = []
    note = ""
    work = Path(tempfile.mkdtemp(prefix="vitonprep-bench-gpu-"))
    try:
        # Each section appends its rows as they are measured: a SIGTERM keeps what came before it.
        shard_rows(config, budget, work, rows)
        mask_rows(config, budget, work, rows)
        tryon_rows(config, budget, rows)
        train_rows(config, budget, rows)
    except Stopped:
        note = "; STOPPED by SIGTERM: the rows below are what was measured before it"
        log("stopped by SIGTERM")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        shutil.rmtree(work, ignore_errors=True)
    wall_s = time.perf_counter() - started
    print_table(config, rows, wall_s, note)
    report = {"machine": machine_line(config), "device": config.device, "profile": asdict(profile),
              "wall_s": wall_s, "stopped": bool(note), "rows": [asdict(row) for row in rows]}
    text = json.dumps(report, indent=2)
    if config.json:
        print(text)
    if config.out:
        Path(config.out).write_text(text + "\n")
        log(f"wrote {config.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
