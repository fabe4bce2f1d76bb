"""What a listing says about one file (`FileInfo`), and the modification time in an fsspec info dict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FileInfo:
    """One listed file: its key relative to the listed folder, its full URL and size in bytes.

    `modified` is the modification time (seconds since the epoch, UTC) and `etag` the object store's
    entity tag, where the filesystem reports them (None otherwise): a cheap change detector.
    """

    key: str
    url: str
    size: int
    modified: float | None = None
    etag: str | None = None


def modified_seconds(info: dict[str, Any]) -> float | None:
    """Modification time from an fsspec info dict (local `mtime`, S3 `LastModified`), in epoch seconds."""
    value = info.get("mtime", info.get("LastModified", info.get("last_modified")))
    if value is None or value == "":
        return None
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return float(value)
