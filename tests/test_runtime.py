"""tasks/infra/runtime.py: which failures a shard task retries, and the GPU slot."""

from __future__ import annotations

import errno
import itertools
import threading
import time

import pytest

from tasks.infra.errors import StorageError, StorageNotFoundError, StoragePermissionError, StorageUnavailableError
from tasks.infra.runtime import GPU_LIMIT_ENV, TASK_OPTIONS, gpu_slot, is_infrastructure_error
from vitonhd_models.errors import ItemError


@pytest.mark.parametrize(
    "error",
    [OSError(errno.EIO, "I/O error on the network filesystem"), TimeoutError("slow"), ConnectionResetError("peer"),
     StorageUnavailableError("s3 503 after 5 attempts")],
    ids=repr,
)
def test_timeouts_dropped_connections_and_exhausted_transient_errors_are_retried(error):
    assert is_infrastructure_error(error)


@pytest.mark.parametrize(
    "error",
    [ValueError("bad config"), KeyError("bug"), ItemError("bad_input", "one bad photo"),
     PermissionError(errno.EACCES, "access denied"), OSError(errno.ENAMETOOLONG, "File name too long"),
     StoragePermissionError("write s3://b/k failed: access denied"),
     StorageNotFoundError("read s3://missing/k failed: bucket 'missing' does not exist (NoSuchBucket)"),
     StorageError("write /x failed: [Errno 36] File name too long")],
    ids=repr,
)
def test_bugs_bad_configuration_and_permanent_storage_errors_are_not_retried(error):
    assert not is_infrastructure_error(error)


def test_gpu_out_of_memory_is_retried():
    class OutOfMemoryError(RuntimeError):  # as torch.cuda.OutOfMemoryError is named
        pass

    assert is_infrastructure_error(OutOfMemoryError("CUDA out of memory"))


def test_a_shard_task_retries_an_infrastructure_error_but_not_a_bug(prefect_server):
    from prefect import flow, task

    attempts = {"io": 0, "bug": 0}

    @task(**{**TASK_OPTIONS, "retry_delay_seconds": 0, "retry_jitter_factor": None})
    def flaky_io():
        attempts["io"] += 1
        if attempts["io"] < 3:
            raise ConnectionResetError("connection reset by the object store")
        return "ok"

    @task(**{**TASK_OPTIONS, "retry_delay_seconds": 0, "retry_jitter_factor": None})
    def buggy():
        attempts["bug"] += 1
        raise ValueError("a bug")

    @flow
    def both():
        return flaky_io.submit().result(), buggy.submit().result(raise_on_failure=False)

    io_result, bug_result = both()
    assert io_result == "ok" and attempts["io"] == 3
    assert isinstance(bug_result, ValueError) and attempts["bug"] == 1, "a bug must fail at once, not retry"


def test_without_a_gpu_the_slot_is_free_and_asks_prefect_nothing(monkeypatch):
    import prefect.concurrency.sync

    def no_call(*args, **kwargs):
        raise AssertionError("gpu_slot(False) asked Prefect for a concurrency slot")

    monkeypatch.setattr(prefect.concurrency.sync, "concurrency", no_call)
    entered = False
    with gpu_slot(False):
        entered = True
    assert entered


def test_the_gpu_slot_lets_one_model_stage_at_a_time_on_a_machine(prefect_server, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    monkeypatch.setenv(GPU_LIMIT_ENV, "gpu:test-machine")
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="gpu:test-machine", limit=1))
    spans: list[tuple[float, float]] = []

    def stage():
        with gpu_slot(True):
            start = time.monotonic()
            time.sleep(0.5)
            spans.append((start, time.monotonic()))

    threads = [threading.Thread(target=stage) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spans.sort()
    assert len(spans) == 3
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"two model stages held the GPU at once: {spans}"
