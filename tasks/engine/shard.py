"""The shard engine: one pass over a shard runs every planned stage of every item in it.

Items move through a bounded window (memory is bounded by the window, not by the shard or the
catalog), each through three steps that overlap across items:

1. read, on I/O threads: the source, when ingest runs or must check the content hash, and the files
   of earlier runs that the stages to run read instead of results computed here (a new parser reads
   `image/` and the pose sidecar, never the source). The item's schedule is then fixed: the planned
   stages, and every stage that reads one that runs.
2. compute: consecutive stages without a batch size run as one job per item in the worker processes
   (one per core; each builds its models once and keeps them for every shard after); a stage with a
   batch size (the YOLO parser) runs over batches on this process's model thread, holding the
   machine's GPU slot. Results stay in memory between stages; every output is encoded once, in a
   worker process.
3. write, on I/O threads: an item's outputs, once all its stages ran; a failed item's outputs, of
   this and earlier runs, are removed instead. A file at an output's path that the output's `ours` does
   not claim (a user's own DensePose render) is never written over nor removed: the stage keeps it.
The shard's manifest part is written last.

A problem of one item (an unreadable source, a broken image, no person, a worker process that died
twice on this input) is that item's manifest row. Only the output store's failures and the run's own
raise, and Prefect retries the task.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from typing import Any

from tasks.engine.workers import (
    SOURCE,
    Job,
    JobResult,
    error_fields,
    model_thread,
    run_batch,
    run_job,
    worker_pool,
    workers_of,
)
from tasks.infra.errors import (
    NotARegularFileError,
    OutsideRootError,
    StorageError,
    StorageNotFoundError,
    StoragePermissionError,
    StorageUnavailableError,
    UnsafePathError,
)
from tasks.infra.store import Store
from tasks.infra.weight_cache import sha256_hex
from tasks.records.catalog import WorkItem
from tasks.records.manifest import manifest_part_path, write_part
from tasks.stages.model_cache import Weights
from tasks.stages.registry import (
    Output,
    PreprocessConfig,
    Stage,
    StageEnv,
    StageInput,
    active_stages,
    outputs_of,
    stages_for,
)
from vitonhd_models import errors
from vitonhd_models.errors import ItemError

log = logging.getLogger("vitonprep.engine")

MAX_CRASHES = 2  # a worker process that dies twice on the same item: that item is the cause
ROW_FIELDS = ("error_code", "error_message", "outputs", "ms", "model", "fit", "persons_detected",
              "keypoint_confidences", "cloth_mask_coverage")  # fmt: skip
ITEM_FIELDS = ("source_width", "source_height")  # stage fields that describe the item, on every row
USER_PROVIDED = "user-provided"  # the model of a stage that found a user's own file where it writes (Output.ours)
MAX_OWN_BYTES = 16 << 20  # more than any file a stage writes: a larger file at its path is not ours


@dataclass(frozen=True)
class ShardRun:
    """What every shard of a run shares: the run's id, the stage fingerprints and the weight files."""

    run_id: str
    fingerprints: dict[str, dict[str, str]]
    weights: Weights


# ---------------------------------------------------------------------------------------------
# Reading a source


def read_source(catalog: Store, work: WorkItem, max_bytes: int) -> bytes:
    """The source's bytes, or an ItemError saying why they cannot be read. Transient storage errors
    that outlast the retries raise as they are: the catalog being away is the run's problem."""
    item = work.item
    if item.size > max_bytes:
        raise ItemError(errors.SOURCE_TOO_LARGE, f"the file is {item.size} bytes, more than max_source_bytes {max_bytes}")
    try:
        data = catalog.read_bounded(item.rel, max_bytes)
    except StorageUnavailableError:
        raise
    except NotARegularFileError as error:
        raise ItemError(errors.SOURCE_NOT_A_FILE, str(error)) from None
    except OutsideRootError as error:
        raise ItemError(errors.OUTSIDE_ROOT, str(error)) from None
    except UnsafePathError as error:
        raise ItemError(errors.UNSAFE_KEY, str(error)) from None
    except StorageNotFoundError as error:
        raise ItemError(errors.SOURCE_MISSING, f"{error} (removed after it was listed, or a symlink to nothing)") from None
    except StoragePermissionError as error:
        raise ItemError(errors.SOURCE_PERMISSION_DENIED, str(error)) from None
    except StorageError as error:
        raise ItemError(errors.SOURCE_UNREADABLE, str(error)) from None
    if len(data) > max_bytes:
        raise ItemError(errors.SOURCE_TOO_LARGE, f"the file holds more than max_source_bytes {max_bytes} bytes")
    return data


# ---------------------------------------------------------------------------------------------
# One shard


@dataclass
class ItemRun:
    """One item on its way through the shard pass (in the shard task's process)."""

    work: WorkItem
    schedule: tuple[str, ...] = ()  # the stages that run, in order
    segment: int = 0  # the next segment to consider
    values: dict[str, Any] = field(default_factory=dict)
    files_in: dict[str, bytes] = field(default_factory=dict)
    files_out: dict[str, bytes] = field(default_factory=dict)
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)  # per stage that ran, or was checked
    source: dict[str, Any] = field(default_factory=dict)  # sha256 and size of the source's bytes, when read
    unencoded: list[str] = field(default_factory=list)  # batched stages whose results wait for a worker
    failed: bool = False
    crashes: int = 0
    reloaded: bool = False  # planned afresh from its source once already
    remove_outputs: bool = True  # when it fails: not when its outputs are another item's
    kept: dict[str, dict[str, Any]] = field(default_factory=dict)  # stages that found a user's file: their rows
    writes: int = 0  # outstanding writes or removals


@dataclass(frozen=True)
class Segment:
    """Consecutive stages that run the same way: per item in a worker process, or batched."""

    stages: tuple[Stage, ...]
    batch_size: int | None  # None: per item

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(stage.name for stage in self.stages)


def segments_of(config: PreprocessConfig, kind: str) -> list[Segment]:
    segments: list[Segment] = []
    for stage in active_stages(config, kind):
        batch = stage.batch_size(config) if stage.batch_size else None
        if batch is None and segments and segments[-1].batch_size is None:
            segments[-1] = Segment(segments[-1].stages + (stage,), None)
        else:
            segments.append(Segment((stage,), batch))
    return segments


def schedule_of(stages: Sequence[Stage], planned: frozenset[str], source_stage_runs: bool) -> tuple[str, ...]:
    """The stages that run for an item: the planned ones, and every stage reading one that runs.
    The stage that reads no stage (ingest) runs when the source must be processed."""
    running: list[str] = []
    for stage in stages:
        if (source_stage_runs if not stage.reads else
                stage.name in planned or any(read in running for read in stage.reads)):
            running.append(stage.name)
    return tuple(running)


class ShardPass:
    """The state of one shard's pass; `run_pass()` drives it and returns the manifest rows."""

    def __init__(self, config: PreprocessConfig, run: ShardRun, shard: str, works: Sequence[WorkItem]):
        self.config, self.run, self.shard = config, run, shard
        self.kind = works[0].kind
        self.items = [ItemRun(work) for work in works]
        self.stages = active_stages(config, self.kind)
        self.by_name = {stage.name: stage for stage in self.stages}
        self.source_stage = self.stages[0].name  # reads no stage: it reads the source (ingest)
        self.segments = segments_of(config, self.kind)
        self.env = StageEnv(config, run.weights)
        self.catalog = Store(config.catalog, config.storage_options)
        self.out = Store(config.out, config.storage_options)
        self.workers = workers_of(config)
        self.pool = worker_pool(self.workers) if self.workers > 0 else None
        largest_batch = max((segment.batch_size or 0 for segment in self.segments), default=0)
        self.window = max(2 * max(self.workers, 1), largest_batch + max(self.workers, 1))
        self.io = ThreadPoolExecutor(min(32, max(4, self.window)), thread_name_prefix=f"vitonprep-io-{shard}")
        self.pending: dict[Future, tuple[str, Any]] = {}
        self.waiting: dict[int, list[ItemRun]] = {i: [] for i, s in enumerate(self.segments) if s.batch_size}
        self.ready: deque[ItemRun] = deque()  # items with a job to submit
        self.suspects: deque[ItemRun] = deque()  # items whose worker process died
        self.jobs_in_flight = 0

    # -- driving -------------------------------------------------------------------------------
    def run_pass(self) -> list[dict[str, Any]]:
        queue = deque(self.items)
        admitted = finished = 0
        try:
            while finished < len(self.items):
                while queue and admitted - finished < self.window:
                    self._submit_io("read", self._read, queue.popleft())
                    admitted += 1
                self._pump_jobs()
                self._flush_batches(window_full=not queue or admitted - finished >= self.window)
                if not self.pending:
                    raise RuntimeError(f"shard {self.shard}: nothing in flight and {len(self.items) - finished} "
                                       "items unfinished (an engine bug)")
                done, _ = wait(list(self.pending), return_when=FIRST_COMPLETED)
                for future in done:
                    what, subject = self.pending.pop(future)
                    finished += self._handle(what, subject, future)
        finally:
            for future in self.pending:
                future.cancel()
            self.io.shutdown(wait=True, cancel_futures=True)
        rows = self._rows()
        if rows:
            write_part(self.out, manifest_part_path(self.config.split, self.run.run_id, self.shard), rows)
        return rows

    def _submit_io(self, what: str, function: Callable, subject: Any) -> None:
        self.pending[self.io.submit(function, subject)] = (what, subject)

    def _handle(self, what: str, subject: Any, future: Future) -> int:
        """Act on a finished future; returns how many items finished with it (0 or 1)."""
        if what == "read":
            future.result()  # a storage failure of the run raises here
            return self._advance(subject)
        if what == "job":
            item, generation = subject
            self.jobs_in_flight -= 1
            try:
                result = future.result()
            except BrokenProcessPool:
                return self._crashed(item, generation)
            if self.pool is not None:
                self.pool.successes += 1
            return self._merge(item, result)
        if what == "batch":
            segment, items = subject
            results, ms = future.result()
            stage = self.segments[segment].stages[0]
            for item, value in zip(items, results, strict=True):
                self._batch_result(item, stage, value, ms)
                item.segment = segment + 1
            return sum(self._advance(item) for item in items)
        if what == "write":
            future.result()
            subject.writes -= 1
            return 1 if subject.writes == 0 else 0
        raise AssertionError(what)

    # -- reading -------------------------------------------------------------------------------
    def _read(self, item: ItemRun) -> None:
        """Read what the item's stages need and fix its schedule (on an I/O thread)."""
        work, first = item.work, self.source_stage
        if work.refusal is not None:  # decided by the planner: never read
            item.fields[first] = {"error_code": work.refusal.code, "error_message": work.refusal.message, "ms": 0.0}
            item.failed, item.remove_outputs = True, work.refusal.remove_outputs
            return
        source_stage_runs = first in work.stages
        if source_stage_runs or work.verify_content:
            started = time.perf_counter()
            try:
                data = read_source(self.catalog, work, self.config.max_source_bytes)
            except ItemError as error:
                item.fields[first] = {**error_fields(error, first), "ms": (time.perf_counter() - started) * 1000.0}
                item.failed = True
                return
            item.source = {"sha256": sha256_hex(data), "source_bytes": len(data)}
            if item.source["sha256"] != work.previous_sha256:
                source_stage_runs = True
            if source_stage_runs:
                item.files_in[SOURCE] = data
            else:  # only the listing changed: the bytes are the ones the current outputs came from
                item.fields[first] = self._unchanged_source(work, (time.perf_counter() - started) * 1000.0)
        item.schedule = schedule_of(self.stages, work.stages, source_stage_runs)
        self._keep_users_files(item)
        split, stem = self.config.split, work.stem
        for name in item.schedule:
            for read in self.by_name[name].reads:
                if read in item.schedule:
                    continue
                for path in self.by_name[read].load_paths(split, stem):
                    if path in item.files_in:
                        continue
                    try:
                        item.files_in[path] = self.out.read_bytes(path)
                    except StorageNotFoundError:
                        log.warning("%s %s: %s is missing; running it from its source", work.kind, work.item.key, path)
                        self._from_source(item)
                        return self._read(item)

    def _keep_users_files(self, item: ItemRun) -> None:
        """A stage due to write where a file it did not write lies (a user's own DensePose render, `Output.ours`)
        keeps that file, writes nothing and records so: on a first run, a rerun and a full refresh alike."""
        split, stem = self.config.split, item.work.stem
        item.kept = {}
        for name in item.schedule:
            started = time.perf_counter()
            kept = [output.path(split, stem) for output in self.by_name[name].outputs
                    if output.ours is not None and self._users_file(output, output.path(split, stem))]
            if kept:
                item.schedule = tuple(other for other in item.schedule if other != name)
                item.kept[name] = {"model": USER_PROVIDED, "outputs": [], "kept": kept,
                                   "ms": (time.perf_counter() - started) * 1000.0}

    def _users_file(self, output: Output, path: str) -> bool:
        """Whether a file lies at `path` that `output.ours` does not claim: someone else's, never written over nor
        removed. Storage being away raises, as for any read of the run's."""
        try:
            data = self.out.read_bounded(path, MAX_OWN_BYTES)
        except StorageNotFoundError:
            return False
        except StorageUnavailableError:
            raise
        except StorageError:  # something there we cannot read (a FIFO, a link out of the root): not ours to touch
            return True
        return len(data) > MAX_OWN_BYTES or not output.ours(data)

    def _remove_ours(self, path: str, output: Output) -> None:
        if output.ours is None or not self._users_file(output, path):
            self.out.remove(path)

    def _unchanged_source(self, work: WorkItem, ms: float) -> dict[str, Any]:
        """The ingest row of a source whose listing changed but whose bytes did not: nothing reruns."""
        fit = json.loads(work.previous_fit) if work.previous_fit else {}
        stage = self.by_name[self.source_stage]
        return {"fit": work.previous_fit, "source_width": fit.get("source_width"),
                "source_height": fit.get("source_height"), "ms": ms,
                "outputs": stage.listed_paths(self.config.split, work.stem)}

    def _from_source(self, item: ItemRun) -> None:
        """Plan the item afresh from its source: every stage."""
        item.work = replace(item.work, stages=frozenset(stages_for(item.work.kind)), verify_content=False)
        item.files_in.clear()
        item.fields.clear()
        item.values.clear()
        item.unencoded.clear()
        item.segment = 0

    # -- computing -----------------------------------------------------------------------------
    def _needed_later(self, item: ItemRun, segment: int) -> tuple[str, ...]:
        """The results of this or earlier segments that stages of later segments read."""
        later = [stage for s in self.segments[segment + 1:] for stage in s.stages if stage.name in item.schedule]
        made_later = {stage.name for stage in later}
        return tuple(dict.fromkeys(read for stage in later for read in stage.reads if read not in made_later))

    def _advance(self, item: ItemRun) -> int:
        """Move the item to its next piece of work; returns 1 when it finished without writes."""
        while item.segment < len(self.segments) and not item.failed:
            segment = self.segments[item.segment]
            to_run = tuple(name for name in segment.names if name in item.schedule)
            if segment.batch_size is None:
                keep = self._needed_later(item, item.segment)
                if to_run or item.unencoded or any(name not in item.values for name in keep):
                    self.ready.append(item)
                    return 0
            elif to_run:
                self.waiting[item.segment].append(item)
                return 0
            item.segment += 1
        if item.unencoded and not item.failed:  # a batched stage ran last (the U-Net cloth mask): a worker encodes it
            self.ready.append(item)
            return 0
        return self._finish(item)

    def _job(self, item: ItemRun) -> Job:
        names = self.segments[item.segment].names if item.segment < len(self.segments) else ()  # (): encode only
        return Job(work=item.work, stages=tuple(n for n in names if n in item.schedule),
                   encode=tuple(item.unencoded), values=item.values, files=item.files_in,
                   keep=self._needed_later(item, item.segment))

    def _pump_jobs(self) -> None:
        """Submit ready jobs; while an item is suspected of killing a worker, one job at a time."""
        while self.suspects or self.ready:
            if self.suspects:
                if self.jobs_in_flight:
                    return
                item = self.suspects.popleft()
            else:
                item = self.ready.popleft()
            job = self._job(item)
            if self.pool is None:  # inline, in this thread
                future: Future = Future()
                future.set_result(run_job(self.config, self.run.weights, job))
                generation = 0
            else:
                future, generation = self.pool.submit(run_job, self.config, self.run.weights, job)
            self.pending[future] = ("job", (item, generation))
            self.jobs_in_flight += 1

    def _crashed(self, item: ItemRun, generation: int) -> int:
        self.pool.restart(generation)
        item.crashes += 1
        if item.crashes >= MAX_CRASHES and not self.pool.successes:
            raise RuntimeError(
                "the worker processes died on every job they were given, so not because of one input: too "
                "little memory, a broken installation, or a script that runs the flow without an "
                "`if __name__ == \"__main__\":` guard (worker processes are spawned and import the main module)")
        if item.crashes >= MAX_CRASHES:
            names = self.segments[item.segment].names if item.segment < len(self.segments) else tuple(item.unencoded)
            name = next((n for n in names if n in item.schedule), self.source_stage)
            item.fields[name] = {"error_code": errors.WORKER_CRASHED, "error_message": (
                f"the worker process died {item.crashes} times while running {name} on this item "
                "(a crash in native code, or killed for memory)")}
            item.failed = True
            return self._finish(item)
        self.suspects.append(item)
        return 0

    def _merge(self, item: ItemRun, result: JobResult) -> int:
        if result.reload and not item.reloaded:
            self._from_source(item)
            item.reloaded = True
            self._submit_io("read", self._read, item)
            return 0
        if result.reload:  # it read nothing of an earlier run this time: the engine itself is wrong
            raise RuntimeError(f"{item.work.kind} {item.work.item.key}: a stage found no input after a run from source")
        item.files_in.pop(SOURCE, None)
        item.values = result.values
        item.files_out.update(result.files)
        for name, fields in result.fields.items():
            if name in item.unencoded and "error_code" not in fields:
                item.fields[name]["ms"] += fields["ms"]  # the encoding of a batched stage's result
            else:
                item.fields[name] = {**item.fields.get(name, {}), "outputs": None, **fields}
        item.unencoded.clear()
        item.failed = result.failed
        item.segment += 1
        return self._advance(item)

    def _batch_result(self, item: ItemRun, stage: Stage, value: Any, ms: float) -> None:
        if isinstance(value, BaseException):
            item.fields[stage.name] = {**error_fields(value, stage.name), "ms": ms}
            item.failed = True
            return
        try:
            fields = stage.fields(self.env, value)
        except Exception as error:  # noqa: BLE001
            item.fields[stage.name] = {**error_fields(error, stage.name), "ms": ms}
            item.failed = True
            return
        item.values[stage.name] = value
        item.unencoded.append(stage.name)
        item.fields[stage.name] = {**fields, "outputs": stage.listed_paths(self.config.split, item.work.stem), "ms": ms}

    def _flush_batches(self, window_full: bool) -> None:
        """Run a batched stage once its batch is full, or once no more items can reach it for now."""
        for segment, items in self.waiting.items():
            if not items:
                continue
            size = self.segments[segment].batch_size
            upstream = any(item.segment < segment for item in self._in_flight() if item not in items)
            while len(items) >= size or (items and not upstream and window_full):
                batch, items[:] = items[:size], items[size:]
                stage = self.segments[segment].stages[0]
                inputs = [StageInput(item.work, self._inputs_of(item, stage)) for item in batch]
                context = contextvars.copy_context()  # the Prefect run context, for the GPU slot
                future = model_thread.submit(context.run, run_batch, self.env, stage, inputs)
                self.pending[future] = ("batch", (segment, batch))

    def _inputs_of(self, item: ItemRun, stage: Stage) -> dict[str, Any]:
        inputs = {}
        for read in stage.reads:
            if read not in item.values:  # a batched stage first in line: load here
                source = self.by_name[read]
                files = tuple(item.files_in[path] for path in source.load_paths(self.config.split, item.work.stem))
                item.values[read] = source.load(item.work, files)
            inputs[read] = item.values[read]
        return inputs

    def _in_flight(self) -> list[ItemRun]:
        items = [item for item in self.ready] + [item for item in self.suspects]
        for what, subject in self.pending.values():
            if what == "read":
                items.append(subject)
            elif what == "job":
                items.append(subject[0])
        return items

    # -- writing -------------------------------------------------------------------------------
    def _finish(self, item: ItemRun) -> int:
        """Write the item's outputs (or remove every output of a failed item); 1 if nothing to wait for. A file
        of another variant of a stage that ran (a render of ours before `--densepose none`) is removed; a user's
        file (`Output.ours`) never is."""
        item.values, item.files_in = {}, {}
        split, kind, stem = self.config.split, item.work.kind, item.work.stem
        if item.failed:
            files, item.files_out = {}, {}
            gone = outputs_of(split, kind, stem) if item.remove_outputs else {}
        else:
            files, item.files_out = item.files_out, {}
            item.fields.update(item.kept)  # rows of an item that failed say where it failed, nothing more
            gone = {path: output for path, output in outputs_of(split, kind, stem, item.schedule).items()
                    if path not in files}
        for path, data in files.items():
            self._submit_io("write", lambda subject, path=path, data=data: self.out.write_bytes(path, data), item)
        for path, output in gone.items():
            self._submit_io("write", lambda subject, path=path, output=output: self._remove_ours(path, output), item)
        item.writes = len(files) + len(gone)
        return 1 if item.writes == 0 else 0

    def _rows(self) -> list[dict[str, Any]]:
        """One manifest row per item and stage that ran (or, for ingest, checked the source)."""
        rows = []
        for item in self.items:
            work = item.work
            ingest = item.fields.get(self.source_stage, {})
            base = {
                "run_id": self.run.run_id,
                "split": self.config.split,
                "shard": self.shard,
                "kind": work.kind,
                "key": work.item.key,
                "source_url": work.item.url,
                "stem": work.stem,
                "sha256": item.source.get("sha256", work.previous_sha256),
                "source_bytes": work.item.size,
                "source_modified": work.item.modified,
                "source_etag": work.item.etag,
                **{name: ingest.get(name) for name in ITEM_FIELDS},
            }
            for stage in stages_for(work.kind):
                if stage not in item.fields:
                    continue
                fields = item.fields[stage]
                extra = {k: v for k, v in fields.items() if k not in ROW_FIELDS and k not in ITEM_FIELDS}
                rows.append({
                    **base,
                    **{name: fields.get(name) for name in ROW_FIELDS},
                    "details": _details(extra),
                    "stage": stage,
                    "fingerprint": self.run.fingerprints[work.kind][stage],
                    "status": "error" if fields.get("error_code") else "ok",
                })
        return rows


def _details(extra: dict[str, Any]) -> str | None:
    return json.dumps(extra, sort_keys=True, default=str) if extra else None


def process_shard(config: PreprocessConfig, run: ShardRun, shard: str, works: Sequence[WorkItem]) -> list[dict]:
    """Every planned stage of every item of one shard, in one pass; the shard's manifest rows."""
    if not works:
        return []
    return ShardPass(config, run, shard, works).run_pass()
