"""The file access the model layer needs, as a protocol: paths relative to a root, whole files.

`tasks.infra.store.Store` (local disks, S3 and every fsspec filesystem) is one; so is anything with these
methods. A missing file raises FileNotFoundError (or a subclass of it).
"""

from __future__ import annotations

from typing import Protocol


class Files(Protocol):
    url: str

    def read_bytes(self, *parts: str) -> bytes: ...

    def read_text(self, *parts: str) -> str: ...

    def write_bytes(self, rel: str, data: bytes) -> str: ...

    def write_text(self, rel: str, text: str) -> str: ...

    def exists(self, *parts: str) -> bool: ...

    def isdir(self, *parts: str) -> bool: ...

    def listdir(self, folder: str = "") -> list[str]: ...

    def url_of(self, *parts: str) -> str: ...
