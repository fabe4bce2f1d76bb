"""Try-on: which pairs to render, the networks, one shard through seg -> GMM -> ALIAS, and its manifest.

Pure planning helpers (`plan_pairs`, `select_pending`, `plan_tryon_shards`), a per-process cache of the
loaded networks (`cached_networks`), and one thin Prefect task, `render_shard`: load each pair of the
shard (a bad pair becomes an error row), batch, infer, write `results/<person>_<garment>.jpg`, then the
shard's manifest part, last. The part doubles as the "done" marker: a pair is skipped on the next run
when its latest row is ok with the same checkpoints and options and its result file still exists.

Layout under the output root:

    results/<person stem>_<garment stem>.jpg
    manifests/tryon/run=<run id>/<shard>.parquet     one part per shard, written after its images
    manifests/tryon/run=<run id>/summary.json
    tryon_contact_sheet.png
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import posixpath
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from prefect import get_run_logger, task

from tasks.infra.errors import StorageError
from tasks.infra.runtime import TASK_OPTIONS, gpu_slot
from tasks.infra.store import Store
from tasks.records.config import TryOnConfig
from tasks.records.manifest import MANIFESTS_DIR, PartFormat, write_json
from tasks.stages.normalize import encode_jpeg
from vitonhd_models import contract, errors
from vitonhd_models.checkpoints import (
    RANDOM_INIT,
    STAGES,
    Architecture,
    arch_name,
    checkpoint_label,
    checkpoint_name,
    load_networks,
)
from vitonhd_models.data import (
    DatasetLayout,
    collate_pairs,
    detect_split_layout,
    load_pair,
    read_pairs,
)
from vitonhd_models.errors import ItemError
from vitonhd_models.pairs import parse_pairs
from vitonhd_models.pipeline import TryOnNetworks, pair_seed, to_device, to_uint8_images, try_on

log = logging.getLogger("vitonprep.tryon")

RESULTS_DIR = "results"
TRYON_MANIFEST_DIR = posixpath.join(MANIFESTS_DIR, "tryon")
CONTACT_SHEET_NAME = "tryon_contact_sheet.png"
TRYON_SCHEMA_VERSION = 1
OK, ERROR = "ok", "error"
NETWORK_CACHE_SIZE = 2  # loaded network sets kept per process (a long-lived worker may switch checkpoints)


def effective_precision(precision: str, device: str) -> str:
    """fp16 is honoured on CUDA only (the pipeline's autocast); on the CPU the run is fp32."""
    return precision if device == "cuda" else "fp32"


# ---------------------------------------------------------------------------------------------
# Networks: loaded once per process and checkpoint folder state, shared by every shard


@dataclass
class LoadedNetworks:
    nets: TryOnNetworks
    arch: Architecture
    ids: dict[str, str]  # stage -> checkpoint id or RANDOM_INIT
    device: str
    lock: threading.Lock = field(default_factory=threading.Lock)  # one forward pass at a time

    @property
    def label(self) -> str:
        return checkpoint_label(self.ids)

    @property
    def random_init(self) -> list[str]:
        return [stage for stage in STAGES if self.ids[stage] == RANDOM_INIT]


_networks: collections.OrderedDict[tuple, LoadedNetworks] = collections.OrderedDict()
_networks_lock = threading.Lock()


def checkpoint_state(store: Store | None) -> tuple:
    """What identifies a checkpoint folder's contents cheaply: the sidecars' text, the weights' size,
    modification time and ETag (one listing; the weights are hashed only when they are loaded)."""
    if store is None:
        return ()
    wanted = {checkpoint_name(stage) for stage in STAGES}
    sidecars = {arch_name(stage) for stage in STAGES}
    state = []
    for info in store.list_files():
        if info.key in wanted:
            state.append((info.key, info.size, info.modified, info.etag))
        elif info.key in sidecars:
            state.append((info.key, store.read_text(info.key)))
    return tuple(sorted(state, key=lambda entry: entry[0]))


def cached_networks(
    checkpoints: str | None, device: str, seed: int = 0, storage_options: Mapping[str, Any] | None = None
) -> LoadedNetworks:
    """The networks of `checkpoints` (None: all randomly initialised) on `device`, loaded once per process."""
    store = Store(checkpoints, dict(storage_options or {})) if checkpoints else None
    key = (store.url if store else None, device, seed, checkpoint_state(store))
    with _networks_lock:
        if key in _networks:
            _networks.move_to_end(key)
            return _networks[key]
        nets, arch, ids = load_networks(store, device, seed=seed)
        loaded = LoadedNetworks(nets, arch, ids, device)
        _networks[key] = loaded
        while len(_networks) > NETWORK_CACHE_SIZE:
            _networks.popitem(last=False)
        return loaded


def options_fingerprint(config: TryOnConfig, arch: Architecture, precision: str) -> str:
    """What besides the weights decides a result: split, agnostic source, seed, precision, architecture."""
    options = {"split": config.split, "agnostic": config.agnostic, "seed": config.seed, "precision": precision,
               "architecture": arch.to_dict(), "jpeg": contract.JPEG_QUALITY}
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Planning


def pair_input_files(layout: DatasetLayout, person: str, garment: str, agnostic: str) -> list[str]:
    """Every dataset file (relative to the split) a pair's tensors are made from."""
    stem, garment_stem = person.removesuffix(".jpg"), garment.removesuffix(".jpg")
    files = [
        f"{contract.DIR_IMAGE}/{person}",
        f"{layout.parse}/{contract.parse_name(stem)}",
        f"{layout.pose_json}/{contract.keypoints_json_name(stem)}",
        f"{layout.pose_img}/{contract.rendered_pose_name(stem)}",
        f"{contract.DIR_CLOTH}/{garment}",
        f"{contract.DIR_CLOTH_MASK}/{contract.cloth_mask_name(garment_stem)}",
    ]
    if layout.parse_agnostic is not None:
        files.append(f"{layout.parse_agnostic}/{contract.parse_agnostic_name(stem)}")
    if agnostic == "disk":
        files.append(f"{contract.DIR_AGNOSTIC}/{contract.agnostic_name(stem)}")
    return files


def input_versions(split_store: Store, layout: DatasetLayout, agnostic: str) -> dict[str, str]:
    """{file relative to the split: its version (ETag, else size and modification time)}, one listing
    per folder a pair reads."""
    folders = {rel.split("/", 1)[0] for rel in pair_input_files(layout, "x.jpg", "y.jpg", agnostic)}
    versions = {}
    for folder in sorted(folders):
        for info in split_store.list_files(folder):
            versions[f"{folder}/{info.key}"] = info.etag or f"{info.size}:{info.modified}"
    return versions


def inputs_fingerprint(versions: Mapping[str, str], files: Sequence[str]) -> str:
    """A pair's inputs as one hash: a re-preprocessed person or garment changes it."""
    text = "\n".join(f"{rel}={versions.get(rel, 'missing')}" for rel in files)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PairWork:
    """One pair to render; `index` is its place in the run's plan."""

    index: int
    person: str  # x.jpg
    garment: str  # y.jpg
    inputs: str = ""  # inputs_fingerprint of the dataset files it reads

    @property
    def result(self) -> str:
        return result_key(self.person, self.garment)


def result_key(person: str, garment: str) -> str:
    """`results/<person stem>_<garment stem>.jpg`, relative to the output root."""
    return f"{RESULTS_DIR}/{person.removesuffix('.jpg')}_{garment.removesuffix('.jpg')}.jpg"


def read_url_text(url: str, storage_options: Mapping[str, Any] | None = None) -> str:
    parent, _, name = url.rstrip("/").rpartition("/")
    return Store(parent or ".", dict(storage_options or {})).read_text(name)


def plan_pairs(config: TryOnConfig, dataset: Store) -> list[tuple[str, str]]:
    """The run's (person.jpg, garment.jpg) pairs in order, without duplicates: persons x garments, the
    pairs file given, or `<dataset>/<split>_pairs.txt`."""
    if config.persons is not None and config.garments is not None:
        pairs = [(person, garment) for person in config.persons for garment in config.garments]
    elif config.pairs is not None:
        pairs = parse_pairs(read_url_text(config.pairs, config.storage_options), config.pairs)
    else:
        pairs = read_pairs(dataset, config.split)
    return list(dict.fromkeys(pairs))


def select_pending(
    pairs: Sequence[tuple[str, str]],
    previous: Mapping[tuple[str, str], Mapping[str, Any]],
    label: str,
    fingerprint: str,
    existing: set[str],
    inputs: Mapping[tuple[str, str], str] | None = None,
) -> tuple[list[PairWork], list[tuple[str, str]]]:
    """(pairs to render, pairs skipped): a pair is skipped when its latest row is ok with the same
    checkpoint label, options fingerprint and inputs fingerprint, and its result file is still there."""
    inputs = inputs or {}
    todo: list[PairWork] = []
    skipped: list[tuple[str, str]] = []
    for person, garment in pairs:
        row = previous.get((person, garment))
        pair_inputs = inputs.get((person, garment), "")
        if (
            row is not None
            and row.get("status") == OK
            and row.get("checkpoint") == label
            and row.get("options_fingerprint") == fingerprint
            and (row.get("inputs_fingerprint") or "") == pair_inputs
            and row.get("result") in existing
        ):
            skipped.append((person, garment))
        else:
            todo.append(PairWork(len(todo), person, garment, pair_inputs))
    return todo, skipped


def plan_tryon_shards(works: Sequence[PairWork], shard_size: int) -> list[list[PairWork]]:
    return [list(works[start : start + shard_size]) for start in range(0, len(works), shard_size)]


def shard_name(index: int) -> str:
    return f"pairs-{index:05d}"


def existing_results(out: Store) -> set[str]:
    """Keys (relative to the output root) of every result file there, from one listing."""
    return {f"{RESULTS_DIR}/{info.key}" for info in out.list_files(RESULTS_DIR)}


# ---------------------------------------------------------------------------------------------
# The manifest


SCHEMA = pa.schema(
    [
        ("schema_version", pa.int32()),
        ("run_id", pa.string()),
        ("shard", pa.string()),
        ("split", pa.string()),
        ("person", pa.string()),
        ("garment", pa.string()),
        ("result", pa.string()),  # relative to the output root
        ("status", pa.string()),  # ok | error
        ("error_code", pa.string()),
        ("error_message", pa.string()),
        ("checkpoint", pa.string()),  # checkpoint_label: seg:<id>,gmm:<id>,alias:<id>
        ("seg_checkpoint", pa.string()),
        ("gmm_checkpoint", pa.string()),
        ("alias_checkpoint", pa.string()),
        ("random_init", pa.bool_()),  # any network randomly initialised
        ("options_fingerprint", pa.string()),
        ("inputs_fingerprint", pa.string()),  # the versions of the dataset files the pair read
        ("agnostic", pa.string()),
        ("seed", pa.int64()),  # the pair's own noise seed (pipeline.pair_seed)
        ("load_height", pa.int32()),
        ("load_width", pa.int32()),
        ("device", pa.string()),
        ("precision", pa.string()),
        ("load_ms", pa.float64()),
        ("infer_ms", pa.float64()),  # the pair's share of its batch
        ("write_ms", pa.float64()),
        ("finished_at", pa.timestamp("us", tz="UTC")),
    ]
)


TRYON_PARTS = PartFormat(SCHEMA, TRYON_SCHEMA_VERSION)


def run_folder(run_id: str) -> str:
    return posixpath.join(TRYON_MANIFEST_DIR, f"run={run_id}")


def manifest_part_path(run_id: str, shard: str) -> str:
    return posixpath.join(run_folder(run_id), f"{shard}.parquet")


def summary_path(run_id: str) -> str:
    return posixpath.join(run_folder(run_id), "summary.json")


def write_part(out: Store, run_id: str, shard: str, rows: Iterable[Mapping[str, Any]]) -> str:
    return TRYON_PARTS.write_part(out, manifest_part_path(run_id, shard), rows)


def read_tryon_rows(out: Store, run_id: str | None = None) -> pa.Table:
    """Every try-on manifest row under `out` (all runs, or one)."""
    return TRYON_PARTS.read_parts(out, run_folder(run_id) if run_id else TRYON_MANIFEST_DIR)


def latest_rows(rows: pa.Table) -> dict[tuple[str, str], dict[str, Any]]:
    """(person, garment) -> its row of the latest run (run ids sort in time order)."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    never = datetime.min.replace(tzinfo=UTC)
    for row in sorted(rows.to_pylist(), key=lambda row: (row["run_id"], row["finished_at"] or never)):
        latest[(row["person"], row["garment"])] = row
    return latest


def write_summary(out: Store, run_id: str, summary: Mapping[str, Any]) -> str:
    return write_json(out, summary_path(run_id), summary)


# ---------------------------------------------------------------------------------------------
# Rendering one shard


@dataclass(frozen=True)
class RenderSettings:
    """What the flow decided once for every shard."""

    run_id: str
    device: str  # cuda | cpu, resolved
    precision: str  # effective: fp16 only on CUDA
    fingerprint: str


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0


def base_row(settings: RenderSettings, config: TryOnConfig, loaded: LoadedNetworks, shard: str, work: PairWork) -> dict:
    return {
        "run_id": settings.run_id,
        "shard": shard,
        "split": config.split,
        "person": work.person,
        "garment": work.garment,
        "result": work.result,
        "checkpoint": loaded.label,
        **{f"{stage}_checkpoint": loaded.ids[stage] for stage in STAGES},
        "random_init": bool(loaded.random_init),
        "options_fingerprint": settings.fingerprint,
        "inputs_fingerprint": work.inputs,
        "agnostic": config.agnostic,
        "load_height": loaded.arch.load_height,
        "load_width": loaded.arch.load_width,
        "device": settings.device,
        "precision": settings.precision,
    }


def load_sample(split_store: Store, layout: DatasetLayout, work: PairWork, load_hw: tuple[int, int], agnostic: str):
    """One pair's tensors; a bad pair raises ItemError (storage failures other than a missing file
    raise as they are and fail the task, which Prefect retries)."""
    try:
        return load_pair(split_store, layout, work.person, work.garment, load_hw, agnostic)
    except (ItemError, StorageError):
        raise
    except Exception as error:  # one odd pair must never fail its shard
        raise ItemError(errors.STAGE_ERROR, f"loading failed: {type(error).__name__}: {error}") from error


def render_batch(
    out: Store,
    config: TryOnConfig,
    loaded: LoadedNetworks,
    settings: RenderSettings,
    batch: list[tuple[PairWork, dict, dict]],
) -> list[dict]:
    """Infer one batch (each pair with its own seed) and write each result JPEG; the ok rows."""
    tensors = collate_pairs([sample for _, sample, _ in batch])
    with loaded.lock:  # timed once held: another shard's batch may be on the networks
        started = time.perf_counter()
        seeds = [pair_seed(config.seed, work.person, work.garment) for work, _, _ in batch]
        output = try_on(
            loaded.nets, to_device(tensors, settings.device), fp16=settings.precision == "fp16", seeds=seeds
        )
        images = to_uint8_images(output)
        infer_ms = _ms(started) / len(batch)
    rows = []
    for (work, _, row), image in zip(batch, images):
        started = time.perf_counter()
        out.write_bytes(work.result, encode_jpeg(image, quality=contract.JPEG_QUALITY))
        row.update(status=OK, seed=pair_seed(config.seed, work.person, work.garment), infer_ms=infer_ms, write_ms=_ms(started),
                   finished_at=datetime.now(UTC))
        rows.append(row)
    return rows


def render_pairs(
    config: TryOnConfig,
    settings: RenderSettings,
    shard: str,
    works: Sequence[PairWork],
    loaded: LoadedNetworks,
    logger: logging.Logger | logging.LoggerAdapter = log,
) -> list[dict]:
    """Load, batch, infer and write every pair of a shard; one row per pair (bad pairs: error rows)."""
    dataset = Store(config.dataset, config.storage_options)
    out = Store(config.out, config.storage_options)
    split_store = dataset.child(config.split)
    layout = detect_split_layout(split_store)
    rows: list[dict] = []
    batch: list[tuple[PairWork, dict, dict]] = []
    for work in works:
        row = base_row(settings, config, loaded, shard, work)
        started = time.perf_counter()
        try:
            sample = load_sample(split_store, layout, work, loaded.arch.load_hw, config.agnostic)
        except ItemError as error:
            row.update(status=ERROR, error_code=error.code, error_message=error.message, load_ms=_ms(started),
                       finished_at=datetime.now(UTC))
            rows.append(row)
            logger.warning("pair %s %s: %s", work.person, work.garment, error)
            continue
        row["load_ms"] = _ms(started)
        batch.append((work, sample, row))
        if len(batch) == config.batch_size:
            rows.extend(render_batch(out, config, loaded, settings, batch))
            batch = []
    if batch:
        rows.extend(render_batch(out, config, loaded, settings, batch))
    return rows


@task(name="render-shard", tags=["tryon"], **TASK_OPTIONS)
def render_shard(config: TryOnConfig, settings: RenderSettings, shard: str, works: list[PairWork]) -> list[dict]:
    """One shard: render its pairs (images first), then write its manifest part, last; returns its rows."""
    logger = get_run_logger()
    loaded = cached_networks(config.checkpoints, settings.device, config.seed, config.storage_options)
    with gpu_slot(settings.device == "cuda"):
        rows = render_pairs(config, settings, shard, works, loaded, logger)
    write_part(Store(config.out, config.storage_options), settings.run_id, shard, rows)
    logger.info("%s: %d of %d pairs rendered", shard, sum(row["status"] == OK for row in rows), len(rows))
    return rows
