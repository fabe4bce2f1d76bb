"""The Parquet manifest: one row per item, stage and run; and the `current` view over all runs.

Layout: `<dataset>/manifests/<split>/run=<run id>/<shard>.parquet`, one part per shard and run,
written last for its shard, plus the run's `summary.json`. Run ids start with a UTC timestamp, so
they sort in time order. The `current` view keeps, for each (kind, key, stage), the row of the
latest run that ran that stage: what the dataset holds now.

`PartFormat` is how any manifest of ours writes and reads its Parquet parts, given its schema:
`ITEMS` (this one) and try-on's (`tasks.engine.tryon`, under `manifests/tryon/`). `write_json` writes
a run's `summary.json` for both.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.infra.store import Store

# v1 (one wide row per input and run) was replaced by v2 before any dataset outlived a run of v1.
MANIFEST_SCHEMA_VERSION = 2
MANIFESTS_DIR = "manifests"

SCHEMA = pa.schema(
    [
        ("schema_version", pa.int32()),
        ("run_id", pa.string()),
        ("split", pa.string()),
        ("shard", pa.string()),
        # the item
        ("kind", pa.string()),
        ("key", pa.string()),
        ("source_url", pa.string()),
        ("stem", pa.string()),
        ("sha256", pa.string()),
        ("source_bytes", pa.int64()),
        ("source_modified", pa.float64()),
        ("source_etag", pa.string()),
        ("source_width", pa.int32()),
        ("source_height", pa.int32()),
        # the stage
        ("stage", pa.string()),
        ("fingerprint", pa.string()),
        ("status", pa.string()),  # ok | error
        ("error_code", pa.string()),
        ("error_message", pa.string()),
        ("outputs", pa.list_(pa.string())),
        ("ms", pa.float64()),
        ("model", pa.string()),  # pose model, parser id, cloth mask model or agnostic recipe
        # stage details
        ("fit", pa.string()),
        ("persons_detected", pa.int32()),
        ("keypoint_confidences", pa.list_(pa.float32())),
        ("cloth_mask_coverage", pa.float64()),
        ("details", pa.string()),  # JSON: what a stage records beyond the columns above
    ]
)
# Columns added after a dataset's first parts were written; older parts read them as nulls.
ADDED_COLUMNS = frozenset({"details"})


def run_folder(split: str, run_id: str) -> str:
    return posixpath.join(MANIFESTS_DIR, split, f"run={run_id}")


def manifest_part_path(split: str, run_id: str, shard: str) -> str:
    return posixpath.join(run_folder(split, run_id), f"{shard}.parquet")


def summary_path(split: str, run_id: str) -> str:
    return posixpath.join(run_folder(split, run_id), "summary.json")


@dataclass(frozen=True)
class PartFormat:
    """The Parquet parts of one manifest: its `schema`, the `version` every row's `schema_version`
    column holds, and the columns later versions added (`added_columns`: older parts read them as
    nulls)."""

    schema: pa.Schema
    version: int
    added_columns: frozenset[str] = frozenset()

    def rows_to_table(self, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
        """Rows (dicts with any subset of the schema's columns) as a table of the full schema."""
        rows = list(rows)
        columns = {field.name: [row.get(field.name) for row in rows] for field in self.schema}
        columns["schema_version"] = [self.version] * len(rows)
        return pa.Table.from_pydict(columns, schema=self.schema)

    def write_part(self, store: Store, rel: str, rows: Iterable[Mapping[str, Any]]) -> str:
        buffer = io.BytesIO()
        pq.write_table(self.rows_to_table(rows), buffer)
        return store.write_bytes(rel, buffer.getvalue())

    def read_parts(self, store: Store, folder: str) -> pa.Table:
        """Every part under `folder` (at any depth), as one table of the schema."""
        tables = []
        for info in store.list_files(folder):
            if info.key.endswith(".parquet"):
                table = pq.read_table(io.BytesIO(store.read_bytes(posixpath.join(folder, info.key))))
                for name in self.added_columns - set(table.column_names):
                    table = table.append_column(name, pa.nulls(table.num_rows, self.schema.field(name).type))
                tables.append(table.select(self.schema.names).cast(self.schema))
        return pa.concat_tables(tables) if tables else self.schema.empty_table()


ITEMS = PartFormat(SCHEMA, MANIFEST_SCHEMA_VERSION, ADDED_COLUMNS)


def write_json(store: Store, rel: str, data: Mapping[str, Any]) -> str:
    """A run's `summary.json`: sorted keys, indented, one final newline; dates and the like as str."""
    return store.write_text(rel, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_part(store: Store, rel: str, rows: Iterable[Mapping[str, Any]]) -> str:
    return ITEMS.write_part(store, rel, rows)


def read_run(store: Store, split: str, run_id: str) -> pa.Table:
    """All manifest rows of one run."""
    return ITEMS.read_parts(store, run_folder(split, run_id))


def read_all(store: Store, split: str) -> pa.Table:
    """Every manifest row of a split, all runs."""
    return ITEMS.read_parts(store, posixpath.join(MANIFESTS_DIR, split))


def current_view(rows: pa.Table) -> pa.Table:
    """The latest row per (kind, key, stage): sort by run id, keep each group's last row."""
    if rows.num_rows == 0:
        return rows
    ordered = rows.sort_by([("run_id", "ascending")])
    ordered = ordered.append_column("_row", pa.array(range(ordered.num_rows), pa.int64()))
    last = ordered.group_by(["kind", "key", "stage"], use_threads=False).aggregate([("_row", "max")])
    return ordered.take(last["_row_max"]).drop_columns(["_row"])


def read_current(store: Store, split: str) -> pa.Table:
    return current_view(read_all(store, split))


def item_view(rows: pa.Table) -> list[dict[str, Any]]:
    """One dict per item: its item columns, `status` (error if any stage failed), the first error,
    and per stage `<stage>_status`, `<stage>_ms`, `<stage>_outputs`, `<stage>_model`."""
    items: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows.to_pylist():
        item = items.setdefault((row["kind"], row["key"]), {"kind": row["kind"], "key": row["key"], "status": "ok"})
        for column in ("source_url", "stem", "sha256", "source_bytes", "source_width", "source_height", "fit",
                       "persons_detected", "keypoint_confidences", "cloth_mask_coverage"):
            if row.get(column) is not None:
                item[column] = row[column]
        stage = row["stage"]
        item[f"{stage}_status"] = row["status"]
        item[f"{stage}_ms"] = row["ms"]
        item[f"{stage}_outputs"] = row["outputs"] or []
        item[f"{stage}_model"] = row["model"]
        if row["status"] == "error" and item["status"] == "ok":
            item.update(status="error", error_code=row["error_code"], error_message=row["error_message"],
                        failed_stage=stage)
    return list(items.values())


def ok_items(current: pa.Table, kind: str, stages: tuple[str, ...]) -> dict[str, str]:
    """key -> stem of the items of `kind` whose every stage is ok in the current view."""
    mine = current.filter(pc.equal(current["kind"], kind))
    counts: dict[str, int] = {}
    stems: dict[str, str] = {}
    bad: set[str] = set()
    for key, stem, stage, status in zip(
        mine["key"].to_pylist(), mine["stem"].to_pylist(), mine["stage"].to_pylist(), mine["status"].to_pylist()
    ):
        if stage not in stages:
            continue
        if status != "ok":
            bad.add(key)
        counts[key] = counts.get(key, 0) + 1
        stems[key] = stem
    return {key: stems[key] for key, count in counts.items() if count == len(stages) and key not in bad}


def write_summary(store: Store, split: str, run_id: str, summary: Mapping[str, Any]) -> str:
    return write_json(store, summary_path(split, run_id), summary)
