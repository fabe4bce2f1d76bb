"""One run at a time per dataset: the lease (tasks/infra/lease.py), on local files and on the S3 server."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from tasks.infra.lease import LEASE_PATH, DatasetBusyError, DatasetLease, read_lease
from tasks.infra.store import Store
from tasks.records.config import PreprocessConfig


@pytest.fixture(params=["local", "s3"])
def dataset(request, tmp_path) -> Store:
    if request.param == "local":
        return Store(str(tmp_path / "dataset"))
    bucket = request.getfixturevalue("s3")
    return Store(bucket.url("dataset"), bucket.storage_options)


def test_a_second_run_finds_the_dataset_held_and_is_told_by_whom(dataset):
    with DatasetLease(dataset, "20261201T000000Z-first"):
        with pytest.raises(DatasetBusyError, match=r"in use by run 20261201T000000Z-first on .* \(pid \d+\)"):
            DatasetLease(dataset, "20261201T000001Z-second").acquire()
    assert read_lease(dataset) is None, "the holder releases the lease when it ends"
    with DatasetLease(dataset, "20261201T000001Z-second") as second:
        assert read_lease(dataset).owner == second.owner


def test_a_second_run_may_wait_for_the_first_to_finish(dataset):
    first = DatasetLease(dataset, "first")
    first.acquire()
    threading.Timer(1.0, first.release).start()
    second = DatasetLease(dataset, "second", wait_s=60)
    second.acquire()
    assert second.waited and read_lease(dataset).run_id == "second"
    second.release()


def test_the_lease_of_a_run_that_died_expires_and_is_taken_over(dataset):
    dead = {"owner": "dead@host:1", "run_id": "dead", "host": "host", "pid": 1, "taken": 0.0,
            "expires": time.time() - 1}
    dataset.write_text(LEASE_PATH, json.dumps(dead))
    with DatasetLease(dataset, "alive"):
        assert read_lease(dataset).run_id == "alive"


def test_the_lease_of_a_killed_process_on_this_machine_is_taken_over_at_once(dataset):
    import socket
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    killed = {"owner": "killed", "run_id": "killed", "host": socket.gethostname(), "pid": int(gone.stdout),
              "taken": time.time(), "expires": time.time() + 300}
    dataset.write_text(LEASE_PATH, json.dumps(killed))
    with DatasetLease(dataset, "rerun"):
        assert read_lease(dataset).run_id == "rerun"


def test_a_held_lease_is_renewed_while_its_run_goes_on(tmp_path):
    dataset = Store(str(tmp_path))
    with DatasetLease(dataset, "long", ttl_s=2.0, renew_every_s=0.3):
        first = read_lease(dataset).expires
        time.sleep(1.0)
        assert read_lease(dataset).expires > first
        with pytest.raises(DatasetBusyError):
            DatasetLease(dataset, "other").acquire()


def test_of_two_runs_taking_a_free_lease_at_once_exactly_one_holds_it(tmp_path):
    dataset = Store(str(tmp_path))
    outcomes: dict[str, str] = {}
    start = threading.Barrier(2)

    def take(name: str) -> None:
        start.wait()
        try:
            DatasetLease(dataset, name).acquire()
            outcomes[name] = "held"
        except DatasetBusyError:
            outcomes[name] = "busy"

    threads = [threading.Thread(target=take, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes.values()) == ["busy", "held"], outcomes


@pytest.mark.slow
def test_a_run_with_work_does_not_touch_a_dataset_another_run_holds(samples_dir, tmp_path, prefect_server):
    from flows.preprocess import preprocess

    catalog = Store(str(tmp_path / "catalog"))
    catalog.write_bytes("persons/00034_00.jpg", (samples_dir / "image" / "00034_00.jpg").read_bytes())
    out = Store(str(tmp_path / "dataset"))
    in_flight = tmp_path / "dataset" / "test" / "image" / f".00121_00.jpg.{'a' * 32}.tmp"
    with DatasetLease(out, "20261201T000000Z-other"):
        in_flight.parent.mkdir(parents=True)
        in_flight.write_bytes(b"the other run is writing this")
        state = preprocess(PreprocessConfig(catalog=catalog.url, out=out.url), return_state=True)
    assert state.is_failed() and "in use by run 20261201T000000Z-other" in state.message, state.message
    assert in_flight.exists(), "the other run's file in flight was removed"
    assert not (tmp_path / "dataset" / "manifests").exists()


@pytest.mark.slow
def test_start_up_removes_only_temporary_files_older_than_its_lease(samples_dir, tmp_path, prefect_server):
    from flows.preprocess import preprocess

    catalog = Store(str(tmp_path / "catalog"))
    catalog.write_bytes("persons/00034_00.jpg", (samples_dir / "image" / "00034_00.jpg").read_bytes())
    leftover = tmp_path / "dataset" / "test" / "image" / f".00121_00.jpg.{'b' * 32}.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"a killed run left this")
    os.utime(leftover, (time.time() - 3600, time.time() - 3600))
    summary = preprocess(PreprocessConfig(catalog=catalog.url, out=str(tmp_path / "dataset")))
    assert summary["persons"]["ok"] == 1 and not leftover.exists()
    assert read_lease(Store(str(tmp_path / "dataset"))) is None
