"""Incremental planning: which stages each catalog item needs, against the manifest's current view.

A stage of an item runs when
- the item is new, or its content changed (listing size/ETag/mtime differ, then its sha256 differs),
- the stage's fingerprint (model weights hash, parameters, stage code version) differs from the one
  that made the current output, or the stage never ran,
- a stage it depends on runs and changes its output (the agnostic stage reruns when pose or parse did),
- or the run is a full refresh.
An item whose stage failed stays failed until one of those changes: an unchanged catalog costs a
listing and a diff, nothing more.
"""

from __future__ import annotations

import json
import math
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace

import pyarrow as pa

from tasks.infra.store import Store, unsafe_relative_reason
from tasks.records.catalog import GARMENT, PERSON, CatalogItem, Refusal, WorkItem, stem_collisions
from tasks.records.config import Selection
from tasks.stages.registry import Stage, stages_for
from vitonhd_models import contract, errors


@dataclass
class StageState:
    fingerprint: str
    ok: bool


@dataclass
class ItemState:
    sha256: str | None = None
    size: int | None = None
    modified: float | None = None
    etag: str | None = None
    fit: str | None = None
    stem: str | None = None
    stages: dict[str, StageState] = field(default_factory=dict)

    def all_ok(self) -> bool:
        return bool(self.stages) and all(state.ok for state in self.stages.values())


def index_current(current: pa.Table) -> dict[tuple[str, str], ItemState]:
    """The current view as (kind, key) -> what the dataset holds for it."""
    index: dict[tuple[str, str], ItemState] = {}
    columns = ["kind", "key", "stage", "fingerprint", "status", "sha256", "source_bytes", "source_modified",
               "source_etag", "fit", "stem"]
    for kind, key, stage, fingerprint, status, sha, size, modified, etag, fit, stem in zip(
        *(current[name].to_pylist() for name in columns)
    ):
        state = index.setdefault((kind, key), ItemState(stem=stem))
        state.stages[stage] = StageState(fingerprint or "", status == "ok")
        if stage == "ingest":
            state.sha256, state.size, state.modified, state.etag, state.fit = sha, size, modified, etag, fit
    return index


def same_listing(item: CatalogItem, state: ItemState) -> bool:
    """Is the source as it was listed when the current outputs were made? (no read needed)"""
    if state.size is None or item.size != state.size:
        return False
    if item.etag and state.etag:
        return item.etag == state.etag
    return item.modified is not None and state.modified is not None and abs(item.modified - state.modified) < 1e-3


def plan_item(
    item: CatalogItem,
    state: ItemState | None,
    fingerprints: Mapping[str, Mapping[str, str]],
    full_refresh: bool = False,
    missing: frozenset[str] = frozenset(),
) -> WorkItem | None:
    """The work an item needs, or None when the dataset already holds its current outputs (or failure).

    Stages of a healthy item that must run are planned here, those whose outputs are `missing` from
    the dataset (deleted behind the manifest's back) included; the stages after them rerun when they
    actually change their output, which only running them can tell (`tasks.engine.shard`).
    """
    stages = stages_for(item.kind)
    if state is None or full_refresh:
        return WorkItem(item, frozenset(stages), previous_sha256=state.sha256 if state else None)
    listing_changed = not same_listing(item, state)
    ran = [stage for stage in stages if stage in state.stages]
    if not all(state.stages[stage].ok for stage in ran):
        # A failed item has no outputs in the dataset (finish-shard removed them): it reruns whole,
        # once its source or a stage up to the one that failed has changed, and not before.
        up_to_failure = ran[: next(i for i, s in enumerate(ran) if not state.stages[s].ok) + 1]
        retry = listing_changed or any(
            state.stages[stage].fingerprint != fingerprints[item.kind][stage] for stage in up_to_failure
        )
        return WorkItem(item, frozenset(stages), previous_sha256=state.sha256) if retry else None
    planned = {
        stage
        for stage in stages
        if stage not in state.stages or state.stages[stage].fingerprint != fingerprints[item.kind][stage]
    } | set(missing)
    # The listing changed but no fingerprint did: ingest hashes the source, and when the hash changed
    # too, every later stage reruns (see `tasks.engine.shard`).
    verify = listing_changed and "ingest" not in planned
    if not planned and not verify:
        return None
    return WorkItem(
        item, frozenset(planned), verify_content=verify, previous_sha256=state.sha256, previous_fit=state.fit
    )




class OutputListing:
    """The files the dataset holds in the output folders of the stages a run uses (`stages`: one variant per
    name, `active_stages`: `--densepose none` writes none), from one listing per folder.

    Internal caches (the pose sidecars under `_work/`) are not looked at: a missing one costs the one
    item that needs it a run from its source (`tasks.engine.shard`), not a rerun of every item.
    """

    def __init__(self, store: Store, split: str, stages: Iterable[Stage]):
        self.split = split
        self.outputs = {(stage.kind, stage.name): [o for o in stage.outputs if not o.internal] for stage in stages}
        folders = {posixpath.dirname(output.path(split, "-")) for outputs in self.outputs.values() for output in outputs}
        self.files = {folder: {info.key for info in store.list_files(folder)} for folder in sorted(folders)}

    def missing_stages(self, kind: str, stem: str) -> frozenset[str]:
        """The stages of an item whose outputs are not all in the dataset."""
        missing = set()
        for (stage_kind, name), outputs in self.outputs.items():
            if stage_kind != kind:
                continue
            for output in outputs:
                folder, file_name = posixpath.split(output.path(self.split, stem))
                if file_name not in self.files[folder]:
                    missing.add(name)
        return frozenset(missing)


def plan_catalog(
    items_by_kind: Mapping[str, Iterable[CatalogItem]],
    index: Mapping[tuple[str, str], ItemState],
    fingerprints: Mapping[str, Mapping[str, str]],
    selection: Selection,
    outputs: OutputListing | None = None,
    missing: Mapping[str, Mapping[str, frozenset[str]]] | None = None,
) -> tuple[dict[str, dict[str, str]], dict[str, list[WorkItem]]]:
    """Stream each kind's listing through the planner.

    Returns every listed key's stem per kind (for stem checks and pairs) and the work items; the
    listing itself is never held, only one page of it at a time. `outputs` (the dataset's output
    folders) or `missing` (a parent run's findings: kind -> key -> stages) add the stages of healthy
    items whose outputs are gone.
    """
    listed: dict[str, dict[str, str]] = {}
    works: dict[str, list[WorkItem]] = {}
    for kind, items in items_by_kind.items():
        listed[kind], works[kind] = {}, []
        for item in items:
            listed[kind][item.key] = item.stem
            if selection.selects(item):
                state = index.get((kind, item.key))
                gone = frozenset()
                if state is not None and state.all_ok():
                    gone = outputs.missing_stages(kind, item.stem) if outputs is not None else frozenset(
                        (missing or {}).get(kind, {}).get(item.key, ()))
                work = plan_item(item, state, fingerprints, selection.full_refresh, gone)
                if work is not None and gone:
                    work = replace(work, missing=gone)
                reason = unsafe_relative_reason(item.key)
                if reason is not None and (work is not None or (state is not None and state.all_ok())):
                    work = refused(item, Refusal(errors.UNSAFE_KEY, reason))
                if work is not None:
                    works[kind].append(work)
    return listed, works


def refused(item: CatalogItem, refusal: Refusal) -> WorkItem:
    return WorkItem(item, frozenset(stages_for(item.kind)), refusal=refusal)


def refuse_collisions(
    listed: Mapping[str, Mapping[str, str]],
    works: Mapping[str, list[WorkItem]],
    index: Mapping[tuple[str, str], ItemState],
) -> dict[str, list[WorkItem]]:
    """The works with every planned key whose stem another listed key shares refused (`stem_collisions`):
    they get an error row, and the outputs under that stem stay those of the key that holds it."""
    result = {}
    for kind, planned in works.items():
        owners = {state.stem: key for (k, key), state in index.items() if k == kind and state.stem and state.all_ok()}
        reasons = stem_collisions(listed.get(kind, {}), owners)
        result[kind] = [
            refused(work.item, Refusal(errors.STEM_COLLISION, reasons[work.item.key], remove_outputs=False))
            if work.item.key in reasons and work.refusal is None else work
            for work in planned
        ]
    return result


# ---------------------------------------------------------------------------------------------
# Fan-out: a big plan split into work lists, one per child flow run


def split_work(works: Mapping[str, list[WorkItem]], items_per_part: int) -> list[dict[str, list[WorkItem]]]:
    """The planned items cut into equal parts of at most `items_per_part` (persons first, then garments)."""
    ordered = [work for kind in (PERSON, GARMENT) for work in works.get(kind, [])]
    if not ordered:
        return []
    parts = math.ceil(len(ordered) / items_per_part)
    size = math.ceil(len(ordered) / parts)
    result = []
    for start in range(0, len(ordered), size):
        part: dict[str, list[WorkItem]] = {PERSON: [], GARMENT: []}
        for work in ordered[start : start + size]:
            part[work.kind].append(work)
        result.append(part)
    return result


def work_list_path(split: str, parent_run_id: str, part: int, parts: int) -> str:
    """Where a parent run leaves the items of its child run `part` (1-based) of `parts`."""
    return posixpath.join(contract.WORK_DIR, split, "plans", parent_run_id, f"part-{part:04d}-of-{parts:04d}.json")


def child_run_id(parent_run_id: str, part: int) -> str:
    """A child run's id: its parent's, then the part, so the manifest orders it after its parent."""
    return f"{parent_run_id}-p{part:04d}"


def write_work_list(store: Store, rel: str, run_id: str, works: Mapping[str, list[WorkItem]]) -> str:
    """A child run's items, and the refusals the parent decided (a child sees only its part of the catalog)."""
    payload = {
        "run_id": run_id,
        "items": {kind: [asdict(work.item) for work in found] for kind, found in works.items()},
        "refusals": {kind: {work.item.key: asdict(work.refusal) for work in found if work.refusal}
                     for kind, found in works.items()},
        "missing": {kind: {work.item.key: sorted(work.missing) for work in found if work.missing}
                    for kind, found in works.items()},
    }
    return store.write_text(rel, json.dumps(payload, sort_keys=True))


@dataclass(frozen=True)
class WorkList:
    """A child run's part of a parent's plan: its id, its catalog items per kind, and what the parent
    found out that the child cannot (refusals, stages whose outputs are gone), per kind and key."""

    run_id: str
    items: dict[str, list[CatalogItem]]
    refusals: dict[str, dict[str, Refusal]]
    missing: dict[str, dict[str, frozenset[str]]]


def read_work_list(store: Store, rel: str) -> WorkList:
    payload = json.loads(store.read_text(rel))
    return WorkList(
        run_id=payload["run_id"],
        items={kind: [CatalogItem(**fields) for fields in found] for kind, found in payload["items"].items()},
        refusals={kind: {key: Refusal(**fields) for key, fields in found.items()}
                  for kind, found in payload.get("refusals", {}).items()},
        missing={kind: {key: frozenset(stages) for key, stages in found.items()}
                 for kind, found in payload.get("missing", {}).items()},
    )


def apply_refusals(works: Mapping[str, list[WorkItem]], refusals: Mapping[str, Mapping[str, Refusal]]) -> dict:
    return {kind: [refused(work.item, refusals[kind][work.item.key])
                   if work.item.key in refusals.get(kind, {}) and work.refusal is None else work for work in found]
            for kind, found in works.items()}

