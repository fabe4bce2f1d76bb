"""One run at a time per dataset: the lease (tasks/infra/lease.py), on local files and on the S3 server."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tasks.infra.lease import (
    LEASE_PATH,
    LEASE_TTL_S,
    SWEEP_MARGIN_S,
    DatasetBusyError,
    DatasetLease,
    read_lease,
)
from tasks.infra.store import TEMPORARY_NAME, Store
from tasks.stages.registry import PreprocessConfig

HANG_GUARD_S = 60.0  # only so that a broken test fails instead of hanging; nothing is timed


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


def killed_local_lease() -> dict[str, Any]:
    """An unexpired lease of a process of this machine that no longer exists (a run killed just now)."""
    import socket
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return {"owner": "killed", "run_id": "killed", "host": socket.gethostname(), "pid": int(gone.stdout),
            "taken": time.time(), "expires": time.time() + 300}


def test_the_lease_of_a_killed_process_on_this_machine_is_taken_over_at_once(dataset):
    dataset.write_text(LEASE_PATH, json.dumps(killed_local_lease()))
    with DatasetLease(dataset, "rerun"):
        assert read_lease(dataset).run_id == "rerun"


class Stall:
    """Holds the thread named `thread` when it calls `owner.name` (and `when(arguments)` holds), the first
    time only, until `resume` is set; `reached` is set once it is held."""

    def __init__(self, monkeypatch, owner: Any, name: str, thread: str, when: Callable[..., bool] = lambda *a, **k: True):
        self.reached, self.resume = threading.Event(), threading.Event()
        original = getattr(owner, name)

        def stalled(*args, **kwargs):
            if threading.current_thread().name == thread and not self.reached.is_set() and when(*args, **kwargs):
                self.reached.set()
                assert self.resume.wait(HANG_GUARD_S), "the stalled run was never resumed"
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, stalled)


def stall_the_lease_commit(dataset: Store, monkeypatch, thread: str) -> Stall:
    """Stalls `thread` between writing its lease and committing it: locally at the hard link of its
    fully written temporary, on S3 before its conditional PUT reaches the server."""
    if dataset.is_local:
        return Stall(monkeypatch, os, "link", thread)
    return Stall(monkeypatch, Store, "call_s3", thread, when=lambda store, operation, path, method, **kw: method == "put_object")


def in_thread(name: str, call: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """`call()` in a thread named `name`; the dict gets its "result" or its "error"."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except BaseException as error:  # noqa: BLE001 - the test judges it
            outcome["error"] = error

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread, outcome


def temporaries(dataset: Store) -> list[Path]:
    """The temporary files below a local dataset (object stores have none)."""
    if not dataset.is_local:
        return []
    return sorted(path for path in Path(dataset.root).rglob("*") if TEMPORARY_NAME.fullmatch(path.name))


def backdate(path: Path, seconds: float) -> Path:
    """A temporary file at `path`, last modified `seconds` ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"partial")
    os.utime(path, (time.time() - seconds,) * 2)
    return path


def test_of_two_runs_starting_together_the_one_stalled_before_its_commit_is_refused_and_keeps_its_files(
    dataset, monkeypatch
):
    stall = stall_the_lease_commit(dataset, monkeypatch, thread="first-run")
    thread, first = in_thread("first-run", DatasetLease(dataset, "first").acquire)
    assert stall.reached.wait(HANG_GUARD_S), "the first run never reached the commit of its lease"
    in_flight = temporaries(dataset)
    assert in_flight or not dataset.is_local, "locally the stalled run's lease should be a temporary file by now"

    second = DatasetLease(dataset, "second")
    second.acquire()
    removed = second.remove_orphaned_temporaries()
    assert removed == 0 and temporaries(dataset) == in_flight, "the winner's sweep removed the stalled run's file"

    stall.resume.set()
    thread.join(HANG_GUARD_S)
    assert isinstance(first.get("error"), DatasetBusyError), f"the stalled run should be refused as busy: {first}"
    assert "in use by run second" in str(first["error"]), str(first["error"])
    assert read_lease(dataset).owner == second.owner, "the winner's lease was overwritten"
    assert temporaries(dataset) == [], "the refused run left its temporary file behind"
    second.release()


def test_a_taker_whose_temporary_was_swept_before_its_commit_is_still_refused_cleanly(tmp_path, monkeypatch):
    # Stalled for longer than the TTL, a taker's temporary is an orphan to the winner's sweep: it writes it again.
    dataset = Store(str(tmp_path))
    stall = stall_the_lease_commit(dataset, monkeypatch, thread="first-run")
    thread, first = in_thread("first-run", DatasetLease(dataset, "first").acquire)
    assert stall.reached.wait(HANG_GUARD_S), "the first run never reached the commit of its lease"
    with DatasetLease(dataset, "second") as second:
        for path in temporaries(dataset):
            os.utime(path, (second.taken - 2 * LEASE_TTL_S,) * 2)
        assert second.remove_orphaned_temporaries() == 1
        stall.resume.set()
        thread.join(HANG_GUARD_S)
    assert isinstance(first.get("error"), DatasetBusyError), f"expected the busy refusal, not {first}"


def test_of_two_runs_taking_over_the_same_abandoned_lease_exactly_one_holds_it(dataset, monkeypatch):
    dead = {"owner": "dead@host:1", "run_id": "dead", "host": "host", "pid": 1, "taken": 0.0,
            "expires": time.time() - 1}
    dataset.write_text(LEASE_PATH, json.dumps(dead))
    stall = Stall(monkeypatch, Store, "replace_if", thread="first-run")  # it has read the dead lease by then
    thread, first = in_thread("first-run", DatasetLease(dataset, "first").acquire)
    assert stall.reached.wait(HANG_GUARD_S), "the first run never came to take over the abandoned lease"

    second = DatasetLease(dataset, "second")
    second.acquire()
    stall.resume.set()
    thread.join(HANG_GUARD_S)
    assert isinstance(first.get("error"), DatasetBusyError), f"both runs took over the dead lease: {first}"
    assert "in use by run second" in str(first["error"]), str(first["error"])
    assert read_lease(dataset).owner == second.owner, "the first run overwrote the lease the second took over"
    second.release()
    assert read_lease(dataset) is None


def test_a_run_whose_lease_was_taken_over_does_not_remove_the_new_holders(dataset):
    lost = DatasetLease(dataset, "lost", ttl_s=-1.0)  # written already expired: anyone may take it over
    lost.acquire()
    with DatasetLease(dataset, "next") as holder:
        lost.release()
        assert read_lease(dataset).owner == holder.owner, "the run that lost its lease removed the next holder's"


def test_holding_nothing_a_run_removes_an_old_orphan_and_keeps_a_fresh_temporary(tmp_path):
    dataset = Store(str(tmp_path))
    orphan = backdate(tmp_path / "test" / "image" / f".a.jpg.{'a' * 32}.tmp", 2 * LEASE_TTL_S)
    fresh = backdate(tmp_path / "test" / "image" / f".b.jpg.{'b' * 32}.tmp", LEASE_TTL_S / 2)
    assert DatasetLease(dataset, "unchanged-rerun").remove_orphaned_temporaries() == 1
    assert not orphan.exists(), "an orphan older than the TTL stayed while nobody held the dataset"
    assert fresh.exists(), "a temporary younger than the TTL may belong to a run that has just taken the lease"


def test_holding_nothing_a_run_removes_no_temporary_while_another_run_holds_the_lease(tmp_path):
    dataset = Store(str(tmp_path))
    old = backdate(tmp_path / "test" / "image" / f".a.jpg.{'a' * 32}.tmp", 2 * LEASE_TTL_S)
    with DatasetLease(dataset, "holder"):
        assert DatasetLease(dataset, "unchanged-rerun").remove_orphaned_temporaries() == 0
    assert old.exists(), "a run without the lease removed a file while another run held the dataset"


def test_an_abandoned_lease_does_not_keep_old_orphans(tmp_path):
    dataset = Store(str(tmp_path))
    dead = {"owner": "dead@host:1", "run_id": "dead", "host": "host", "pid": 1, "taken": 0.0,
            "expires": time.time() - 1}
    dataset.write_text(LEASE_PATH, json.dumps(dead))
    orphan = backdate(tmp_path / "test" / "image" / f".a.jpg.{'a' * 32}.tmp", 2 * LEASE_TTL_S)
    assert DatasetLease(dataset, "unchanged-rerun").remove_orphaned_temporaries() == 1
    assert not orphan.exists(), "an expired lease kept an orphan older than the TTL"


def test_the_holder_removes_only_temporaries_older_than_its_lease_by_the_ttl(tmp_path):
    dataset = Store(str(tmp_path))
    folder = tmp_path / "test" / "image"
    with DatasetLease(dataset, "holder") as lease:
        orphan = backdate(folder / f".a.jpg.{'a' * 32}.tmp", time.time() - lease.taken + 2 * LEASE_TTL_S)
        recent = backdate(folder / f".b.jpg.{'b' * 32}.tmp", time.time() - lease.taken + LEASE_TTL_S / 2)
        assert lease.remove_orphaned_temporaries() == 1
    assert not orphan.exists(), "an orphan older than the lease by the TTL stayed"
    assert recent.exists(), "a temporary less than the TTL older than the lease may be a live run's, and was removed"


def test_taking_over_a_killed_local_runs_lease_the_holder_removes_its_temporaries_at_once(tmp_path):
    dataset = Store(str(tmp_path))
    dataset.write_text(LEASE_PATH, json.dumps(killed_local_lease()))
    partial = backdate(tmp_path / "test" / "image" / f".a.jpg.{'a' * 32}.tmp", 10 * SWEEP_MARGIN_S)
    with DatasetLease(dataset, "rerun") as lease:
        assert lease.remove_orphaned_temporaries() == 1
    assert not partial.exists(), "the rerun kept a partial file of the run it knows was killed"


def test_holding_nothing_a_run_removes_a_killed_local_runs_temporaries_at_once(tmp_path):
    dataset = Store(str(tmp_path))
    dataset.write_text(LEASE_PATH, json.dumps(killed_local_lease()))
    partial = backdate(tmp_path / "test" / "image" / f".a.jpg.{'a' * 32}.tmp", 10 * SWEEP_MARGIN_S)
    assert DatasetLease(dataset, "unchanged-rerun").remove_orphaned_temporaries() == 1
    assert not partial.exists(), "an unchanged rerun kept a partial file of the run it knows was killed"


def test_a_temporary_of_the_lease_itself_is_removed_only_once_older_than_the_ttl(tmp_path):
    # It belongs to a run taking the lease, which is none of the killed run's business.
    dataset = Store(str(tmp_path))
    dataset.write_text(LEASE_PATH, json.dumps(killed_local_lease()))
    taking = backdate(tmp_path / "_work" / f".lease.json.{'c' * 32}.tmp", 10 * SWEEP_MARGIN_S)
    assert DatasetLease(dataset, "unchanged-rerun").remove_orphaned_temporaries() == 0
    assert taking.exists(), "a run taking the lease lost its temporary"


def test_a_held_lease_is_renewed_while_its_run_goes_on(tmp_path):
    dataset = Store(str(tmp_path))
    with DatasetLease(dataset, "long", ttl_s=2.0, renew_every_s=0.3):
        first = read_lease(dataset).expires
        time.sleep(1.0)
        assert read_lease(dataset).expires > first
        with pytest.raises(DatasetBusyError):
            DatasetLease(dataset, "other").acquire()


def test_a_holder_whose_lease_was_removed_behind_its_back_writes_it_again_at_its_next_renewal(dataset):
    with DatasetLease(dataset, "long", renew_every_s=0.1) as holder:
        dataset.remove(LEASE_PATH)
        hang_guard = time.monotonic() + HANG_GUARD_S
        while read_lease(dataset) is None and time.monotonic() < hang_guard:
            time.sleep(0.05)  # until the renewer's next beat
        lease = read_lease(dataset)
        assert lease is not None and lease.owner == holder.owner, f"the holder did not write its lease again: {lease}"


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
def test_start_up_removes_only_temporary_files_older_than_its_lease_by_the_ttl(samples_dir, tmp_path, prefect_server):
    from flows.preprocess import preprocess

    catalog = Store(str(tmp_path / "catalog"))
    catalog.write_bytes("persons/00034_00.jpg", (samples_dir / "image" / "00034_00.jpg").read_bytes())
    folder = tmp_path / "dataset" / "test" / "image"
    leftover = backdate(folder / f".00121_00.jpg.{'b' * 32}.tmp", 3600)  # a killed run left this
    recent = backdate(folder / f".00122_00.jpg.{'c' * 32}.tmp", LEASE_TTL_S / 2)  # a live run's, for all we know
    summary = preprocess(PreprocessConfig(catalog=catalog.url, out=str(tmp_path / "dataset")))
    assert summary["persons"]["ok"] == 1 and not leftover.exists()
    assert recent.exists(), "a temporary younger than the TTL was removed"
    assert read_lease(Store(str(tmp_path / "dataset"))) is None


@pytest.mark.slow
def test_an_unchanged_rerun_removes_old_orphans_and_takes_no_lease(samples_dir, tmp_path, prefect_server):
    from flows.preprocess import preprocess

    catalog = Store(str(tmp_path / "catalog"))
    catalog.write_bytes("persons/00034_00.jpg", (samples_dir / "image" / "00034_00.jpg").read_bytes())
    config = PreprocessConfig(catalog=catalog.url, out=str(tmp_path / "dataset"))
    preprocess(config)
    leftover = backdate(tmp_path / "dataset" / "test" / "image" / f".00121_00.jpg.{'b' * 32}.tmp", 3600)
    summary = preprocess(config)
    assert summary["persons"]["ok"] == 0 and not leftover.exists(), (summary["persons"], leftover.exists())
    assert not (tmp_path / "dataset" / LEASE_PATH).exists(), "a run with nothing to do took the lease"


@pytest.mark.slow
def test_two_cli_runs_started_together_on_one_dataset_end_clean_and_leave_it_whole(samples_dir, tmp_path, prefect_server):
    """Two nightly jobs started at the same moment: each either does the work or is refused with the
    holder's name (never a storage error), and the dataset they leave validates with no partial file."""
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    catalog = tmp_path / "catalog"
    for folder in ("image", "cloth"):  # enough work (16 of each) for the two runs to overlap
        (catalog / folder).mkdir(parents=True)
        for copy in range(4):
            for photo in sorted((samples_dir / folder).glob("*.jpg")):
                (catalog / folder / f"{copy}{photo.name}").write_bytes(photo.read_bytes())
    out = tmp_path / "dataset"
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "YOLO_OFFLINE": "1", "PREFECT_API_URL": PREFECT_API_URL.value()}
    command = [sys.executable, "-m", "flows.cli", "preprocess", "--catalog", str(catalog), "--out", str(out),
               "--no-progress", "--workers", "0"]
    runs = [subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [(run.wait(timeout=900), *run.communicate()) for run in runs]
    for code, _, stderr in results:
        assert "StorageNotFoundError" not in stderr and "does not exist" not in stderr, stderr[-3000:]
        assert code == 0 or "in use by run" in stderr, f"exit {code}:\n{stderr[-3000:]}"
    assert any(code == 0 for code, _, _ in results), "neither run did the work"
    leftovers = [path.name for path in out.rglob("*") if TEMPORARY_NAME.fullmatch(path.name)]
    assert not leftovers, f"partial files left: {leftovers}"
    assert not (out / LEASE_PATH).exists(), "the lease outlived both runs"
    checked = subprocess.run([sys.executable, "-m", "flows.cli", "validate", str(out), "--target", "vitonhd",
                              "--no-progress"],
                             cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
