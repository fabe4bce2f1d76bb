"""All storage I/O: one fsspec filesystem per root URL, atomic writes, streamed listings.

Everything is a URL. A local path is a URL without a scheme. No other module opens data files.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem


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


class Store:
    """A root URL (`file://`, a local path, `s3://bucket/prefix`, ...) and its filesystem."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.url = url.rstrip("/") or url
        self.storage_options = dict(storage_options or {})
        self.fs, root = fsspec.core.url_to_fs(url, **self.storage_options)
        self.root = root.rstrip("/") or root
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def path(self, *parts: str) -> str:
        """The filesystem path of `parts` below the root."""
        return posixpath.join(self.root, *parts) if parts else self.root

    def url_of(self, *parts: str) -> str:
        """The full URL of `parts` below the root, as a user would pass it back in."""
        return self.fs.unstrip_protocol(self.path(*parts))

    def child(self, *parts: str) -> Store:
        return Store(self.url_of(*parts), self.storage_options)

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def isdir(self, *parts: str) -> bool:
        return self.fs.isdir(self.path(*parts))

    def read_bytes(self, *parts: str) -> bytes:
        return self.fs.cat_file(self.path(*parts))

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode("utf-8")

    def write_bytes(self, rel: str, data: bytes) -> str:
        """Write `data` at `rel` so no reader ever sees a partial file; returns the path written.

        Local files go to a hidden temporary name in the same folder and are renamed into place
        (atomic on POSIX). Object stores get a single PUT, which is atomic by itself.
        """
        target = self.path(rel)
        if not self.is_local:
            self.fs.pipe_file(target, data)
            return target
        folder, name = posixpath.split(target)
        os.makedirs(folder, exist_ok=True)
        tmp = posixpath.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return target

    def write_text(self, rel: str, text: str) -> str:
        return self.write_bytes(rel, text.encode("utf-8"))

    def remove(self, rel: str) -> None:
        """Delete `rel` if it exists."""
        target = self.path(rel)
        if self.fs.exists(target):
            self.fs.rm_file(target)

    def list_files(self, folder: str = "") -> Iterator[FileInfo]:
        """Every file below `folder` (any depth), folder by folder, keys sorted within a folder.

        Hidden names (a leading dot: our temporary files, `.DS_Store`) are skipped.
        """
        base = self.path(folder) if folder else self.root
        if not self.fs.isdir(base):
            return
        for dirpath, dirnames, files in self.fs.walk(base, detail=True):
            for hidden in [d for d in dirnames if d.startswith(".")]:
                del dirnames[hidden]  # walk is top-down: pruning here skips the folder
            for name in sorted(files):
                if name.startswith("."):
                    continue
                full = files[name]["name"]
                key = posixpath.relpath(self.fs._strip_protocol(full), self.fs._strip_protocol(base))
                yield FileInfo(
                    key=key,
                    url=self.fs.unstrip_protocol(full),
                    size=int(files[name].get("size") or 0),
                    modified=modified_seconds(files[name]),
                    etag=(files[name].get("ETag") or files[name].get("etag") or None),
                )

    def local_copy(self, rel: str, cache_dir: str) -> str:
        """A local file path holding `rel` (the file itself when local; else a cached download)."""
        if self.is_local:
            return self.path(rel)
        digest = hashlib.sha256(self.url_of(rel).encode()).hexdigest()[:16]
        local = os.path.join(cache_dir, digest, posixpath.basename(rel))
        if not os.path.exists(local):
            os.makedirs(os.path.dirname(local), exist_ok=True)
            tmp = f"{local}.{uuid.uuid4().hex}.tmp"
            self.fs.get_file(self.path(rel), tmp)
            os.replace(tmp, local)
        return local


def modified_seconds(info: dict[str, Any]) -> float | None:
    """Modification time from an fsspec info dict (local `mtime`, S3 `LastModified`), in epoch seconds."""
    value = info.get("mtime", info.get("LastModified", info.get("last_modified")))
    if value is None:
        return None
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return float(value)


def local_file(url: str, storage_options: dict[str, Any] | None = None, cache_dir: str | None = None) -> str:
    """A local path for the file at `url` (model weights): the file itself, or a cached download."""
    parent, name = url.rstrip("/").rsplit("/", 1) if "/" in url else (".", url)
    store = Store(parent, storage_options)
    cache = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "vitonprep", "weights")
    return store.local_copy(name, cache)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
