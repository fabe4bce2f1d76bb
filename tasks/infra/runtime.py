"""How task runs behave on a fleet of workers: retries on infrastructure errors, and the GPU slot.

A shard task that raises lost its storage, its network or its GPU memory (per-item problems are
caught and become manifest rows). It is retried with exponential backoff and jitter only when that can
help: a timeout, a dropped connection, throttling, a 5xx, GPU memory another process held. Access
denied, a missing bucket, a name the filesystem refuses, a bug or a bad configuration fail at once. A model stage on a GPU holds the machine's GPU slot, a Prefect
global concurrency limit named per machine (Prefect's "per-worker task concurrency" pattern), so one
GPU never runs two model stages at once, across task runs and across flow runs on that machine.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

GPU_LIMIT_ENV = "VITONPREP_GPU_LIMIT"  # the limit's name; default gpu:<host name>
INFRASTRUCTURE_RETRIES = 3
BACKOFF_FACTOR_S = 2.0  # retry delays 2, 4, 8 s, each +-50 %
GPU_SLOT_LEASE_S = 600.0  # renewed while held; a crashed holder frees the slot after this
# Shard task runs in flight per flow run. They only feed the worker processes (tasks.engine.shard) and wait
# on storage, so a few keep the processes busy while one shard starts and another writes its part.
SHARDS_IN_FLIGHT = 4

_TRANSIENT_NAMES = ("OutOfMemoryError",)  # torch.cuda.OutOfMemoryError: another process held the memory


def is_infrastructure_error(error: BaseException) -> bool:
    """Is `error` worth a retry later (a transient storage, network or GPU memory error)?

    A `StorageError` says itself (its retries ran out on a transient error); anything else is
    classified as the Store classifies storage errors (timeouts, dropped connections, throttling,
    5xx and their errnos are transient; refused access, missing buckets and keys are not).
    """
    from tasks.infra.errors import TRANSIENT, StorageError, classify

    if isinstance(error, StorageError):
        return error.transient
    if type(error).__name__ in _TRANSIENT_NAMES:
        return True
    return classify(error)[0] == TRANSIENT


def retry_on_infrastructure_error(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's `retry_condition_fn`: retry only when the run failed on an infrastructure error."""
    error = state.data if isinstance(state.data, BaseException) else None
    return error is not None and is_infrastructure_error(error)


# The options of every shard task: no Prefect caching or result persistence (the manifest is the
# record of what is done), and retries for infrastructure errors only.
TASK_OPTIONS: dict[str, Any] = {
    "retries": INFRASTRUCTURE_RETRIES,
    "retry_delay_seconds": exponential_backoff(backoff_factor=BACKOFF_FACTOR_S),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_on_infrastructure_error,
    "cache_policy": NO_CACHE,
    "persist_result": False,
}


def gpu_limit_name() -> str:
    """The GPU slot's concurrency limit: `$VITONPREP_GPU_LIMIT`, else `gpu:<host name>`."""
    return os.environ.get(GPU_LIMIT_ENV) or f"gpu:{socket.gethostname()}"


@contextmanager
def gpu_slot(on_gpu: bool) -> Iterator[None]:
    """Hold this machine's GPU slot while a model stage runs on the GPU; nothing on the CPU.

    Without the limit on the server (`deployments/stack.py` creates it), Prefect warns and lets the
    stage run: a single local run has nobody to share the GPU with.
    """
    if not on_gpu:
        yield
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(gpu_limit_name(), occupy=1, lease_duration=GPU_SLOT_LEASE_S):
        yield


def use_storage_secret(block_name: str | None) -> None:
    """Load the Prefect Secret block `block_name` where this run runs: a JSON object of credential
    options (`{"key": ..., "secret": ...}` for S3) that every Store of this process adds to its
    options. Only the block's name is a flow parameter; its value never is."""
    from prefect.blocks.system import Secret

    from tasks.infra.options import use_credentials

    if not block_name:
        use_credentials({})  # none of an earlier run's in this process
        return

    value = Secret.load(block_name).get()
    if not isinstance(value, dict):
        raise ValueError(f"the Secret block {block_name!r} must hold a JSON object of storage options "
                         f"(key, secret, token, ...), not a {type(value).__name__}")
    use_credentials(value)
