"""What runs in the worker processes, and the processes themselves.

A `Job` is one item's consecutive per-item stages (`run_job` runs it, in a worker process or inline);
the `WorkerPool` is this process's worker processes, spawned once and reused by every shard task it
runs (each keeps the models it built); `run_batch` runs a batched stage (a model on the GPU) on this
process's model thread.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from tasks.records.catalog import WorkItem
from tasks.stages.model_cache import Weights
from tasks.stages.registry import KINDS, PreprocessConfig, Stage, StageEnv, StageInput, active_stages
from vitonhd_models import errors
from vitonhd_models.errors import ItemError

log = logging.getLogger("vitonprep.workers")

SOURCE = "source"  # the key of the source's bytes among a job's files


def default_workers() -> int:
    """Worker processes when the configuration leaves it open: one per core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def workers_of(config: PreprocessConfig) -> int:
    return default_workers() if config.workers is None else config.workers


# ---------------------------------------------------------------------------------------------
# Jobs: what a worker process does for one item


@dataclass
class Job:
    """One item's consecutive per-item stages, for a worker process."""

    work: WorkItem
    stages: tuple[str, ...]  # to run, in order
    encode: tuple[str, ...]  # batched stages that ran before, whose results this job encodes
    values: dict[str, Any]  # results of earlier stages
    files: dict[str, bytes]  # the source (SOURCE) and files of earlier runs, by dataset path
    keep: tuple[str, ...]  # the results later stages read: returned, loaded from files where needed


@dataclass
class JobResult:
    values: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # outputs to write, by dataset path
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)  # per stage: manifest fields
    failed: bool = False
    reload: bool = False  # a file of an earlier run could not be read back: run the item from its source


def error_fields(error: BaseException, stage: str) -> dict[str, Any]:
    if isinstance(error, ItemError):
        return {**error.fields, "error_code": error.code, "error_message": error.message}
    return {"error_code": errors.STAGE_ERROR, "error_message": f"{stage} failed: {type(error).__name__}: {error}"}


def run_job(config: PreprocessConfig, weights: Weights, job: Job) -> JobResult:
    """Run one job (in a worker process, or inline): every stage in order, stopping at a failure."""
    env = StageEnv(config, weights)
    stages = {stage.name: stage for stage in active_stages(config, job.work.kind)}
    split, stem = config.split, job.work.stem
    values = dict(job.values)
    result = JobResult()

    def value_of(name: str) -> Any:
        if name not in values:
            stage = stages[name]
            files = tuple(job.files[path] for path in stage.load_paths(split, stem))
            values[name] = stage.load(job.work, files)
        return values[name]

    for name in job.encode:
        stage, started = stages[name], time.perf_counter()
        try:
            result.files.update(zip(stage.paths(split, stem), stage.encode(values[name]), strict=True))
        except Exception as error:  # noqa: BLE001 - an encoding failure is this item's
            result.fields[name] = error_fields(error, name)
            result.failed = True
            return result
        result.fields[name] = {"ms": (time.perf_counter() - started) * 1000.0}
    for name in job.stages:
        stage, started = stages[name], time.perf_counter()
        try:
            inputs = {read: value_of(read) for read in stage.reads}
        except Exception:
            log.warning("%s %s: an earlier output %s reads is unreadable; running it from its source",
                        job.work.kind, job.work.item.key, name, exc_info=True)
            result.reload = True
            return result
        source = job.files.get(SOURCE) if not stage.reads else None
        try:
            [value] = stage.run(env, [StageInput(job.work, inputs, source)])
            if isinstance(value, BaseException):
                raise value
            encoded = stage.encode(value)
            fields = stage.fields(env, value)
        except Exception as error:  # noqa: BLE001 - one bad image must never fail its shard
            result.fields[name] = {**error_fields(error, name), "ms": (time.perf_counter() - started) * 1000.0}
            result.failed = True
            return result
        values[name] = value
        result.files.update(zip(stage.paths(split, stem), encoded, strict=True))
        result.fields[name] = {**fields, "outputs": stage.listed_paths(split, stem),
                               "ms": (time.perf_counter() - started) * 1000.0}
    try:
        result.values = {name: value_of(name) for name in job.keep}
    except Exception:
        log.warning("%s %s: an earlier output is unreadable; running it from its source",
                    job.work.kind, job.work.item.key, exc_info=True)
        result.reload = True
    return result


def prepare_models(config: PreprocessConfig) -> None:
    """Build the bundled models `config` needs (worker warm-up, ahead of the first item)."""
    env = StageEnv(config, Weights())
    for kind in KINDS:
        for stage in active_stages(config, kind):
            if stage.prepare is not None:
                stage.prepare(env)


# ---------------------------------------------------------------------------------------------
# The worker processes


def _init_worker() -> None:
    sys.stdout = sys.stderr  # a worker never writes to the command's stdout (`--json` output lives there)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    import cv2

    cv2.setNumThreads(1)  # one process per core already


class WorkerPool:
    """This process's worker processes, started once and shared by every shard task it runs.

    Processes are spawned (never forked from a process with threads) and each keeps its models
    between jobs. When one dies, the pool is restarted (`restart`) and its jobs are run again.
    """

    def __init__(self, workers: int):
        self.workers = workers
        self.generation = 0
        self.successes = 0  # jobs finished since the pool was made: crashes then are the inputs' doing
        self._lock = threading.Lock()
        self._executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker)

    def submit(self, function: Callable, *args: Any) -> tuple[Future, int]:
        with self._lock:
            generation = self.generation
            try:
                return self._executor.submit(function, *args), generation
            except BrokenProcessPool:  # a worker died while the pool was idle
                pass
        self.restart(generation)
        with self._lock:
            return self._executor.submit(function, *args), self.generation

    def restart(self, generation: int) -> None:
        """Replace a broken pool (once, however many shards noticed it broke in `generation`)."""
        with self._lock:
            if generation != self.generation:
                return
            log.warning("a worker process died; restarting the %d worker processes", self.workers)
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = self._start()
            self.generation += 1

    def warm_up(self, config: PreprocessConfig) -> None:
        """Start every worker process and build the bundled models the run needs, without waiting."""
        for _ in range(self.workers):
            self.submit(prepare_models, config)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


_pool: WorkerPool | None = None
_pool_lock = threading.Lock()


def worker_pool(workers: int) -> WorkerPool:
    """The process-wide pool of `workers` processes (a different count replaces it)."""
    global _pool
    with _pool_lock:
        if _pool is not None and _pool.workers != workers:
            _pool.shutdown()
            _pool = None
        if _pool is None:
            _pool = WorkerPool(workers)
        return _pool


def warm_up(config: PreprocessConfig) -> None:
    """Start the worker processes `config` asks for and build their models ahead of the first shard."""
    workers = workers_of(config)
    if workers > 0:
        worker_pool(workers).warm_up(config)


@atexit.register
def _stop_pool() -> None:
    global _pool
    if _pool is not None:
        _pool.shutdown()
        _pool = None


# One thread per process runs the batched (model) stages: models are built once, on it, and one
# model stage runs at a time in this process (the GPU slot keeps other processes off the GPU too).
model_thread = ThreadPoolExecutor(1, thread_name_prefix="vitonprep-model")


def _uses_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def run_batch(env: StageEnv, stage: Stage, items: Sequence[StageInput]) -> tuple[list[Any], float]:
    """A batched stage over `items`: its results (an ItemError for an item that failed) and ms per item.

    An infrastructure error (GPU memory, I/O) fails the shard; anything else is narrowed down to the
    item that caused it by running the items one at a time.
    """
    from tasks.infra.runtime import gpu_slot, is_infrastructure_error  # Prefect: never imported by worker processes

    started = time.perf_counter()
    with gpu_slot(_uses_gpu()):
        try:
            results = stage.run(env, items)
        except Exception as error:
            if is_infrastructure_error(error):
                raise
            results = []
            for item in items:
                try:
                    results += stage.run(env, [item])
                except Exception as single:
                    if is_infrastructure_error(single):
                        raise
                    results.append(ItemError(errors.STAGE_ERROR, f"{stage.name} failed: {type(single).__name__}: {single}"))
    return results, (time.perf_counter() - started) * 1000.0 / max(1, len(items))
