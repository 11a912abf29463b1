"""One executor per run: a lease object in the store (``{ns}/{run}/lease.json``).

Two ``therapy-rlhf run`` commands on one run, or a local runner and the
operator, would each run PPO for the same round and read policies the other
is still writing. So an executor holds the run's lease while it acts:

* **Taking it** is a conditional create (``Store.create_bytes``: ``os.link``
  locally, ``If-None-Match: *`` on S3): of two executors starting at once,
  exactly one wins.
* **Keeping it**: the holder renews the expiry (``LeaseKeeper``, a thread)
  by a *conditional replace*: the write succeeds only if the object is still
  the version this holder wrote (S3: ``If-Match`` with the ETag; locally: the
  file's inode and mtime compared and replaced under ``flock`` on the run's
  folder). A holder whose lease was taken over learns it at its next renewal.
* **Refusing**: a lease held by someone else who is alive is refused with one
  line naming the holder (kind, host, pid, since when) and how to take over
  safely.
* **Taking over** a stale lease (its holder's pid is gone on this host, it
  expired, or it was released) is the same conditional replace, and is said.
* **Releasing** marks it released (a replace, never a delete), so the next
  executor takes it over at once.
* **Fencing** (``check_holder``): a local runner starts its jobs with its
  holder id (``--lease-holder``), and a job's store writes are refused once
  the lease names another holder: a job orphaned by a killed runner cannot
  write over what the runner that took the run over is producing.

The operator holds the lease as ``operator:NAMESPACE/NAME`` and renews it at
its reconciles; it refuses a run a live local runner holds with a condition
and a Warning Event (``phases.R_HELD_BY_LOCAL_RUNNER``).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.store.backends import AlreadyExists, LocalStore, NotFound, S3Store, Store, StoreError, dump_json, parse_json

KIND_LOCAL = "local-runner"
KIND_OPERATOR = "operator"
# A local runner renews every third of this; a holder that stops renewing (its host died)
# is taken over after it. The pid check on the same host does not wait for it.
LOCAL_LEASE_SECONDS = 60.0
# The operator renews at its reconciles (every few seconds); a local runner may take over
# a run the operator has not touched for this long (the operator is gone, the run deleted).
OPERATOR_LEASE_SECONDS = 600.0
LEASE_LIMIT_BYTES = 64 * 1024


class LeaseHeld(StoreError):
    """Someone else holds the run's lease (the message names them and how to take over)."""


class LeaseLost(StoreError):
    """The lease this executor held was taken over by another (a renewal found it changed)."""


class Fenced(LeaseLost):
    """A job's write refused: the run's lease is no longer held by the executor that started the job."""


@dataclass(frozen=True)
class Lease:
    holder: str  # "local-runner:HOST:PID:RANDOM" or "operator:NAMESPACE/NAME"
    kind: str
    host: str
    pid: int
    since: float  # when this holder took the lease (seconds since the epoch)
    expires: float
    proc_start: str = ""  # the pid's start time on its host (/proc): a reused pid is not the holder
    released: bool = False

    def describe(self) -> str:
        return f"{self.kind} pid {self.pid} on {self.host}, since {_when(self.since)}"


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _proc_start(pid: int) -> str:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot); '' where there is no /proc."""
    try:
        return open(f"/proc/{pid}/stat", encoding="ascii").read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive_here(lease: Lease) -> bool:
    """Whether a lease's holder process runs on this host (pid present and not a reused pid)."""
    try:
        os.kill(lease.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: alive
    return not lease.proc_start or lease.proc_start == _proc_start(lease.pid)


def why_stale(lease: Lease, now: float) -> str:
    """'' while the holder may still be working; otherwise why its lease may be taken over."""
    if lease.released:
        return "released"
    if now >= lease.expires:
        return f"expired at {_when(lease.expires)}"
    if lease.kind == KIND_LOCAL and lease.host == socket.gethostname() and not _alive_here(lease):
        return f"pid {lease.pid} is no longer running on {lease.host}"
    return ""


def refusal(paths: RunPaths, lease: Lease) -> str:
    """The one line a refused executor prints: who holds the run, and how to take over safely."""
    run = f"{paths.namespace}/{paths.run}"
    if lease.kind == KIND_OPERATOR:
        return (
            f"run {run} is managed by the operator ({lease.holder} on {lease.host}, since {_when(lease.since)}): "
            f"follow it with `kubectl describe trr {paths.run} -n {paths.namespace}`; to run it locally, delete "
            f"the TherapyRLHFRun and run again after its lease expires at {_when(lease.expires)}"
        )
    return (
        f"run {run} is held by another runner ({lease.describe()}; lease expires {_when(lease.expires)} unless "
        f"renewed): stop that runner (Ctrl-C in its terminal, or `kill {lease.pid}` on {lease.host}) and run "
        "again; a runner that is gone is taken over at once on its host, elsewhere when its lease expires"
    )


# ---------------------------------------------------------------- versions


def _local_version(path) -> str:
    st = os.stat(path)
    return f"{st.st_ino}-{st.st_mtime_ns}"


def read_versioned(store: Store, key: str) -> tuple[bytes, str]:
    """An object's bytes and a version token that changes with every write (NotFound if none)."""
    if isinstance(store, S3Store):
        def get():
            resp = store.client.get_object(Bucket=store.bucket, Key=store._key(key))
            return resp["Body"].read(LEASE_LIMIT_BYTES + 1), resp["ETag"]

        return store._call("reading", key, get)
    if isinstance(store, LocalStore):
        path = store._path(key)
        try:
            with open(path, "rb") as fh:  # version and bytes from the same open file
                return fh.read(LEASE_LIMIT_BYTES + 1), f"{os.fstat(fh.fileno()).st_ino}-{os.fstat(fh.fileno()).st_mtime_ns}"
        except FileNotFoundError:
            raise NotFound(f"{store.describe(key)} does not exist") from None
    raise StoreError(f"{store.uri}: this store cannot hold a lease")


def create_versioned(store: Store, key: str, data: bytes) -> str:
    """Create an object that must not exist (AlreadyExists otherwise); returns its version."""
    if isinstance(store, S3Store):
        resp = store._call(
            "creating", key, store.client.put_object, Bucket=store.bucket, Key=store._key(key), Body=data, IfNoneMatch="*"
        )
        return resp["ETag"]
    store.create_bytes(key, data)
    return _local_version(store._path(key))


def replace_versioned(store: Store, key: str, data: bytes, version: str) -> str:
    """Replace an object only if it is still at ``version``; LeaseLost if anyone wrote it since."""
    if isinstance(store, S3Store):
        try:
            resp = store._call(
                "replacing", key, store.client.put_object, Bucket=store.bucket, Key=store._key(key), Body=data, IfMatch=version
            )
        except (AlreadyExists, NotFound):  # 412 Precondition Failed (or the object is gone)
            raise LeaseLost(f"{store.describe(key)} changed since it was read") from None
        return resp["ETag"]
    path = store._path(key)
    # Every replacer locks the run's folder, compares and renames while holding it:
    # a compare-and-swap on the file's identity (each write is a new inode).
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if _local_version(path) != version:
                raise LeaseLost(f"{store.describe(key)} changed since it was read")
        except FileNotFoundError:
            raise LeaseLost(f"{store.describe(key)} is gone") from None
        store.write_bytes(key, data)
        return _local_version(path)
    finally:
        os.close(fd)  # closing releases the lock


# ---------------------------------------------------------------- the lease


def _parse(data: bytes, source: str) -> Lease:
    doc = parse_json(data, source)
    try:
        return Lease(**{k: doc[k] for k in Lease.__dataclass_fields__ if k in doc})
    except (TypeError, KeyError) as err:
        raise StoreError(f"{source} is not a lease: {err}") from None


@dataclass
class Holding:
    """A lease this executor holds: what it wrote and the version to replace."""

    store: Store
    key: str
    lease: Lease
    version: str
    took_over: str = ""  # why an earlier holder's lease was taken over ('' for a fresh one)

    def renew(self, seconds: float) -> None:
        lease = replace(self.lease, expires=time.time() + seconds)
        self.version = replace_versioned(self.store, self.key, dump_json(asdict(lease)), self.version)
        self.lease = lease

    def release(self) -> None:
        """Mark the lease released (the next executor takes it at once); quiet if it was taken over."""
        lease = replace(self.lease, released=True, expires=time.time())
        try:
            self.version = replace_versioned(self.store, self.key, dump_json(asdict(lease)), self.version)
        except StoreError:
            pass


def acquire(store: Store, paths: RunPaths, holder: str, kind: str, seconds: float, now: float | None = None) -> Holding:
    """Take the run's lease, renew it if this holder has it, or take over a stale one; LeaseHeld otherwise."""
    now = time.time() if now is None else now
    key = paths.lease()
    mine = Lease(holder, kind, socket.gethostname(), os.getpid(), now, now + seconds, _proc_start(os.getpid()))
    try:
        return Holding(store, key, mine, create_versioned(store, key, dump_json(asdict(mine))))
    except AlreadyExists:
        pass
    data, version = read_versioned(store, key)
    current = _parse(data, store.describe(key))
    if current.holder == holder:  # this holder again (the operator, reconcile after reconcile)
        mine = replace(mine, since=current.since)
        stale = ""
    else:
        stale = why_stale(current, now)
        if not stale:
            raise LeaseHeld(refusal(paths, current))
    try:
        version = replace_versioned(store, key, dump_json(asdict(mine)), version)
    except LeaseLost:  # another executor took it between the read and the replace
        data, _ = read_versioned(store, key)
        raise LeaseHeld(refusal(paths, _parse(data, store.describe(key)))) from None
    took_over = f"{current.describe()}: {stale}" if stale and not current.released else ""
    return Holding(store, key, mine, version, took_over)


def check_holder(store: Store, paths: RunPaths, holder: str) -> None:
    """Fenced unless the run's lease is held by ``holder`` (a job checks before it writes to the store)."""
    key = paths.lease()
    try:
        current = _parse(read_versioned(store, key)[0], store.describe(key))
    except NotFound:
        raise Fenced(f"{store.describe(key)} is gone: the runner that started this job no longer holds the run; "
                     "refusing to write") from None
    if current.holder != holder:
        raise Fenced(f"the run's lease is now held by {current.holder} ({current.describe()}), not by the runner "
                     "that started this job: refusing to write (an orphaned job must not overwrite the new runner's work)")


def local_holder() -> str:
    return f"{KIND_LOCAL}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def operator_holder(namespace: str, name: str) -> str:
    return f"{KIND_OPERATOR}:{namespace}/{name}"


class LeaseKeeper(threading.Thread):
    """Renews a holding every third of its length until stopped; ``lost`` says why if it was taken over."""

    def __init__(self, holding: Holding, seconds: float = LOCAL_LEASE_SECONDS):
        super().__init__(name="run-lease", daemon=True)
        self.holding = holding
        self.seconds = seconds
        self.lost = ""
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.seconds / 3):
            try:
                self.holding.renew(self.seconds)
            except LeaseLost:
                self.lost = "another executor took over this run's lease; stopping"
                return
            except StoreError:
                continue  # the store is unreachable for now: try again (the expiry leaves room for two misses)

    def stop(self, release: bool = True) -> None:
        self._halt.set()
        if self.is_alive():
            self.join()
        if release and not self.lost:
            self.holding.release()
