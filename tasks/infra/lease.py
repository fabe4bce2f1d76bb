"""One run at a time per dataset: a lease object at the dataset root, with an owner and an expiry.

A run that has work to do takes the lease before it writes anything and renews it while it runs; a
second run finds it held and waits (up to `lease_wait_s`) or stops with a message naming the holder.
A lease whose holder died is taken over: at once when it was a process of this machine, else once
it expires (`LEASE_TTL_S` after its last renewal). The taker writes its lease
and reads it back: of two runs taking a free lease at once, the one whose write lands last holds it,
and the other sees that and backs off. Child runs of a fan-out share their parent's lease.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import socket
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from tasks.infra.errors import StorageNotFoundError
from tasks.infra.store import Store
from vitonhd_models import contract

log = logging.getLogger("vitonprep.lease")

LEASE_PATH = posixpath.join(contract.WORK_DIR, "lease.json")
LEASE_TTL_S = 300.0  # a holder that stops renewing (killed, partitioned) frees the dataset after this
RENEW_EVERY_S = 60.0
READ_BACK_DELAY_S = 0.2  # between writing a lease and reading it back, for a concurrent taker's write to land


class DatasetBusyError(RuntimeError):
    """Another run holds the dataset's lease."""


@dataclass(frozen=True)
class Lease:
    owner: str  # unique per run
    run_id: str
    host: str
    pid: int
    taken: float  # epoch seconds
    expires: float

    def abandoned(self) -> bool:
        """Expired, or held by a process of this machine that no longer exists (killed, say)."""
        if self.expires < time.time():
            return True
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False

    def describe(self) -> str:
        until = datetime.fromtimestamp(self.expires, UTC).isoformat(timespec="seconds")
        return f"run {self.run_id} on {self.host} (pid {self.pid}), lease until {until}"


def read_lease(out: Store) -> Lease | None:
    try:
        return Lease(**json.loads(out.read_text(LEASE_PATH)))
    except StorageNotFoundError:
        return None
    except (ValueError, TypeError):  # a torn or foreign file: nobody holds it
        return None


class DatasetLease:
    """`with DatasetLease(out, run_id, wait_s):` holds the dataset for the block (renewed by a thread)."""

    def __init__(self, out: Store, run_id: str, wait_s: float = 0.0, ttl_s: float = LEASE_TTL_S,
                 renew_every_s: float = RENEW_EVERY_S):
        self.out, self.run_id, self.wait_s = out, run_id, wait_s
        self.ttl_s, self.renew_every_s = ttl_s, renew_every_s
        self.owner = f"{run_id}@{socket.gethostname()}:{os.getpid()}"
        self.taken: float | None = None
        self.waited = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _mine(self, taken: float) -> Lease:
        return Lease(self.owner, self.run_id, socket.gethostname(), os.getpid(), taken, time.time() + self.ttl_s)

    def _write(self, lease: Lease) -> None:
        self.out.write_text(LEASE_PATH, json.dumps(asdict(lease), sort_keys=True))

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_s
        while True:
            held = read_lease(self.out)
            if held is None or held.owner == self.owner or held.abandoned():
                if held is not None and held.owner != self.owner:
                    log.warning("taking over the abandoned lease of %s", held.describe())
                taken = time.time()
                self._write(self._mine(taken))
                time.sleep(READ_BACK_DELAY_S)
                held = read_lease(self.out)
                if held is not None and held.owner == self.owner:
                    self.taken = taken
                    return
            if time.monotonic() >= deadline:
                raise DatasetBusyError(
                    f"{self.out.url} is in use by {held.describe()}; it is released when that run ends "
                    f"(or {self.ttl_s:.0f} s after it stops renewing). Run again then, or give lease_wait_s "
                    "to wait for it")
            if not self.waited:
                log.info("waiting for %s to release %s", held.describe(), self.out.url)
            self.waited = True
            time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_every_s):
            try:
                held = read_lease(self.out)
                if held is not None and held.owner != self.owner:
                    log.error("lost the lease on %s to %s", self.out.url, held.describe())
                    return
                self._write(self._mine(self.taken))
            except Exception:  # noqa: BLE001 - a failed renewal is retried at the next beat
                log.warning("could not renew the lease on %s", self.out.url, exc_info=True)

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        held = read_lease(self.out)
        if held is not None and held.owner == self.owner:
            self.out.remove(LEASE_PATH)

    def __enter__(self) -> DatasetLease:
        self.acquire()
        self._renewer = threading.Thread(target=self._renew, name="vitonprep-lease", daemon=True)
        self._renewer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
