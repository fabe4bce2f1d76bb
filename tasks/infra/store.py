"""The Store: a root URL and its fsspec filesystem, and every read, write, listing and removal through it.

Everything is a URL. A local path is a URL without a scheme. No other module opens data files.

- Every call goes through `with_retries` (`tasks.infra.errors`): transient errors are retried, the rest
  raise as a `StorageError` naming the operation and the URL.
- Writes are atomic: a local file goes to a hidden temporary name and is renamed into place; an object
  store gets one PUT. Local reads take regular files below the root only (no FIFO, device, or symlink
  out of the root).
- Listings are streamed (S3 page by page: `tasks.infra.s3_listing`); every filesystem lists in the same
  order. No `Store` repr or error message carries a secret (`tasks.infra.redaction`).
"""

from __future__ import annotations

import errno as errno_codes
import json
import os
import posixpath
import re
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from tasks.infra.errors import (
    DEFAULT_RETRY,
    STORAGE_TYPES,
    NotARegularFileError,
    OutsideRootError,
    RetryPolicy,
    StorageNotFoundError,
    UnsafePathError,
    storage_error,
    with_retries,
)
from tasks.infra.file_info import FileInfo, modified_seconds
from tasks.infra.options import S3_PROTOCOLS, resolve_storage_options
from tasks.infra.redaction import redact, register_secrets
from tasks.infra.s3_listing import DEFAULT_PAGE_SIZE, list_s3_folder, s3_pages

T = TypeVar("T")


def unsafe_relative_reason(rel: str) -> str | None:
    """Why `rel` would not stay below the root it is joined to, or None. An object store resolves
    `a//b` and a leading `/` to other buckets; a filesystem resolves `..` to other folders."""
    if rel.startswith("/"):
        return "it starts with '/' and would name a path outside the root"
    segments = rel.split("/")
    if "" in segments:
        return "it holds an empty path segment ('//'), which resolves outside the root on S3"
    if any(segment in (".", "..") for segment in segments):
        return "it holds a '.' or '..' segment, which resolves outside its folder"
    if any(ord(char) < 32 for char in rel):
        return "it holds a control character"
    return None


TEMPORARY_NAME = re.compile(r"\..+\.[0-9a-f]{32}\.tmp")  # what `Store.write_bytes` writes before renaming
TEMPORARY_PREFIX = 200  # of the target's name in its temporary name: 200 + 38 stays under NAME_MAX 255


class Store:
    """A root URL (`file://`, a local path, `s3://bucket/prefix`, ...) and its filesystem.

    Use its methods, not `.fs`, for I/O: they retry transient errors and raise `StorageError`s.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, *, retry: RetryPolicy | None = None):
        self.url = url.rstrip("/") or url
        self.storage_options = dict(storage_options or {})
        self.retry = retry or DEFAULT_RETRY
        options = resolve_storage_options(url, self.storage_options)
        register_secrets(options)  # the given ones, the run's credentials and fsspec's configured ones
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **options)
        except STORAGE_TYPES as error:  # a bad profile, say
            raise storage_error(error, "open", self.url) from None
        self.root = root.rstrip("/") or root
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.is_s3 = fsspec.utils.get_protocol(url) in S3_PROTOCOLS and hasattr(self.fs, "call_s3")
        if self.is_s3:
            self.fs.retries = 1  # s3fs's own retry loop: off, this Store retries (see tasks.infra.errors)

    def __repr__(self) -> str:
        return f"Store({redact(self.url)!r})"

    def path(self, *parts: str) -> str:
        """The filesystem path of `parts` below the root; a part that would leave it raises UnsafePathError."""
        for part in parts:
            reason = unsafe_relative_reason(part) if part else None
            if reason is not None:
                error = UnsafePathError(f"{redact(part)!r} is not a path below {redact(self.url)}: {reason}")
                error.operation, error.url, error.code = "path", redact(self.url), "unsafe_path"
                raise error
        return posixpath.join(self.root, *parts) if parts else self.root

    def _real_root(self) -> str:
        return os.path.realpath(self.root)

    def url_of(self, *parts: str) -> str:
        """The full URL of `parts` below the root, as a user would pass it back in."""
        return self.fs.unstrip_protocol(self.path(*parts))

    def child(self, *parts: str) -> Store:
        return Store(self.url_of(*parts), self.storage_options, retry=self.retry)

    def call(self, operation: str, path: str, call: Callable[[], T]) -> T:
        """`call()`, retried on transient errors; a storage error comes out as a `StorageError` naming `path`."""
        return with_retries(call, operation, self.fs.unstrip_protocol(path), self.retry)

    def call_s3(self, operation: str, path: str, method: str, **kwargs: Any) -> dict[str, Any]:
        """One S3 API call (s3fs's `call_s3`), retried like every other."""
        return self.call(operation, path, lambda: self.fs.call_s3(method, **kwargs))

    def _bucket_key(self, path: str) -> tuple[str, str]:
        bucket, key, _ = self.fs.split_path(path)
        return bucket, key

    def exists(self, *parts: str) -> bool:
        """Whether a file or a folder is at `parts`. On S3 a missing bucket is an error, not False."""
        target = self.path(*parts)
        if not self.is_s3:
            return self.call("exists", target, lambda: self.fs.exists(target))
        bucket, key = self._bucket_key(target)
        if not key:
            try:
                self.call_s3("exists", target, "head_bucket", Bucket=bucket)
                return True
            except StorageNotFoundError:
                return False
        try:
            self.call_s3("exists", target, "head_object", Bucket=bucket, Key=key)
            return True
        except StorageNotFoundError:
            pass
        return self._s3_prefix_exists("exists", target)

    def isdir(self, *parts: str) -> bool:
        target = self.path(*parts)
        if not self.is_s3:
            return self.call("isdir", target, lambda: self.fs.isdir(target))
        _, key = self._bucket_key(target)
        if not key:
            return self.exists(*parts)
        return self._s3_prefix_exists("isdir", target)

    def _s3_prefix_exists(self, operation: str, target: str) -> bool:
        bucket, key = self._bucket_key(target)
        page = self.call_s3(operation, target, "list_objects_v2", Bucket=bucket, Prefix=key.rstrip("/") + "/", MaxKeys=1)
        return bool(page.get("KeyCount") or page.get("Contents"))

    def read_bytes(self, *parts: str) -> bytes:
        target = self.path(*parts)
        if self.is_s3:  # one GET (s3fs would HEAD first, to split large objects into ranges)
            return self.call("read", target, lambda: self.fs.cat_file(target, max_concurrency=1))
        if self.is_local:
            return self.call("read", target, lambda: _read_regular_file(target, None, self._real_root()))
        return self.call("read", target, lambda: self.fs.cat_file(target))

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode("utf-8")

    def read_bounded(self, rel: str, max_bytes: int) -> bytes:
        """At most `max_bytes + 1` bytes of `rel` (more than `max_bytes` means the file is too large).

        Locally only a regular file below the root is read: a FIFO or a device raises
        `NotARegularFileError` and a symlink out of the root `OutsideRootError` before a byte is read,
        so nothing blocks, fills memory or leaks. Elsewhere one ranged GET.
        """
        target = self.path(rel)
        if self.is_local:
            return self.call("read", target, lambda: _read_regular_file(target, max_bytes + 1, self._real_root()))
        return self.call("read", target, lambda: self.fs.cat_file(target, start=0, end=max_bytes + 1))

    def write_bytes(self, rel: str, data: bytes) -> str:
        """Write `data` at `rel` so no reader ever sees a partial file; returns the path written.

        Local files go to a hidden temporary name in the same folder and are renamed into place
        (atomic on POSIX). Object stores get a single PUT, which is atomic by itself.
        """
        target = self.path(rel)
        if not self.is_local:
            self.call("write", target, lambda: self.fs.pipe_file(target, data))
            return target
        self.call("write", target, lambda: self._write_local(target, data))
        return target

    def _write_local(self, target: str, data: bytes) -> None:
        folder, name = posixpath.split(target)
        os.makedirs(folder, exist_ok=True)
        _check_below(os.path.realpath(folder), self._real_root(), "write", folder)  # a symlinked folder
        tmp = posixpath.join(folder, f".{name[:TEMPORARY_PREFIX]}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def write_text(self, rel: str, text: str) -> str:
        return self.write_bytes(rel, text.encode("utf-8"))

    def remove(self, rel: str) -> None:
        """Delete `rel` if it exists."""
        target = self.path(rel)
        if self.is_s3:  # DeleteObject of a missing key succeeds: no existence check needed
            bucket, key = self._bucket_key(target)
            self.call_s3("remove", target, "delete_object", Bucket=bucket, Key=key)
            self.fs.invalidate_cache(target)
            return
        try:
            self.call("remove", target, lambda: self.fs.rm_file(target))
        except FileNotFoundError:
            pass

    def remove_temporaries(self, folder: str = "", min_age_s: float = 0.0) -> int:
        """Delete the temporary files interrupted local writes left below `folder`; returns how many.

        Only our own names (`.<name>.<32 hex>.tmp`) older than `min_age_s` seconds are touched. Object
        stores have none: a PUT is atomic and leaves nothing behind, so nothing is listed there.
        """
        if not self.is_local:
            return 0
        base = self.path(folder) if folder else self.root
        removed, now = 0, time.time()
        for dirpath, _, names in os.walk(base):
            for name in names:
                if not TEMPORARY_NAME.fullmatch(name):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    if now - os.path.getmtime(path) >= min_age_s:
                        os.remove(path)
                        removed += 1
                except FileNotFoundError:  # its writer finished or removed it meanwhile
                    continue
        return removed

    def listdir(self, folder: str = "") -> list[str]:
        """The names directly in `folder` (files and subfolders), sorted, hidden names skipped."""
        base = self.path(folder) if folder else self.root
        if self.is_s3:
            bucket, key = self._bucket_key(base)
            prefix = f"{key.rstrip('/')}/" if key else ""
            names = []
            for page in s3_pages(self, "list", base, bucket, prefix, DEFAULT_PAGE_SIZE, delimiter="/"):
                names += [p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", [])]
                names += [c["Key"][len(prefix) :] for c in page.get("Contents", [])]
            return sorted(name for name in names if name and not name.startswith("."))
        try:
            entries = self.call("list", base, lambda: self.fs.ls(base, detail=False))
        except FileNotFoundError:
            return []
        names = (posixpath.basename(self.fs._strip_protocol(entry).rstrip("/")) for entry in entries)
        return sorted(name for name in names if name and not name.startswith("."))

    def list_files(self, folder: str = "", page_size: int = DEFAULT_PAGE_SIZE) -> Iterator[FileInfo]:
        """Every file below `folder` (any depth), streamed; a missing folder lists as empty.

        The order is the same on every filesystem: folder by folder, depth first, a folder's files
        (sorted by name) before its subfolders (sorted by name). On S3, one `list_objects_v2`
        request (`Delimiter="/"`) per `page_size` entries of a folder, each retried on its own: a
        listing of any size holds one page and the names of the pending subfolders, never the whole
        listing. Hidden names (a leading dot: our temporary files, `.DS_Store`) are skipped, and so
        is everything below a hidden folder.
        """
        base = self.path(folder) if folder else self.root
        if self.is_s3:
            bucket, key = self._bucket_key(base)
            prefix = f"{key.strip('/')}/" if key else ""
            return list_s3_folder(self, base, bucket, prefix, len(prefix), page_size)
        return self._list_tree(base)

    def _list_tree(self, base: str) -> Iterator[FileInfo]:
        """Depth first through `fs.ls`: the folders on the current path in memory, no more."""
        if not self.call("list", base, lambda: self.fs.isdir(base)):
            return
        root = self.fs._strip_protocol(base).rstrip("/")
        yield from self._list_folder(root, root)

    def _list_folder(self, folder: str, root: str) -> Iterator[FileInfo]:
        try:
            entries = self.call("list", folder, lambda: self.fs.ls(folder, detail=True))
        except FileNotFoundError:
            return  # removed while we listed
        files, subfolders = [], []
        for entry in entries:
            name = self.fs._strip_protocol(entry["name"]).rstrip("/")
            base_name = posixpath.basename(name)
            if name == folder or not base_name or base_name.startswith("."):
                continue
            (subfolders if entry.get("type") == "directory" else files).append((name, entry))
        for name, entry in sorted(files, key=lambda item: item[0]):
            yield FileInfo(
                key=posixpath.relpath(name, root),
                url=self.fs.unstrip_protocol(name),
                size=int(entry.get("size") or 0),
                modified=modified_seconds(entry),
                etag=entry.get("ETag") or entry.get("etag") or None,
            )
        for name, _ in sorted(subfolders, key=lambda item: item[0]):
            yield from self._list_folder(name, root)

    def version(self, rel: str) -> str:
        """What identifies the object's current content without reading it: its ETag (or version id),
        else its size and modification time (one HEAD or stat)."""
        target = self.path(rel)
        self.fs.invalidate_cache(target)  # s3fs answers from its listing cache otherwise
        info = self.call("info", target, lambda: self.fs.info(target))
        tag = info.get("ETag") or info.get("etag") or info.get("VersionId") or info.get("version_id")
        return json.dumps({"size": info.get("size"), "tag": tag, "modified": None if tag else modified_seconds(info)},
                          sort_keys=True, default=str)


def _check_below(real: str, root: str, operation: str, path: str) -> None:
    if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
        error = OutsideRootError(f"{operation} file://{path} refused: a symlink leads outside the root {root}")
        error.operation, error.url, error.code = operation, redact(f"file://{path}"), "outside_root"
        raise error


def _opened_path(fd: int, path: str) -> str:
    """Where an open descriptor really points (Linux names it in /proc; elsewhere resolve the path)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)


def _read_regular_file(path: str, limit: int | None, root: str) -> bytes:
    """Up to `limit` bytes (None: all) of the regular file at `path`, symlinks followed only within
    `root` (checked on the opened file, so a link swapped in meanwhile is caught too), never blocking
    on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as error:
        if error.errno != errno_codes.ENXIO:
            raise
        error = NotARegularFileError(f"read file://{path} failed: it is a socket, not a regular file")
        error.operation, error.url, error.code = "read", redact(f"file://{path}"), "not_a_regular_file"
        raise error from None
    try:
        _check_below(_opened_path(fd, path), root, "read", path)
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
                    stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}.get(stat.S_IFMT(mode), "not a file")
            error = NotARegularFileError(f"read file://{path} failed: it is {kind}, not a regular file")
            error.operation, error.url, error.code = "read", redact(f"file://{path}"), "not_a_regular_file"
            raise error
        if limit is None:
            limit = os.fstat(fd).st_size + 1  # until EOF: a file that grows is read as it was
        chunks, size = [], 0
        while size < limit:
            chunk = os.read(fd, min(1 << 20, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
