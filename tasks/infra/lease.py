"""One run at a time per dataset: a lease object at the dataset root, with an owner and an expiry.

A run that has work to do takes the lease before it writes anything and renews it while it runs; a
second run finds it held and waits (up to `lease_wait_s`) or stops with a message naming the holder.
A lease whose holder died is taken over: at once when it was a process of this machine, else once
it expires (`LEASE_TTL_S` after its last renewal). Child runs of a fan-out share their parent's lease.

Every change of the lease is a conditional write (`Store.create_exclusive`, `replace_if`, `remove_if`),
so the storage, not timing, picks one winner. A free lease is taken by an exclusive create (locally a
hard link of a fully written temporary, which fails if the lease exists; on S3 a PUT with
`If-None-Match: *`); an abandoned one by a replace conditional on the tag of the abandoned lease the
taker read (locally under an `flock`; on S3 `If-Match: <ETag>`), so of two takers of the same lease
one wins and the other finds the winner's live lease. The holder renews and releases it the same way,
on the tag of its own last write, so a holder that lost its lease never overwrites or removes the
next holder's. On a store that cannot decide (`Store.conditional_writes` False: other fsspec
filesystems, an S3-compatible server without conditional requests) the taker writes, waits
`READ_BACK_DELAY_S` and reads the lease back: of two runs taking it at once, the one whose write
landed last holds it and the other backs off.

Temporary files (`Store.write_bytes`'s, locally) are removed only when no live run can own them:
`DatasetLease.remove_orphaned_temporaries`.
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
READ_BACK_DELAY_S = 0.2  # stores without conditional writes: for a concurrent taker's write to land
SWEEP_MARGIN_S = 2.0  # a gone holder's temporaries: this much older than the sweep's reference (mtime granularity)
LOST_RACE_PAUSE_S = 0.05  # before looking again at a lease another run just took


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
        return self.expires < time.time() or self.holder_gone()

    def holder_gone(self) -> bool:
        """Held by a process of this machine that no longer exists: provably writing nothing any more."""
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


def _parse(data: bytes) -> Lease | None:
    try:
        return Lease(**json.loads(data))
    except (ValueError, TypeError):  # a foreign file: nobody holds it
        return None


def _read(out: Store) -> tuple[Lease | None, str | None]:
    """The lease and its tag; (None, None) when there is none, (None, tag) when the file is not a lease."""
    try:
        data, tag = out.read_tagged(LEASE_PATH)
    except StorageNotFoundError:
        return None, None
    return _parse(data), tag


def read_lease(out: Store) -> Lease | None:
    return _read(out)[0]


class DatasetLease:
    """`with DatasetLease(out, run_id, wait_s):` holds the dataset for the block (renewed by a thread).

    Not entered, it still stands for its run: `remove_orphaned_temporaries` then removes only what no
    run can own while nobody holds the dataset.
    """

    def __init__(self, out: Store, run_id: str, wait_s: float = 0.0, ttl_s: float = LEASE_TTL_S,
                 renew_every_s: float = RENEW_EVERY_S):
        self.out, self.run_id, self.wait_s = out, run_id, wait_s
        self.ttl_s, self.renew_every_s = ttl_s, renew_every_s
        self.owner = f"{run_id}@{socket.gethostname()}:{os.getpid()}"
        self.taken: float | None = None
        self.waited = False
        self._tag: str | None = None  # of our last write of the lease
        self._displaced: Lease | None = None  # the abandoned lease we took over, if any
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _mine(self, taken: float) -> bytes:
        lease = Lease(self.owner, self.run_id, socket.gethostname(), os.getpid(), taken, time.time() + self.ttl_s)
        return json.dumps(asdict(lease), sort_keys=True).encode("utf-8")

    def _take(self, abandoned: Lease | None, over: str | None) -> bool:
        """Write our lease where there is none (`over` None) or over the abandoned one (`abandoned`, None
        when it is no lease at all) tagged `over`; whether we hold it now."""
        taken = time.time()
        data = self._mine(taken)
        if over is None:
            tag = self.out.create_exclusive(LEASE_PATH, data)
        else:
            tag = self.out.replace_if(LEASE_PATH, data, over)
        if tag is not None and not self.out.conditional_writes:  # nothing decided: the last write wins
            time.sleep(READ_BACK_DELAY_S)
            held, tag = _read(self.out)
            if held is None or held.owner != self.owner:
                tag = None
        if tag is None:
            return False
        self.taken, self._tag, self._displaced = taken, tag, abandoned
        return True

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_s
        while True:
            held, tag = _read(self.out)
            if held is not None and held.owner == self.owner:  # ours: a write whose answer was lost, say
                self.taken, self._tag = held.taken, tag
                return
            if tag is None or held is None or held.abandoned():
                if tag is not None:
                    log.warning("taking over the abandoned lease of %s",
                                held.describe() if held else f"{self.out.url_of(LEASE_PATH)} (not a lease)")
                if self._take(held, over=tag):
                    return
                time.sleep(LOST_RACE_PAUSE_S)
                continue  # another run took it first: look at its lease
            if time.monotonic() >= deadline:
                raise DatasetBusyError(
                    f"{self.out.url} is in use by {held.describe()}; it is released when that run ends "
                    f"(or {self.ttl_s:.0f} s after it stops renewing). Run again then, or give lease_wait_s "
                    "to wait for it")
            if not self.waited:
                log.info("waiting for %s to release %s", held.describe(), self.out.url)
            self.waited = True
            time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))

    def _still_mine(self) -> str | None:
        """The tag of the lease if it is still ours (our last write's answer may have been lost), else None."""
        held, tag = _read(self.out)
        return tag if held is not None and held.owner == self.owner else None

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_every_s):
            try:
                tag = self.out.replace_if(LEASE_PATH, self._mine(self.taken), self._tag)
                if tag is None:  # another run's lease now, ours with an answer that was lost, or none
                    held, current = _read(self.out)
                    if current is None:  # removed behind our back: ours again unless another run took it
                        tag = self.out.create_exclusive(LEASE_PATH, self._mine(self.taken))
                    elif held is not None and held.owner == self.owner:
                        tag = current
                if tag is None:
                    held = read_lease(self.out)
                    log.error("lost the lease on %s to %s", self.out.url, held.describe() if held else "nobody")
                    return
                self._tag = tag
            except Exception:  # noqa: BLE001 - a failed renewal is retried at the next beat
                log.warning("could not renew the lease on %s", self.out.url, exc_info=True)

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self._tag is not None and self.out.remove_if(LEASE_PATH, self._tag):
            return
        tag = self._still_mine()
        if tag is not None:
            self.out.remove_if(LEASE_PATH, tag)

    def remove_orphaned_temporaries(self) -> int:
        """Remove the temporary files of interrupted writes that no live run can own; returns how many.

        Only a run holding the lease writes the dataset, and only after taking it, so a temporary last
        modified before the reference time (holding the lease: when this run took it; holding nothing:
        now) is an earlier holder's. The earlier holder is the one whose lease this run took over (none
        if it was free), or, holding nothing, the one of the abandoned lease found (none if there is
        none; while another run holds a live lease nothing is removed: that run sweeps as it starts).
        - That holder's process, on this machine, no longer exists: it writes nothing any more, and
          what is older than the reference by `SWEEP_MARGIN_S` is removed.
        - Otherwise (a free lease, an expired one whose holder elsewhere may be stuck in a write):
          what is older than the reference by the TTL.
        The lease's own temporaries belong to runs taking it: only the TTL rule removes them (a local
        write whose temporary vanishes writes it again anyway). Object stores have no temporaries.
        """
        if not self.out.is_local:
            return 0
        if self.taken is not None:
            held = read_lease(self.out)
            if held is None or held.owner != self.owner:
                return 0  # lost it meanwhile: another run may be writing
            reference, previous = self.taken, self._displaced
        else:
            reference = time.time()  # read before the lease: a run taking it after that writes later
            previous = read_lease(self.out)
            if previous is not None and not previous.abandoned():
                return 0
        if previous is not None and previous.holder_gone():
            return self.out.remove_temporaries(modified_before=reference - SWEEP_MARGIN_S, spare=LEASE_PATH)
        return self.out.remove_temporaries(modified_before=reference - self.ttl_s)

    def __enter__(self) -> DatasetLease:
        self.acquire()
        self._renewer = threading.Thread(target=self._renew, name="vitonprep-lease", daemon=True)
        self._renewer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
