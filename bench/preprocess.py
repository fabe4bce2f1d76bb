"""Benchmark: the preprocess flow against the model floor, measured in one invocation on one catalog.

    .venv/bin/python bench/preprocess.py [--samples ../shared/samples/vitonhd] [--repeat 4] [--workers N]
        [--shard-size 8] [--runners engine,prefect-process] [--json]

Builds a catalog of the sample photos (each repeated under new names), then measures
1. the flow, as `vitonprep preprocess` runs it (a temporary Prefect API server; the worker processes
   start while it starts): images/s inside its run (the flow body: listing, planning, every stage,
   every read and write, manifest, pairs, artifacts) and for the whole command, and per-stage
   ms/image from its manifest (compute and encoding, in the worker processes). Runner `engine` is the
   shipped one: shard tasks on threads, the stages in the engine's worker processes. `prefect-process`
   runs each shard task in Prefect's ProcessPoolTaskRunner instead, the stages inline in it; `no-prefect`
   runs the same shard passes without Prefect (planning included), to tell the engine's cost from
   Prefect's.
2. the model floor: the same stage functions (the registry's, each stage's compute and the encoding
   of its outputs) on pre-decoded arrays, one process per core (the items dealt round-robin, models
   built and photos decoded before the clock starts), no storage: per-stage ms/image and images/s,
   and the same for the compute alone.
3. the ratio of (1) to (2), and a plain loop over the same models in one process for reference.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_model, log  # noqa: E402

DEFAULT_SAMPLES = Path(__file__).resolve().parent.parent.parent / "shared" / "samples" / "vitonhd"
FLOOR_STAGES = ("ingest", "pose", "pose_gate", "parse", "agnostic", "densepose", "cloth_mask")


def build_catalog(samples: Path, root: Path, repeat: int) -> tuple[list[Path], list[Path]]:
    persons, garments = [], []
    for copy in range(repeat):
        for folder, kind, found in (("image", "persons", persons), ("cloth", "garments", garments)):
            for path in sorted((samples / folder).glob("*.jpg")):
                target = root / kind / f"{path.stem}-{copy}.jpg"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                found.append(target)
    return persons, garments


# ---- 1. the flow -----------------------------------------------------------------------------


def run_flow(catalog: Path, out: Path, workers: int, shard_size: int, runner: str) -> dict:
    from flows.local import run_flow as run_like_the_cli
    from tasks.infra.store import Store
    from tasks.records.manifest import item_view, read_run
    from tasks.stages.registry import PreprocessConfig

    started = time.perf_counter()
    if runner == "no-prefect":
        return run_engine_alone(catalog, out, workers, shard_size)
    if runner == "engine":
        config = PreprocessConfig(catalog=str(catalog), out=str(out), shard_size=shard_size, workers=workers)
        summary = run_like_the_cli(config, show_progress=False)
    else:
        from prefect.task_runners import ProcessPoolTaskRunner

        from flows.preprocess import preprocess

        config = PreprocessConfig(catalog=str(catalog), out=str(out), shard_size=shard_size, workers=0)
        flow = preprocess.with_options(task_runner=ProcessPoolTaskRunner(max_workers=workers))
        summary = flow(config)
    command_s = time.perf_counter() - started
    rows = item_view(read_run(Store(str(out)), "test", summary["run_id"]))
    stage_ms = {}
    for stage in FLOOR_STAGES:
        values = [row[f"{stage}_ms"] for row in rows if row.get(f"{stage}_ms") is not None]
        stage_ms[stage] = sum(values) / len(values) if values else None
    failed = summary["persons"]["error"] + summary["garments"]["error"]
    if failed:
        raise RuntimeError(f"{failed} items failed in the flow: {summary['failed'][:3]}")
    return {"command_s": command_s, "run_s": summary["seconds"], "stage_ms": stage_ms}


def run_engine_alone(catalog: Path, out: Path, workers: int, shard_size: int) -> dict:
    """The flow's shard passes without Prefect: plan, then `process_shard` per shard on as many threads
    as the flow runs shard tasks (the worker processes warmed first, as the CLI does)."""
    from concurrent.futures import ThreadPoolExecutor

    from tasks.engine.plan import plan_catalog
    from tasks.engine.shard import ShardRun, process_shard
    from tasks.engine.workers import prepare_models, worker_pool
    from tasks.infra.runtime import SHARDS_IN_FLIGHT
    from tasks.infra.store import Store
    from tasks.records.catalog import GARMENT, PERSON, detect_catalog_layout, list_items, plan_shards
    from tasks.records.config import Selection
    from tasks.stages.registry import PreprocessConfig, resolve_weights, stage_fingerprints

    config = PreprocessConfig(catalog=str(catalog), out=str(out), shard_size=shard_size, workers=workers)
    for future in [worker_pool(workers).submit(prepare_models, config)[0] for _ in range(workers)]:
        future.result()
    started = time.perf_counter()
    store = Store(config.catalog)
    weights = resolve_weights(config)
    run = ShardRun("bench", stage_fingerprints(config, weights), weights)
    layout = detect_catalog_layout(store)
    _, works = plan_catalog({kind: list_items(store, layout, kind) for kind in (PERSON, GARMENT)}, {},
                            run.fingerprints, Selection())
    shards = [(f"{kind}-{i:05d}", shard) for kind in (PERSON, GARMENT)
              for i, shard in enumerate(plan_shards(works[kind], shard_size))]
    with ThreadPoolExecutor(SHARDS_IN_FLIGHT) as pool:
        rows = [row for part in pool.map(lambda shard: process_shard(config, run, *shard), shards) for row in part]
    seconds = time.perf_counter() - started
    stage_ms = {}
    for stage in FLOOR_STAGES:
        values = [row["ms"] for row in rows if row["stage"] == stage]
        stage_ms[stage] = sum(values) / len(values) if values else None
    return {"command_s": seconds, "run_s": seconds, "stage_ms": stage_ms}


# ---- 2. the floor ------------------------------------------------------------------------------


def _floor_worker(paths: list[tuple[str, str]], barrier, results) -> None:
    """One core's share: decode, build the models, wait for the others, then time the stages.

    Each stage is the registry's own function on the results of the stages before it, in memory:
    its compute (`run`) and, timed apart, the encoding of its outputs (`encode`). Ingest starts from
    the decoded source: fit it onto the canvas, then its JPEG and the decode of that JPEG.
    """
    import numpy as np

    from tasks.engine.workers import prepare_models
    from tasks.records.catalog import CatalogItem, WorkItem
    from tasks.stages.model_cache import Weights
    from tasks.stages.normalize import Ingested, decode_image, decode_rgb, encode_jpeg, fit_to_canvas
    from tasks.stages.registry import PreprocessConfig, StageEnv, StageInput, active_stages

    config = PreprocessConfig(catalog="-", out="-")
    env = StageEnv(config, Weights())
    prepare_models(config)
    decoded = [(kind, np.asarray(decode_image(Path(path).read_bytes()))) for kind, path in paths]
    compute: dict[str, list[float]] = {stage: [] for stage in FLOOR_STAGES}
    encode: dict[str, list[float]] = {stage: [] for stage in FLOOR_STAGES}
    barrier.wait()
    started = time.perf_counter()
    for index, (kind, array) in enumerate(decoded):
        work = WorkItem(CatalogItem(kind, f"{index}.jpg", f"{index}.jpg", "-", 0, f"item{index}"), frozenset())
        t0 = time.perf_counter()
        canvas, fit = fit_to_canvas(array)
        t1 = time.perf_counter()
        jpeg = encode_jpeg(canvas)
        values = {"ingest": Ingested(decode_rgb(jpeg), fit, jpeg)}
        compute["ingest"].append(t1 - t0)
        encode["ingest"].append(time.perf_counter() - t1)
        for stage in [s for s in active_stages(config, kind) if s.name != "ingest"]:  # ingested above
            t0 = time.perf_counter()
            [value] = stage.run(env, [StageInput(work, {name: values[name] for name in stage.reads})])
            if isinstance(value, BaseException):
                raise value
            t1 = time.perf_counter()
            stage.encode(value)
            compute[stage.name].append(t1 - t0)
            encode[stage.name].append(time.perf_counter() - t1)
            values[stage.name] = value
    results.put({"wall_s": time.perf_counter() - started, "compute": compute, "encode": encode})


def run_floor(persons: list[Path], garments: list[Path], processes: int) -> dict:
    items = [("person", str(p)) for p in persons] + [("garment", str(g)) for g in garments]
    shares = [items[i::processes] for i in range(processes)]
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_floor_worker, args=(share, barrier, results)) for share in shares]
    for worker in workers:
        worker.start()
    found = []
    while len(found) < len(workers):  # a worker that dies stops the bench instead of hanging it
        try:
            found.append(results.get(timeout=5))
        except queue.Empty:
            dead = [worker.exitcode for worker in workers if worker.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a floor worker died (exit code {dead[0]}); its traceback is above") from None
    for worker in workers:
        worker.join()

    def mean_ms(part: str, stage: str) -> float | None:
        values = [t for result in found for t in result[part][stage]]
        return 1000 * sum(values) / len(values) if values else None

    compute_s = max(sum(sum(v) for v in result["compute"].values()) for result in found)
    return {
        "wall_s": max(result["wall_s"] for result in found),  # compute and encoding
        "compute_s": compute_s,  # the busiest process's compute alone
        "compute_ms": {stage: mean_ms("compute", stage) for stage in FLOOR_STAGES},
        "stage_ms": {stage: (mean_ms("compute", stage) or 0) + (mean_ms("encode", stage) or 0)
                     if mean_ms("compute", stage) is not None else None for stage in FLOOR_STAGES},
    }


# ---- 3. a plain loop, for reference ------------------------------------------------------------------


def run_loop(persons: list[Path], garments: list[Path], out: Path) -> float:
    """Every photo through every stage and its writes, one after another, in one process."""
    from tasks.engine.workers import SOURCE, Job, prepare_models, run_job
    from tasks.infra.store import Store
    from tasks.records.catalog import CatalogItem, WorkItem
    from tasks.stages.model_cache import Weights
    from tasks.stages.registry import PreprocessConfig, stages_for

    config = PreprocessConfig(catalog="-", out=str(out), workers=0)
    store = Store(str(out))
    prepare_models(config)
    started = time.perf_counter()
    for kind, paths in (("person", persons), ("garment", garments)):
        for path in paths:
            item = CatalogItem(kind, path.name, path.name, str(path), path.stat().st_size, path.stem)
            job = Job(WorkItem(item, frozenset(stages_for(kind))), stages_for(kind), (), {},
                      {SOURCE: path.read_bytes()}, ())
            result = run_job(config, Weights(), job)
            for rel, data in result.files.items():
                store.write_bytes(rel, data)
    return time.perf_counter() - started


def fmt(value: float | None, spec: str = "8.1f") -> str:
    return f"{'-':>8}" if value is None else format(value, spec)


def main() -> int:
    from tasks.engine.workers import default_workers

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES, help="folder with image/ and cloth/")
    parser.add_argument("--repeat", type=int, default=4, help="copies of each sample photo (default 4)")
    parser.add_argument("--workers", type=int, default=default_workers(), help="processes (default: one per core)")
    parser.add_argument("--shard-size", type=int, default=8, help="flow shard size (default 8)")
    parser.add_argument("--runners", default="engine,no-prefect,prefect-process",
                        help="flow runners to measure (default engine,no-prefect,prefect-process)")
    parser.add_argument("--no-loop", action="store_true", help="skip the one-process loop")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    if not (args.samples / "image").is_dir():
        print(f"no sample photos at {args.samples}", file=sys.stderr)
        return 1
    runners = [name for name in args.runners.split(",") if name]

    work = Path(tempfile.mkdtemp(prefix="vitonprep-bench-"))
    try:
        persons, garments = build_catalog(args.samples, work / "catalog", args.repeat)
        images = len(persons) + len(garments)
        flows = {}
        for runner in runners:
            log(f"flow, runner {runner}")
            flows[runner] = run_flow(work / "catalog", work / f"out-{runner}", args.workers, args.shard_size, runner)
        log("floor")
        floor = run_floor(persons, garments, args.workers)
        loop_s = None if args.no_loop else run_loop(persons, garments, work / "out-loop")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    floor_rate = images / floor["wall_s"]
    compute_rate = images / floor["compute_s"]
    print(f"\n{len(persons)} persons + {len(garments)} garments (768x1024 samples x{args.repeat}); "
          f"{os.cpu_count()} CPUs ({cpu_model()}); {args.workers} processes; shard size {args.shard_size}\n")
    print(f"| stage ms/image | {' | '.join(f'flow ({r})' for r in runners)} | floor | floor, compute alone |")
    print(f"|---|{'---|' * len(runners)}---|---|")
    for stage in FLOOR_STAGES:
        cells = " | ".join(fmt(flows[r]["stage_ms"][stage]).strip() for r in runners)
        print(f"| {stage} | {cells} | {fmt(floor['stage_ms'][stage]).strip()} "
              f"| {fmt(floor['compute_ms'][stage]).strip()} |")
    print()
    print("| what | seconds | images/s | of the floor |")
    print("|---|---|---|---|")
    print(f"| floor: the stages (compute + encoding) on decoded arrays, {args.workers} processes, no storage "
          f"| {floor['wall_s']:.2f} | {floor_rate:.2f} | 1.00 |")
    print(f"| floor, compute alone (no encoding; the busiest process) | {floor['compute_s']:.2f} "
          f"| {compute_rate:.2f} | {compute_rate / floor_rate:.2f} |")
    for runner, result in flows.items():
        timings = [("inside its run", result["run_s"])]
        if runner != "no-prefect":
            timings.append(("whole command", result["command_s"]))
        for label, seconds in timings:
            rate = images / seconds
            print(f"| flow ({runner}), {label} | {seconds:.2f} | {rate:.2f} | {rate / floor_rate:.2f} |")
    if loop_s is not None:
        print(f"| plain loop in one process (decode, stages, encode, write) | {loop_s:.2f} | {images / loop_s:.2f} "
              f"| {images / loop_s / floor_rate:.2f} |")
    if args.json:
        print(json.dumps({"images": images, "workers": args.workers, "floor": floor, "flows": flows,
                          "loop_s": loop_s}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
