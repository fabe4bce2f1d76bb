"""What a full preprocess run plans from, and what it finds to do.

`open_catalog` resolves everything planning needs once per run (the catalog's layout and worn pairs,
the weights and the stage fingerprints); `plan_run` diffs the catalog and the dataset's output folders
against the manifest's current view; `pairing_work` works out the paired cloth each usable person
should have. The flow only calls these; it holds no planning of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks.engine.paired_cloth import PairingWork, plan_pairings
from tasks.engine.pairs import pairs_of
from tasks.engine.plan import OutputListing, index_current, plan_catalog, refuse_collisions
from tasks.engine.run_summary import ok_listed
from tasks.infra.store import Store
from tasks.records.catalog import (
    GARMENT,
    PERSON,
    CatalogLayout,
    WorkItem,
    detect_catalog_layout,
    list_items,
    read_worn_pairs,
)
from tasks.records.config import Selection
from tasks.records.manifest import read_current
from tasks.stages.model_cache import Weights
from tasks.stages.registry import (
    KINDS,
    PreprocessConfig,
    Stage,
    active_stages,
    check_weights,
    resolve_weights,
    stage_fingerprints,
)


@dataclass(frozen=True)
class CatalogRun:
    """A run's catalog (its layout and worn pairs) and the selection over it, the dataset and split it
    writes, and the stages (one variant per name and kind), weights and stage fingerprints it runs with."""

    run_id: str
    catalog: Store
    layout: CatalogLayout
    worn_pairs: list[tuple[str, str]]
    selection: Selection
    out: Store
    split: str
    weights: Weights
    fingerprints: dict[str, dict[str, str]]
    stages: tuple[Stage, ...]


def open_catalog(config: PreprocessConfig, selection: Selection, run_id: str) -> CatalogRun:
    """Detect the catalog's layout, read its pairs, resolve and check the weights (one download and one
    hash each): a broken pairs file or an untrusted checkpoint fails the run before any image."""
    catalog = Store(config.catalog, config.storage_options)
    layout = detect_catalog_layout(catalog)
    weights = resolve_weights(config)
    check_weights(config, weights)
    return CatalogRun(run_id=run_id, catalog=catalog, layout=layout, worn_pairs=read_worn_pairs(catalog, layout),
                      selection=selection, out=Store(config.out, config.storage_options), split=config.split,
                      weights=weights, fingerprints=stage_fingerprints(config, weights),
                      stages=tuple(stage for kind in KINDS for stage in active_stages(config, kind)))


@dataclass
class Plan:
    """What a run found to do: the current view, its index, every listed key's stem, the work items."""

    current: Any
    index: dict
    listed: dict[str, dict[str, str]]
    works: dict[str, list[WorkItem]]

    @property
    def planned(self) -> int:
        return len(self.works[PERSON]) + len(self.works[GARMENT])


def plan_run(run: CatalogRun) -> Plan:
    """List the catalog and the dataset's output folders, diff them against the manifest's current view."""
    current = read_current(run.out, run.split)
    index = index_current(current)
    outputs = OutputListing(run.out, run.split, run.stages) if not run.selection.full_refresh else None
    listed, works = plan_catalog(
        {kind: list_items(run.catalog, run.layout, kind) for kind in (PERSON, GARMENT)}, index, run.fingerprints,
        run.selection, outputs=outputs,
    )
    return Plan(current, index, listed, refuse_collisions(listed, works, index))


def pairing_work(run: CatalogRun, current, listed: dict[str, dict[str, str]]) -> tuple[PairingWork, dict, list]:
    """The paired cloth each usable person should have (`tasks.engine.paired_cloth`), against what the
    dataset holds; with the usable items (per kind, key -> stem) and the split's pairs."""
    ok = ok_listed(current, listed)
    worn, pairs = pairs_of(run.split, run.layout, run.worn_pairs, ok)
    pairing = plan_pairings(run.out, run.split, current, ok, worn, pairs, listed[GARMENT])
    return pairing, ok, pairs
