"""The job side of ``therapy_rlhf.store.integrity``: inputs checked against the executor's digests,
outputs reported to it.

``JobStore`` wraps the job's store. Every input the job kind reads
(``integrity.job_inputs``) is protected: the first read of it (or of any
object in a protected checkpoint folder) fetches it whole, compares its
digest with the one the executor passed (``--expect``) and then serves the
verified bytes, so what is checked is exactly what is used. A mismatch, or a
stored input the executor never recorded, is a ``JobError`` naming the object:
one ``error:`` line, nothing written. Every write is hashed on its way out;
``outputs()`` turns them into the digests the executor records.

Without ``--expect`` (a job run by hand) nothing is checked, as before.
No torch here: the stand-in jobs of the executor tests use it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from therapy_rlhf.store import integrity, lease
from therapy_rlhf.jobs.common import JobError
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.store.backends import NotFound, Store


def verify_run_config(data: bytes, source: str, expected: Mapping[str, str]) -> None:
    """The run config must be the one the executor wrote (verified mode only)."""
    if not expected:
        return
    want = expected.get(integrity.RUN_CONFIG)
    if want is None:
        raise JobError(f"--expect {integrity.RUN_CONFIG}=SHA256 is required with --expect (the run config {source})")
    got = integrity.sha256(data)
    if got != want:
        raise JobError(
            f"run config {source} is not the frozen spec the executor wrote (sha256 {got[:12]}..., "
            f"expected {want[:12]}...): refusing to run with an edited run.json"
        )


class JobStore(Store):
    """A store that verifies protected inputs and records the digests of what is written."""

    def __init__(self, inner: Store, paths: RunPaths, protected: Mapping[str, str | None] | None,
                 lease_holder: str | None = None):
        self.inner = inner
        # The executor's lease holder id (--lease-holder): every write first checks the run is still its.
        self.lease_holder = lease_holder
        self.uri = inner.uri
        self.paths = paths
        # store key (a folder ends in '/') -> expected digest (None: the executor recorded none)
        self.protected = (
            {integrity.absolute(paths, name): digest for name, digest in protected.items()} if protected is not None else {}
        )
        self.verify = protected is not None
        self._objects: dict[str, bytes] = {}  # verified single objects
        self._trees: dict[str, dict[str, bytes]] = {}  # verified folder -> {key: bytes}
        self.written: dict[str, str] = {}  # key -> sha256 of the bytes this job wrote

    # -- verification -------------------------------------------------------
    def _protection(self, key: str) -> str | None:
        if key in self.protected:
            return key
        for name in self.protected:
            if name.endswith("/") and key.startswith(name):
                return name
        return None

    def _refuse(self, name: str, why: str) -> JobError:
        what = integrity.relative(self.paths, name)
        return JobError(f"{self.inner.describe(name)} {why}: refusing to use {what}")

    def _check(self, name: str, digest: str) -> None:
        want = self.protected[name]
        if want is None:
            raise self._refuse(name, "is in the store but the executor never recorded its digest (written by someone else?)")
        if digest != want:
            raise self._refuse(
                name, f"does not match the digest the executor recorded (sha256 {digest[:12]}..., expected {want[:12]}...)"
            )

    def _tree(self, name: str) -> dict[str, bytes]:
        if name not in self._trees:
            keys = self.inner.list(name)
            objects = {k: self.inner.read_bytes(k) for k in keys}
            if objects:
                self._check(name, integrity.tree_digest({k[len(name):]: integrity.sha256(v) for k, v in objects.items()}))
            self._trees[name] = objects
        return self._trees[name]

    def _object(self, key: str) -> bytes:
        if key not in self._objects:
            data = self.inner.read_bytes(key)  # NotFound: an absent input is the job's to report
            self._check(key, integrity.sha256(data))
            self._objects[key] = data
        return self._objects[key]

    # -- Store --------------------------------------------------------------
    def read_bytes(self, key: str) -> bytes:
        name = self._protection(key) if self.verify else None
        if name is None:
            return self.inner.read_bytes(key)
        if name.endswith("/"):
            tree = self._tree(name)
            if key not in tree:
                raise NotFound(f"{self.describe(key)} does not exist")
            return tree[key]
        return self._object(key)

    def read_limited(self, key: str, limit: int) -> bytes:
        if self.verify and self._protection(key) is not None:
            return super().read_limited(key, limit)
        return self.inner.read_limited(key, limit)

    def exists(self, key: str) -> bool:
        name = self._protection(key) if self.verify else None
        if name is None:
            return self.inner.exists(key)
        try:
            self.read_bytes(key)
        except NotFound:
            return False
        return True

    def list(self, prefix: str) -> list[str]:
        if self.verify:
            name = self._protection(prefix if prefix.endswith("/") else prefix + "/")
            if name is not None and name.endswith("/"):
                return sorted(k for k in self._tree(name) if k.startswith(prefix))
        return self.inner.list(prefix)

    def modified_at(self, key: str) -> float:
        return self.inner.modified_at(key)

    def _fence(self) -> None:
        if self.lease_holder:
            lease.check_holder(self.inner, self.paths, self.lease_holder)

    def write_bytes(self, key: str, data: bytes) -> None:
        self._fence()
        self.inner.write_bytes(key, data)
        self.written[key] = integrity.sha256(data)

    def create_bytes(self, key: str, data: bytes) -> None:
        self._fence()
        self.inner.create_bytes(key, data)
        self.written[key] = integrity.sha256(data)

    def describe(self, key: str) -> str:
        return self.inner.describe(key)

    # -- outputs ------------------------------------------------------------
    def outputs(self, kind: str, round_no: int) -> dict[str, str]:
        return integrity.output_digests(kind, round_no, self.paths, self.written)


def protected_inputs(kind: str, round_no: int, spec: Any, paths: RunPaths, expected: Mapping[str, str]) -> dict[str, str | None] | None:
    """What a job must verify: every input it reads, with the executor's digest (None where it has none).

    None (verify nothing) when no ``--expect`` was given at all.
    """
    if not expected:
        return None
    return {name: expected.get(name) for name in integrity.job_inputs(kind, round_no, spec, paths)}


def report_outputs(store: JobStore, kind: str, round_no: int, outputs_file: str | None, log) -> dict[str, str]:
    """Print the outputs line and write the outputs file (the executor's channel)."""
    digests = store.outputs(kind, round_no)
    text = integrity.format_outputs(digests)
    # The file first: a job that outlived its runner may have no one reading its stdout any more.
    if outputs_file:
        Path(outputs_file).write_text(text + "\n", encoding="utf-8")
    log(integrity.OUTPUTS_PREFIX + text)
    return digests
