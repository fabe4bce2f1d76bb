"""Finishing a shard (tasks/engine/shard.py): which rows an item gets, which of its outputs are written
or removed, and that the shard's manifest part comes last, after every output.

Each test runs `process_shard` in this process (workers=0) on garments: 96x128 photos, ingest then the
classical cloth mask, a fraction of a second each. Every call to the catalog and the output store goes
through `RecordingStore`, which logs the reads, writes and removals in order (and can fail a write).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.engine import shard as shard_engine
from tasks.engine.shard import ShardRun, process_shard
from tasks.infra.errors import StorageUnavailableError
from tasks.infra.runtime import is_infrastructure_error
from tasks.infra.store import Store
from tasks.records.catalog import GARMENT, CatalogItem, Refusal, WorkItem, stem_for_key
from tasks.records.manifest import manifest_part_path, read_run
from tasks.stages.model_cache import Weights
from tasks.stages.registry import PreprocessConfig, outputs_of, stage_fingerprints, stages_for
from vitonhd_models import errors

RUN_ID = "20261201T000000Z-finish"
SHARD = "garment-00000"
SPLIT = "test"
EARLIER = b"written by an earlier run"


def photo(garment: bool = True, size: tuple[int, int] = (96, 128)) -> bytes:
    """A white photo (W x H), with a dark garment in the middle unless `garment` is False."""
    width, height = size
    pixels = np.full((height, width, 3), 255, np.uint8)
    if garment:
        pixels[height // 4 : height * 3 // 4, width // 4 : width * 3 // 4] = (40, 60, 120)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


class Recorder:
    """The ordered log of every Store call that reads, writes or removes, and an optional failure."""

    def __init__(self, fail_write: Callable[[str], bool] | None = None):
        self.log: list[tuple[str, str]] = []
        self.fail_write = fail_write
        self.lock = threading.Lock()

    def store_class(self) -> type[Store]:
        recorder = self

        class RecordingStore(Store):
            def read_bounded(self, rel: str, max_bytes: int) -> bytes:
                recorder.note("read", rel)
                return super().read_bounded(rel, max_bytes)

            def read_bytes(self, *parts: str) -> bytes:
                recorder.note("read", "/".join(parts))
                return super().read_bytes(*parts)

            def write_bytes(self, rel: str, data: bytes) -> str:
                if recorder.fail_write is not None and recorder.fail_write(rel):
                    raise StorageUnavailableError(f"write {rel}: the object store timed out (the test's)")
                recorder.note("write", rel)
                return super().write_bytes(rel, data)

            def remove(self, rel: str) -> None:
                recorder.note("remove", rel)
                return super().remove(rel)

        return RecordingStore

    def note(self, what: str, rel: str) -> None:
        with self.lock:
            self.log.append((what, rel))

    def of(self, what: str) -> list[str]:
        return [rel for done, rel in self.log if done == what]


class Shard:
    """A catalog and an output root under tmp_path, and the work items of one garment shard."""

    def __init__(self, root: Path):
        self.catalog = root / "catalog"
        (self.catalog / "garments").mkdir(parents=True)
        self.out = Store(str(root / "out"))
        self.config = PreprocessConfig(catalog=str(self.catalog), out=self.out.url, split=SPLIT, workers=0)
        self.run = ShardRun(RUN_ID, stage_fingerprints(self.config, Weights()), Weights())
        self.part = manifest_part_path(SPLIT, RUN_ID, SHARD)

    def item(self, key: str, data: bytes | None, stem: str | None = None, refusal: Refusal | None = None) -> WorkItem:
        """A garment to process (or refuse); `data` None: listed, but gone from the catalog."""
        rel = f"garments/{key}"
        if data is not None:
            (self.catalog / rel).write_bytes(data)
        item = CatalogItem(GARMENT, key, rel, f"file://{self.catalog / rel}", len(data or b""),
                           stem or stem_for_key(key))
        return WorkItem(item, frozenset(stages_for(GARMENT)), refusal=refusal)

    def outputs(self, work: WorkItem) -> list[str]:
        return list(outputs_of(SPLIT, GARMENT, work.stem))

    def seed_earlier_outputs(self, work: WorkItem) -> None:
        for path in self.outputs(work):
            self.out.write_bytes(path, EARLIER)

    def present(self, work: WorkItem) -> list[str]:
        return [path for path in self.outputs(work) if self.out.exists(path)]

    def process(self, monkeypatch, recorder: Recorder, works: list[WorkItem]) -> dict[tuple[str, str], dict]:
        monkeypatch.setattr(shard_engine, "Store", recorder.store_class())
        rows = process_shard(self.config, self.run, SHARD, works)
        return {(row["key"], row["stage"]): row for row in rows}


def statuses(rows: dict[tuple[str, str], dict], key: str) -> dict[str, str]:
    """stage -> "ok" or the error code, for one item's rows."""
    return {stage: row["error_code"] or row["status"] for (k, stage), row in rows.items() if k == key}


@pytest.fixture
def shard(tmp_path) -> Shard:
    return Shard(tmp_path)


# ---------------------------------------------------------------------------------------------
# An item that ran: all its outputs, or none of them


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (photo(), {"ingest": "ok", "cloth_mask": "ok"}),
        (None, {"ingest": errors.SOURCE_MISSING}),
        (b"not an image at all", {"ingest": errors.NOT_AN_IMAGE}),
        (photo(size=(40, 40)), {"ingest": errors.TOO_SMALL}),
        (photo(garment=False), {"ingest": "ok", "cloth_mask": errors.NO_GARMENT}),
    ],
    ids=["succeeds", "read-fails", "ingest-fails-to-decode", "ingest-refuses-the-size", "cloth-mask-fails"],
)
def test_an_item_gets_a_row_per_stage_it_ran_and_all_or_none_of_its_outputs(shard, monkeypatch, data, expected):
    work = shard.item("item.jpg", data)
    shard.seed_earlier_outputs(work)
    rows = shard.process(monkeypatch, Recorder(), [work])
    assert statuses(rows, "item.jpg") == expected, "the item's rows, stage -> ok or error code"
    failed = any(status != "ok" for status in expected.values())
    if failed:
        assert shard.present(work) == [], "a failed item keeps no output, of this run or an earlier one"
    else:
        assert shard.present(work) == shard.outputs(work), "an item that succeeds writes every output"
        assert all(shard.out.read_bytes(path) != EARLIER for path in shard.outputs(work)), "outputs not rewritten"


def test_every_row_of_a_failed_stage_says_why(shard, monkeypatch):
    rows = shard.process(monkeypatch, Recorder(), [shard.item("blank.jpg", photo(garment=False))])
    row = rows["blank.jpg", "cloth_mask"]
    assert row["status"] == "error" and row["error_message"], f"an error row needs its reason: {row}"


# ---------------------------------------------------------------------------------------------
# A refused item: its row without a read; a collision leaves the other key's outputs alone


@pytest.mark.parametrize(
    ("key", "refusal", "outputs_kept"),
    [
        ("../escape.jpg", Refusal(errors.UNSAFE_KEY, "a '..' segment leaves the catalog"), False),
        ("dup-copy.jpg", Refusal(errors.STEM_COLLISION, "dup.jpg holds stem dup", remove_outputs=False), True),
    ],
    ids=["unsafe-key", "stem-collision"],
)
def test_a_refused_item_gets_its_row_without_being_read(shard, monkeypatch, key, refusal, outputs_kept):
    work = shard.item(key, None, stem="dup", refusal=refusal)
    shard.seed_earlier_outputs(work)  # for a collision: the outputs of the key that holds the stem
    recorder = Recorder()
    rows = shard.process(monkeypatch, recorder, [work])
    assert statuses(rows, key) == {"ingest": refusal.code}, "one error row, at the first stage, with its code"
    assert recorder.of("read") == [], f"a refused item must not be read: {recorder.of('read')}"
    if outputs_kept:
        assert shard.present(work) == shard.outputs(work), "a collision removed the other key's outputs"
        assert all(shard.out.read_bytes(path) == EARLIER for path in shard.outputs(work))
        assert recorder.of("remove") == [], "a collision must not remove anything"
    else:
        assert shard.present(work) == [], "a refused key's earlier outputs are removed"


def test_a_collision_keeps_the_outputs_the_other_key_writes_in_the_same_shard(shard, monkeypatch):
    holder = shard.item("dup.jpg", photo())
    refused = shard.item("dup-copy.jpg", photo(), stem=holder.stem,
                         refusal=Refusal(errors.STEM_COLLISION, "dup.jpg holds stem dup", remove_outputs=False))
    recorder = Recorder()
    rows = shard.process(monkeypatch, recorder, [holder, refused])
    assert statuses(rows, "dup.jpg") == {"ingest": "ok", "cloth_mask": "ok"}
    assert statuses(rows, "dup-copy.jpg") == {"ingest": errors.STEM_COLLISION}
    assert shard.present(holder) == shard.outputs(holder), "the holder's outputs must survive the refused key"
    assert recorder.of("remove") == [], "a collision must not remove anything"
    assert recorder.of("read") == [holder.item.rel], f"only the holder is read: {recorder.of('read')}"


# ---------------------------------------------------------------------------------------------
# The manifest part: last, and only once every output is in place


def test_the_manifest_part_is_written_after_every_output_and_removal(shard, monkeypatch):
    works = [shard.item("a.jpg", photo()), shard.item("b.jpg", photo()), shard.item("blank.jpg", photo(garment=False))]
    shard.seed_earlier_outputs(works[2])  # so the failed item has removals to order too
    recorder = Recorder()
    rows = shard.process(monkeypatch, recorder, works)
    changes = [entry for entry in recorder.log if entry[0] in ("write", "remove")]
    assert changes[-1] == ("write", shard.part), f"the last change must be the manifest part: {changes[-3:]}"
    assert recorder.of("write").count(shard.part) == 1, "the part is written once"
    outputs = {path for work in works[:2] for path in shard.outputs(work)}
    assert outputs <= set(recorder.of("write")) and set(shard.outputs(works[2])) <= set(recorder.of("remove"))
    assert read_run(shard.out, SPLIT, RUN_ID).num_rows == len(rows), "the part holds every row"


def test_an_output_store_failing_mid_shard_raises_and_leaves_no_manifest_part(shard, monkeypatch):
    outputs_written = []
    lock = threading.Lock()

    def fail_the_third_output(rel: str) -> bool:
        with lock:
            if rel.startswith(SPLIT + "/"):
                outputs_written.append(rel)
                return len(outputs_written) == 3
            return False

    works = [shard.item(f"{name}.jpg", photo()) for name in ("a", "b", "c")]
    recorder = Recorder(fail_write=fail_the_third_output)
    with pytest.raises(StorageUnavailableError) as caught:
        shard.process(monkeypatch, recorder, works)
    assert is_infrastructure_error(caught.value), "Prefect retries the shard task only on infrastructure errors"
    assert shard.part not in recorder.of("write") and not shard.out.exists(shard.part), "a failed shard wrote its part"
