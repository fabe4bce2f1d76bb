"""The Parquet manifest: one row per input photo and run, with its outputs, timings and errors."""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.storage import Store

MANIFEST_SCHEMA_VERSION = 1
MANIFESTS_DIR = "manifests"
STAGES = ("ingest", "pose", "parse", "cloth_mask", "agnostic")
OUTPUT_COLUMNS = (
    "image_path",
    "cloth_path",
    "cloth_mask_path",
    "pose_json_path",
    "pose_img_path",
    "parse_path",
    "parse_agnostic_path",
    "agnostic_path",
)

SCHEMA = pa.schema(
    [
        ("schema_version", pa.int32()),
        ("run_id", pa.string()),
        ("split", pa.string()),
        ("shard", pa.string()),
        ("kind", pa.string()),
        ("key", pa.string()),
        ("source_url", pa.string()),
        ("stem", pa.string()),
        ("sha256", pa.string()),
        ("source_bytes", pa.int64()),
        ("source_width", pa.int32()),
        ("source_height", pa.int32()),
        ("status", pa.string()),
        ("error_code", pa.string()),
        ("error_message", pa.string()),
        ("failed_stage", pa.string()),
        ("fit", pa.string()),
        *[(column, pa.string()) for column in OUTPUT_COLUMNS],
        *[(f"{stage}_ms", pa.float64()) for stage in STAGES],
        ("pose_model", pa.string()),
        ("parser_id", pa.string()),
        ("cloth_mask_model", pa.string()),
        ("agnostic_recipe", pa.string()),
        ("persons_detected", pa.int32()),
        ("keypoint_confidences", pa.list_(pa.float32())),
        ("cloth_mask_coverage", pa.float64()),
    ]
)


def manifest_part_path(split: str, run_id: str, shard: str) -> str:
    return posixpath.join(MANIFESTS_DIR, split, f"run={run_id}", f"{shard}.parquet")


def summary_path(split: str, run_id: str) -> str:
    return posixpath.join(MANIFESTS_DIR, split, f"run={run_id}", "summary.json")


def rows_to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts with any subset of the schema's columns) as a table of the full schema."""
    rows = list(rows)
    columns = {field.name: [row.get(field.name) for row in rows] for field in SCHEMA}
    columns["schema_version"] = [MANIFEST_SCHEMA_VERSION] * len(rows)
    return pa.Table.from_pydict(columns, schema=SCHEMA)


def write_part(store: Store, rel: str, rows: Iterable[Mapping[str, Any]]) -> str:
    buffer = io.BytesIO()
    pq.write_table(rows_to_table(rows), buffer)
    return store.write_bytes(rel, buffer.getvalue())


def read_run(store: Store, split: str, run_id: str) -> pa.Table:
    """All manifest parts of one run."""
    folder = posixpath.dirname(manifest_part_path(split, run_id, "x"))
    tables = [pq.read_table(io.BytesIO(store.read_bytes(posixpath.join(folder, f.key))))
              for f in store.list_files(folder) if f.key.endswith(".parquet")]
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


def write_summary(store: Store, split: str, run_id: str, summary: Mapping[str, Any]) -> str:
    return store.write_text(summary_path(split, run_id), json.dumps(summary, indent=2, sort_keys=True) + "\n")
