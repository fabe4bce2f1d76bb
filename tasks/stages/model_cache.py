"""Model weights, resolved and hashed once per run; models, loaded once per process and thread.

`resolve_weights` turns the configured weight URLs into local files (downloaded once into the
weight cache) and their sha256: the stage fingerprints use the hashes, the stages the paths. The
flow resolves them once per run and hands the result to every shard, so no shard hashes a file.

`cached` keeps built models for the life of the process, keyed by what decides them (a weights
hash, a threshold). The cache is per thread: MediaPipe graphs and Ultralytics models are not
thread-safe, and a worker process runs its jobs on one thread, so there it is one per process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

from tasks.infra.weight_cache import file_sha256, local_file
from tasks.records.config import PreprocessConfig

T = TypeVar("T")


@dataclass(frozen=True)
class ModelFile:
    """A weights file: where the user named it, where it lies on this machine, its content hash."""

    url: str
    path: str
    sha256: str


@dataclass(frozen=True)
class Weights:
    """The run's weight files (None: the stage's bundled default)."""

    pose: ModelFile | None = None
    parser: ModelFile | None = None
    cloth_mask: ModelFile | None = None


def resolve_model_file(url: str, storage_options: dict[str, Any]) -> ModelFile:
    path = local_file(url, storage_options)
    return ModelFile(url=url, path=path, sha256=file_sha256(path))


def resolve_weights(config: PreprocessConfig) -> Weights:
    """Every configured weight URL as a local file with its sha256 (one download and one hash each)."""
    options = config.storage_options

    def resolve(url: str | None) -> ModelFile | None:
        return resolve_model_file(url, options) if url else None

    return Weights(
        pose=resolve(config.pose_model),
        parser=resolve(config.parser_weights_url),
        cloth_mask=resolve(config.cloth_mask_model),
    )


_local = threading.local()


def cached(key: Hashable, build: Callable[[], T]) -> T:
    """The model built by `build` for `key`, built on this thread's first call and then reused."""
    models = _local.__dict__.setdefault("models", {})
    if key not in models:
        models[key] = build()
    return models[key]


def clear() -> None:
    """Close and forget this thread's models (tests, and a worker that shuts down)."""
    models = _local.__dict__.pop("models", {})
    for model in models.values():
        close = getattr(model, "close", None)
        if close is not None:
            close()
