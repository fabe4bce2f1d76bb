"""Model weights as local files: a local weight is used where it is; a remote one is downloaded into a cache
folder, once per object version (a new object at the same URL is downloaded again, older copies go). And the
SHA-256 of a file or of bytes.

Not fsspec's caches: `simplecache::` never looks at the remote object again, and `filecache::` (whose
`check_files` compares `fs.ukey`, the object's info with its ETag: our versioning rule) keeps one file per
URL, named by a hash without the weight's suffix, and downloads a new version straight into it, so another
process loading it meanwhile reads a partial file and a path the run already hashed changes its bytes. Here
each version has its own folder, is downloaded under a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import uuid
from typing import Any

from tasks.infra.store import Store


def local_copy(store: Store, rel: str, cache_dir: str) -> str:
    """A local file path holding `rel`: the file itself when local, else a download cached by the
    object's URL and version (a new object at the same URL is downloaded again; older copies go)."""
    if store.is_local:
        return store.path(rel)
    url_folder = os.path.join(cache_dir, hashlib.sha256(store.url_of(rel).encode()).hexdigest()[:16])
    version = hashlib.sha256(store.version(rel).encode()).hexdigest()[:16]
    local = os.path.join(url_folder, version, posixpath.basename(rel))
    if not os.path.exists(local):
        os.makedirs(os.path.dirname(local), exist_ok=True)
        tmp = f"{local}.{uuid.uuid4().hex}.tmp"
        try:
            store.call("download", store.path(rel), lambda: store.fs.get_file(store.path(rel), tmp))
            os.replace(tmp, local)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        for other in os.listdir(url_folder):  # earlier versions of the same URL
            if other != version:
                shutil.rmtree(os.path.join(url_folder, other), ignore_errors=True)
    return local


def local_file(url: str, storage_options: dict[str, Any] | None = None, cache_dir: str | None = None) -> str:
    """A local path for the file at `url` (model weights): the file itself, or a cached download."""
    parent, name = url.rstrip("/").rsplit("/", 1) if "/" in url else (".", url)
    store = Store(parent, storage_options)
    cache = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "vitonprep", "weights")
    return local_copy(store, name, cache)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
