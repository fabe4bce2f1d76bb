"""The Store: a root URL and its fsspec filesystem, and every read, write, listing and removal through it.

Everything is a URL. A local path is a URL without a scheme. No other module opens data files.

- Every call goes through `with_retries` (`tasks.infra.errors`): transient errors are retried, the rest
  raise as a `StorageError` naming the operation and the URL.
- Writes are atomic: a local file goes to a hidden temporary name and is renamed into place; an object
  store gets one PUT. Local reads take regular files below the root only (no FIFO, device, or symlink
  out of the root).
- Conditional writes (`create_exclusive`, `replace_if`, `remove_if`, on a content's tag from
  `read_tagged`) have one winner decided by the storage where it can decide (`conditional_writes`):
  locally a hard link that fails when the name exists, and a compare-and-swap under an `flock`; on S3
  `If-None-Match: *` / `If-Match: <ETag>`. Elsewhere they check, then act.
- Listings are streamed (S3 page by page: `tasks.infra.s3_listing`); every filesystem lists in the same
  order. No `Store` repr or error message carries a secret (`tasks.infra.redaction`).
"""

from __future__ import annotations

import errno as errno_codes
import fcntl
import hashlib
import json
import os
import posixpath
import re
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import fsspec
from fsspec.asyn import sync
from fsspec.implementations.local import LocalFileSystem

from tasks.infra.errors import (
    DEFAULT_RETRY,
    STORAGE_TYPES,
    NotARegularFileError,
    OutsideRootError,
    RetryPolicy,
    StorageError,
    StorageNotFoundError,
    UnsafePathError,
    storage_error,
    with_retries,
)
from tasks.infra.file_info import FileInfo, modified_seconds
from tasks.infra.options import S3_PROTOCOLS, resolve_storage_options
from tasks.infra.redaction import redact, register_secrets
from tasks.infra.s3_listing import DEFAULT_PAGE_SIZE, PageFetcher, install_fast_timestamps, list_s3_folder, s3_pages

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


TEMPORARY_NAME = re.compile(r"\.(.+)\.[0-9a-f]{32}\.tmp")  # what `Store.write_bytes` writes before renaming
TEMPORARY_PREFIX = 200  # of the target's name in its temporary name: 200 + 38 stays under NAME_MAX 255
COMMIT_ATTEMPTS = 3  # a local write whose temporary vanished before its rename (swept) writes it again
CONDITION_FAILED = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})  # S3: another won
NOT_IMPLEMENTED = frozenset({"NotImplemented", "501"})  # an S3-compatible server without conditional requests
NO_HARD_LINKS = frozenset({errno_codes.EPERM, errno_codes.EOPNOTSUPP, errno_codes.ENOTSUP, errno_codes.ENOSYS})


def content_tag(data: bytes) -> str:
    """The tag of content on stores without ETags: its SHA-256."""
    return hashlib.sha256(data).hexdigest()


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
        # Whether create_exclusive / replace_if / remove_if have one winner decided by the storage; turns
        # False when it shows it cannot (a filesystem without hard links, an S3 server without conditions).
        self.conditional_writes = self.is_local or self.is_s3

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
        self.call("write", target, lambda: self._commit_local(target, data, os.replace))
        return target

    def _local_folder(self, target: str, operation: str) -> tuple[str, str]:
        folder, name = posixpath.split(target)
        os.makedirs(folder, exist_ok=True)
        _check_below(os.path.realpath(folder), self._real_root(), operation, folder)  # a symlinked folder
        return folder, name

    def _commit_local(self, target: str, data: bytes, commit: Callable[[str, str], None]) -> None:
        """`data` into a hidden temporary beside `target`, then `commit(temporary, target)` (os.replace:
        overwrite; os.link: only if `target` does not exist). The temporary never outlives the call; one
        removed before its commit (a sweep that judged it orphaned) is written again."""
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            folder, name = self._local_folder(target, "write")
            tmp = posixpath.join(folder, f".{name[:TEMPORARY_PREFIX]}.{uuid.uuid4().hex}.tmp")
            try:
                with open(tmp, "wb") as handle:
                    handle.write(data)
                commit(tmp, target)
                return
            except FileNotFoundError:
                if os.path.exists(tmp) or attempt == COMMIT_ATTEMPTS:
                    raise
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)

    def write_text(self, rel: str, text: str) -> str:
        return self.write_bytes(rel, text.encode("utf-8"))

    # -- Conditional writes: for records that several runs may race to write (the dataset's lease) --

    def read_tagged(self, rel: str) -> tuple[bytes, str]:
        """`rel`'s content and its tag, what `replace_if` and `remove_if` compare: the ETag on S3, the
        SHA-256 of the content elsewhere. A missing `rel` raises `StorageNotFoundError`."""
        target = self.path(rel)
        if not self.is_s3:
            data = self.read_bytes(rel)
            return data, content_tag(data)
        bucket, key = self._bucket_key(target)

        async def get() -> tuple[bytes, str]:  # one GET: the body and the ETag of the same version
            response = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            try:
                return await response["Body"].read(), response["ETag"]
            finally:
                response["Body"].close()

        return self.call("read", target, lambda: sync(self.fs.loop, get))

    def create_exclusive(self, rel: str, data: bytes) -> str | None:
        """Write `data` at `rel` only if nothing is there; returns its tag, or None when something was.

        Locally the content goes to a private temporary that is hard-linked to `rel` (the link fails if
        `rel` exists), so of racing creators exactly one wins and no reader sees a partial file. On S3
        one PUT with `If-None-Match: *`. Elsewhere (and where the storage showed it cannot decide:
        `conditional_writes` is then False) a check, then a write: two creators may both succeed, and a
        caller needing one winner reads back.
        """
        target = self.path(rel)
        if self.is_local and self.conditional_writes:
            try:
                created = self.call("create", target, lambda: self._create_local(target, data))
            except StorageError as error:
                if not self._no_hard_links(error):
                    raise
                self.conditional_writes = False  # a filesystem without hard links: check, then write
            else:
                return content_tag(data) if created else None
        if self.is_s3 and self.conditional_writes:
            bucket, key = self._bucket_key(target)
            answer = self._s3_conditional("create", target, "put_object", Bucket=bucket, Key=key, Body=data,
                                          IfNoneMatch="*")
            if answer is not _UNSUPPORTED:
                return None if answer is None else answer["ETag"]
        if self.exists(rel):
            return None
        return self._write_tagged(rel, data)

    def replace_if(self, rel: str, data: bytes, tag: str) -> str | None:
        """Replace `rel` with `data` only if its content still has `tag`; returns the new tag, or None
        when `rel` has another content or is gone.

        Locally the compare and the rename happen under an `flock` on a hidden `.<name>.lock` beside
        `rel` (released by the kernel if the process dies); on S3 one PUT with `If-Match: <ETag>`;
        elsewhere a read, then a write.
        """
        target = self.path(rel)
        if self.is_local:
            return self.call("replace", target, lambda: self._replace_local(target, data, tag))
        if self.is_s3 and self.conditional_writes:
            bucket, key = self._bucket_key(target)
            answer = self._s3_conditional("replace", target, "put_object", Bucket=bucket, Key=key, Body=data,
                                          IfMatch=tag)
            if answer is not _UNSUPPORTED:
                return None if answer is None else answer["ETag"]
        if self._current_tag(rel) != tag:
            return None
        return self._write_tagged(rel, data)

    def remove_if(self, rel: str, tag: str) -> bool:
        """Delete `rel` only if its content still has `tag`; whether it did (a missing `rel`: False).

        Locally under the same `flock` as `replace_if`; on S3 one DELETE with `If-Match`; elsewhere a
        read, then a delete.
        """
        target = self.path(rel)
        if self.is_local:
            return self.call("remove", target, lambda: self._remove_local(target, tag))
        if self.is_s3 and self.conditional_writes:
            bucket, key = self._bucket_key(target)
            answer = self._s3_conditional("remove", target, "delete_object", Bucket=bucket, Key=key, IfMatch=tag)
            if answer is not _UNSUPPORTED:
                return answer is not None
        if self._current_tag(rel) != tag:
            return False
        self.remove(rel)
        return True

    def _current_tag(self, rel: str) -> str | None:
        try:
            return self.read_tagged(rel)[1]
        except StorageNotFoundError:
            return None

    def _write_tagged(self, rel: str, data: bytes) -> str:
        if not self.is_s3:
            self.write_bytes(rel, data)
            return content_tag(data)
        target = self.path(rel)
        bucket, key = self._bucket_key(target)
        answer = self.call_s3("write", target, "put_object", Bucket=bucket, Key=key, Body=data)
        self.fs.invalidate_cache(target)
        return answer["ETag"]

    def _s3_conditional(self, operation: str, target: str, method: str, **kwargs: Any) -> Any:
        """One conditional S3 request: its answer; None when its condition failed (412, or 409: a
        concurrent conditional write, which another run won); `_UNSUPPORTED` (and `conditional_writes`
        off from then on) when the server does not implement conditions. A missing key: None too."""
        try:
            answer = self.call_s3(operation, target, method, **kwargs)
        except StorageNotFoundError as error:
            if error.code == "NoSuchBucket":
                raise
            return None
        except StorageError as error:
            if error.code in CONDITION_FAILED:
                return None
            if error.code not in NOT_IMPLEMENTED:
                raise
            self.conditional_writes = False
            return _UNSUPPORTED
        finally:
            self.fs.invalidate_cache(target)
        return answer

    @staticmethod
    def _no_hard_links(error: StorageError) -> bool:
        cause = error.__cause__ or error.__context__
        return isinstance(cause, OSError) and cause.errno in NO_HARD_LINKS and not isinstance(cause, StorageError)

    def _create_local(self, target: str, data: bytes) -> bool:
        try:
            self._commit_local(target, data, os.link)
        except FileExistsError:
            return False
        return True

    @contextmanager
    def _local_lock(self, target: str) -> Iterator[None]:
        """An exclusive `flock` on the hidden `.<name>.lock` beside `target` (kept: removing a lock file races)."""
        folder, name = self._local_folder(target, "lock")
        fd = os.open(posixpath.join(folder, f".{name[:TEMPORARY_PREFIX]}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _local_tag(self, target: str) -> str | None:
        try:
            return content_tag(_read_regular_file(target, None, self._real_root()))
        except FileNotFoundError:
            return None

    def _replace_local(self, target: str, data: bytes, tag: str) -> str | None:
        with self._local_lock(target):
            if self._local_tag(target) != tag:
                return None
            self._commit_local(target, data, os.replace)
            return content_tag(data)

    def _remove_local(self, target: str, tag: str) -> bool:
        with self._local_lock(target):
            if self._local_tag(target) != tag:
                return False
            os.remove(target)
            return True

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

    def remove_temporaries(self, folder: str = "", modified_before: float | None = None, spare: str | None = None) -> int:
        """Delete the temporary files interrupted local writes left below `folder`; returns how many.

        Only our own names (`.<name>.<32 hex>.tmp`) are touched: those last modified before the epoch time
        `modified_before` (None: all), never those of the file `spare` (relative to the root). Object stores
        have none: a PUT is atomic and leaves nothing behind, so nothing is listed there.
        """
        if not self.is_local:
            return 0
        base = self.path(folder) if folder else self.root
        cutoff = time.time() if modified_before is None else modified_before
        spared = posixpath.split(self.path(spare)) if spare else None
        removed = 0
        for dirpath, _, names in os.walk(base):
            for name in names:
                match = TEMPORARY_NAME.fullmatch(name)
                if match is None:
                    continue
                if spared and dirpath == spared[0] and match.group(1) == spared[1][:TEMPORARY_PREFIX]:
                    continue
                path = os.path.join(dirpath, name)
                try:
                    if os.path.getmtime(path) <= cutoff:
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
            for page in s3_pages(self._page_fetcher("list", base), bucket, prefix, DEFAULT_PAGE_SIZE, delimiter="/"):
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
            return list_s3_folder(self._page_fetcher("list", base), self.fs.unstrip_protocol, bucket, prefix,
                                  len(prefix), page_size)
        return self._list_tree(base)

    def _page_fetcher(self, operation: str, base: str) -> PageFetcher:
        """One `list_objects_v2` request per call, retried; the client is connected at the first."""
        connected = False

        def fetch(kwargs: dict[str, Any]) -> dict[str, Any]:
            nonlocal connected
            if not connected:
                self.call(operation, base, self.fs.connect)
                install_fast_timestamps(self.fs)
                connected = True
            return self.call_s3(operation, base, "list_objects_v2", **kwargs)

        return fetch

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


_UNSUPPORTED = object()  # what `_s3_conditional` answers when the server implements no conditions


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
