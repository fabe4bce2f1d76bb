"""Model weights, resolved and hashed once per run; models, loaded once per process and thread.

`Weights` is the run's weight files by stage name: `tasks.stages.registry.resolve_weights` turns the
weight URL each stage declares into a local file (downloaded once into the weight cache) and its
sha256: the stage fingerprints use the hashes, the stages the paths (`env.weights.of("pose")`). The
flow resolves them once per run and hands the result to every shard, so no shard hashes a file.

`cached` keeps built models for the life of the process, keyed by what decides them (a weights
hash, a threshold). The cache is per thread: MediaPipe graphs and Ultralytics models are not
thread-safe, and a worker process runs its jobs on one thread, so there it is one per process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tasks.infra.weight_cache import file_sha256, local_file

T = TypeVar("T")


@dataclass(frozen=True)
class ModelFile:
    """A weights file: where the user named it, where it lies on this machine, its content hash."""

    url: str
    path: str
    sha256: str


@dataclass(frozen=True)
class Weights:
    """The run's weight files, by stage name. A stage without one runs its bundled default, so `Weights()`
    is a run on the bundled defaults."""

    files: Mapping[str, ModelFile] = field(default_factory=dict)

    def of(self, stage: str) -> ModelFile | None:
        return self.files.get(stage)


def resolve_model_file(url: str, storage_options: dict[str, Any]) -> ModelFile:
    path = local_file(url, storage_options)
    return ModelFile(url=url, path=path, sha256=file_sha256(path))


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
