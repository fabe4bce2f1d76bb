"""The incremental core, table by table: which stages an item runs against what the manifest holds."""

from __future__ import annotations

import pytest

from tasks.engine.plan import ItemState, StageState, plan_item, same_listing
from tasks.records.catalog import PERSON, CatalogItem
from tasks.stages.registry import stages_for

STAGES = stages_for(PERSON)  # ingest, pose, pose_gate, parse, agnostic
FINGERPRINTS = {PERSON: {stage: f"fp-{stage}" for stage in STAGES}}


def item(size: int = 100, modified: float | None = 1000.0, etag: str | None = None) -> CatalogItem:
    return CatalogItem(PERSON, "a.jpg", "persons/a.jpg", "file:///c/persons/a.jpg", size, "a", modified, etag)


def state(size: int = 100, modified: float | None = 1000.0, etag: str | None = None,
          failed: str | None = None, fingerprints: dict | None = None, ran=STAGES) -> ItemState:
    """What the manifest holds: every stage in `ran` made by `fingerprints` (default: today's), `failed` failed."""
    fingerprints = {**FINGERPRINTS[PERSON], **(fingerprints or {})}
    stages = {}
    for stage in ran:
        stages[stage] = StageState(fingerprints[stage], stage != failed)
        if stage == failed:
            break
    return ItemState(sha256="sha", size=size, modified=modified, etag=etag, fit=None, stem="a", stages=stages)


ALL = frozenset(STAGES)

# (case, the listing now, what the manifest holds, full refresh, outputs missing) -> (stages, verify_content);
# None: nothing to do.
CASES = [
    ("new item", item(), None, False, frozenset(), (ALL, False)),
    ("full refresh", item(), state(), True, frozenset(), (ALL, False)),
    ("unchanged", item(), state(), False, frozenset(), None),
    ("touched: same size, new mtime", item(modified=2000.0), state(), False, frozenset(), (frozenset(), True)),
    ("resized", item(size=101), state(), False, frozenset(), (frozenset(), True)),
    ("same etag, new mtime", item(modified=2000.0, etag="e1"), state(etag="e1"), False, frozenset(), None),
    ("new etag", item(etag="e2"), state(etag="e1"), False, frozenset(), (frozenset(), True)),
    ("new parser", item(), state(fingerprints={"parse": "old"}), False, frozenset(), (frozenset({"parse"}), False)),
    ("a stage added since", item(), state(ran=[s for s in STAGES if s != "pose_gate"]), False, frozenset(),
     (frozenset({"pose_gate"}), False)),
    ("outputs deleted", item(), state(), False, frozenset({"agnostic"}), (frozenset({"agnostic"}), False)),
    ("failed, unchanged", item(), state(failed="pose"), False, frozenset(), None),
    ("failed, source changed", item(size=5), state(failed="pose"), False, frozenset(), (ALL, False)),
    ("failed, a stage up to the failure changed", item(), state(failed="pose", fingerprints={"ingest": "old"}),
     False, frozenset(), (ALL, False)),
    ("failed, only a later stage changed", item(), state(failed="pose", fingerprints={"parse": "old"}),
     False, frozenset(), None),
]


@pytest.mark.parametrize("case, listed, held, full_refresh, missing, expected", CASES, ids=[c[0] for c in CASES])
def test_plan_item(case, listed, held, full_refresh, missing, expected):
    work = plan_item(listed, held, FINGERPRINTS, full_refresh, missing)
    got = None if work is None else (work.stages, work.verify_content)
    assert got == expected, f"{case}: planned {got}, expected {expected}"


@pytest.mark.parametrize(
    "listed, held, same",
    [
        (item(), state(), True),
        (item(size=1), state(), False),
        (item(modified=1000.0005), state(), True),  # mtimes within a millisecond (filesystem rounding)
        (item(modified=1000.01), state(), False),
        (item(modified=None), state(), False),  # nothing to compare: read the source
        (item(etag="x", modified=5.0), state(etag="x"), True),  # an ETag decides when both have one
        (item(etag="x"), state(etag="y"), False),
        (item(), ItemState(), False),  # no size recorded
    ],
)
def test_same_listing(listed, held, same):
    assert same_listing(listed, held) is same


def test_a_failed_item_keeps_what_it_was():
    work = plan_item(item(size=5), state(failed="parse"), FINGERPRINTS)
    assert work.previous_sha256 == "sha", "the rerun compares the new hash with the old one"
