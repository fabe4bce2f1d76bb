"""The paired cloth HR-VITON reads: each person's garment, under the person's own name.

HR-VITON's loaders open `cloth/<person>.jpg` and `cloth-mask/<person>.jpg` for every person of the
pairs file, its "paired" cloth: the only one its training reads, and beside the pair's garment in
test, even in unpaired mode (contract §0 item 8, §2.1). Once every item's stages have run and the
pairs file is written, each usable person gets a copy of the garment they pair with (the outputs
`PAIRED_CLOTH` declares in the stage registry), decided as

- `worn`: the garment the catalog says they wear (its pairs file, or VITON-HD's same-name convention);
- `test_pair`: in test, without one, the garment of their line in `test_pairs.txt`;
- `own_name`: that garment already has the person's name (the VITON-HD release): nothing to copy;
- `none`: no garment to pair with (train, nothing known worn): they are in no train pair either;
- `name_taken`: a garment of the catalog has the person's name: nothing is written under it, whatever that
  garment's state (ok, failed, refused, not processed yet), so `cloth/<name>.jpg` is never another
  garment than the one named so, and a copy written there before the garment came is removed.

Each person whose pairing changed gets a `paired_cloth` manifest row saying which garment and why;
copies no longer wanted are removed (never an ok garment's own files). An unchanged dataset writes nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tasks.infra.store import Store
from tasks.records.catalog import GARMENT, PERSON
from tasks.records.manifest import manifest_part_path, write_part
from tasks.stages.registry import PAIRED_CLOTH, PAIRED_CLOTH_STAGE
from vitonhd_models import contract

WORN, TEST_PAIR, OWN_NAME, NONE, NAME_TAKEN = "worn", "test_pair", "own_name", "none", "name_taken"
COPIED = (WORN, TEST_PAIR)  # the decisions that write files
PART_NAME = "paired-cloth"  # the manifest part of a run's paired_cloth rows


@dataclass(frozen=True)
class Pairing:
    """What one person's paired cloth is: the decision, the garment (key and stem) and a fingerprint of
    everything that decides the copy's bytes (the garment's key, source hash and stage fingerprints)."""

    person_key: str
    person_stem: str
    decision: str
    garment_key: str | None = None
    garment_stem: str | None = None
    fingerprint: str = ""
    name_holder: str | None = None  # name_taken: the catalog garment whose name the person has

    def outputs(self, split: str) -> list[str]:
        return [output.path(split, self.person_stem) for output in PAIRED_CLOTH] if self.decision in COPIED else []

    def sources(self, split: str) -> list[str]:
        return [output.path(split, self.garment_stem) for output in PAIRED_CLOTH]


@dataclass
class PairingWork:
    """What the pairing phase of a run has to do: the pairings wanted, the previous rows, and which
    persons need a row (changed, or a copy gone) or a stale copy removed."""

    wanted: dict[str, Pairing]
    previous: dict[str, dict[str, Any]]
    changed: list[Pairing]
    stale: list[dict[str, Any]]  # previous rows of persons no longer in the dataset, with copies

    def __bool__(self) -> bool:
        return bool(self.changed or self.stale)


def _fingerprint(decision: str, garment_key: str | None, identity: str | None) -> str:
    text = json.dumps({"decision": decision, "garment": garment_key, "identity": identity}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def garment_identities(current: pa.Table) -> dict[str, str]:
    """Garment key -> what decides its cloth and mask files: source hash and each stage's fingerprint."""
    mine = current.filter(pc.equal(current["kind"], GARMENT))
    found: dict[str, dict[str, str]] = {}
    for key, stage, fingerprint, sha in zip(mine["key"].to_pylist(), mine["stage"].to_pylist(),
                                            mine["fingerprint"].to_pylist(), mine["sha256"].to_pylist()):
        parts = found.setdefault(key, {})
        parts[stage] = fingerprint or ""
        if stage == "ingest":
            parts["sha256"] = sha or ""
    return {key: json.dumps(parts, sort_keys=True) for key, parts in found.items()}


def decide(
    split: str,
    ok: Mapping[str, Mapping[str, str]],
    worn: Mapping[str, str],
    pairs: list[tuple[str, str]],
    identities: Mapping[str, str],
    listed_garments: Mapping[str, str],
) -> dict[str, Pairing]:
    """Person key -> its pairing, for every usable person (`ok`: kind -> key -> stem; `worn` and `pairs`
    by stem, as the pairs file was written; `listed_garments`: key -> stem of every garment of the
    catalog, whatever its state: the names no copy may take)."""
    garment_keys = {stem: key for key, stem in ok[GARMENT].items()}
    holders: dict[str, str] = {}  # stem -> the garment key that has it
    for garment_key, garment_stem in sorted(listed_garments.items()):
        holders.setdefault(garment_stem, garment_key)
    holders.update(garment_keys)  # of keys sharing a stem, the ok one has it (the others are refused)
    test_pair = dict(pairs) if split != "train" else {}
    wanted = {}
    for key, stem in ok[PERSON].items():
        garment = worn.get(stem)
        decision = WORN
        if garment is None and stem in test_pair:
            garment, decision = test_pair[stem], TEST_PAIR
        if garment is None or garment not in garment_keys:
            decision, garment = NONE, None
        elif garment == stem:
            decision = OWN_NAME
        elif stem in holders:
            decision = NAME_TAKEN
        garment_key = garment_keys.get(garment) if garment is not None else None
        identity = identities.get(garment_key) if decision in COPIED else None
        holder = holders[stem] if decision == NAME_TAKEN else None
        wanted[key] = Pairing(key, stem, decision, garment_key, garment,
                              _fingerprint(decision, garment_key, identity), holder)
    return wanted


def previous_rows(current: pa.Table) -> dict[str, dict[str, Any]]:
    """Person key -> its latest paired_cloth row."""
    mine = current.filter(pc.and_(pc.equal(current["kind"], PERSON), pc.equal(current["stage"], PAIRED_CLOTH_STAGE)))
    return {row["key"]: row for row in mine.to_pylist()}


def plan_pairings(out: Store, split: str, current: pa.Table, ok, worn, pairs,
                  listed_garments: Mapping[str, str]) -> PairingWork:
    """Compare the pairings the dataset should hold with what its manifest and its folders hold."""
    wanted = decide(split, ok, worn, pairs, garment_identities(current), listed_garments)
    previous = previous_rows(current)
    present = {output.folder: {info.key for info in out.list_files(f"{split}/{output.folder}")}
               for output in PAIRED_CLOTH}
    changed = []
    for key, pairing in wanted.items():
        row = previous.get(key)
        gone = any(output.name(pairing.person_stem) not in present[output.folder] for output in PAIRED_CLOTH)
        if row is None or row["fingerprint"] != pairing.fingerprint or (pairing.decision in COPIED and gone):
            changed.append(pairing)
    stale = [row for key, row in previous.items() if key not in wanted and row["outputs"]]
    return PairingWork(wanted, previous, changed, stale)


def apply_pairings(out: Store, split: str, run_id: str, work: PairingWork, current: pa.Table,
                   ok: Mapping[str, Mapping[str, str]]) -> dict[str, int]:
    """Copy, remove and record what `work` says; returns the counts for the run summary."""
    garment_files = {output.path(split, stem) for stem in ok[GARMENT].values() for output in PAIRED_CLOTH}
    persons = _person_columns(current)
    rows, copied, removed = [], 0, 0
    for pairing in work.changed:
        targets = pairing.outputs(split)
        for source, target in zip(pairing.sources(split) if targets else (), targets):
            out.write_bytes(target, out.read_bytes(source))
            copied += 1
        before = work.previous.get(pairing.person_key)
        for path in (before or {}).get("outputs") or []:
            if path not in targets and path not in garment_files:
                out.remove(path)
                removed += 1
        rows.append(_row(split, run_id, persons.get(pairing.person_key, {}), pairing, targets))
    for row in work.stale:
        for path in row["outputs"]:
            if path not in garment_files:
                out.remove(path)
                removed += 1
        gone = Pairing(row["key"], row["stem"], NONE)
        rows.append(_row(split, run_id, persons.get(row["key"], {}), gone, [], why="the person is not in the dataset"))
    if rows:
        write_part(out, manifest_part_path(split, run_id, PART_NAME), rows)
    counts = {decision: 0 for decision in (WORN, TEST_PAIR, OWN_NAME, NONE, NAME_TAKEN)}
    for pairing in work.wanted.values():
        counts[pairing.decision] += 1
    return {**counts, "copied": copied, "removed": removed, "rows": len(rows)}


def _person_columns(current: pa.Table) -> dict[str, dict[str, Any]]:
    mine = current.filter(pc.and_(pc.equal(current["kind"], PERSON), pc.equal(current["stage"], "ingest")))
    columns = ("source_url", "stem", "sha256", "source_bytes", "source_modified", "source_etag")
    return {row["key"]: {name: row[name] for name in columns} for row in mine.to_pylist()}


def _row(split: str, run_id: str, person: Mapping[str, Any], pairing: Pairing, outputs: list[str],
         why: str | None = None) -> dict[str, Any]:
    details = {"paired": pairing.decision, "garment": pairing.garment_key, "garment_stem": pairing.garment_stem}
    if pairing.decision == NAME_TAKEN:
        why = (f"{contract.DIR_CLOTH}/{contract.cloth_image_name(pairing.person_stem)} is the name of the catalog's "
               f"garment {pairing.name_holder!r} (whether it is ok, failed or not processed yet): no copy under it")
    if why:
        details["why"] = why
    return {**person, "run_id": run_id, "split": split, "shard": PART_NAME, "kind": PERSON, "key": pairing.person_key,
            "stem": pairing.person_stem, "stage": PAIRED_CLOTH_STAGE, "fingerprint": pairing.fingerprint,
            "status": "ok", "outputs": outputs, "details": json.dumps(details, sort_keys=True)}
