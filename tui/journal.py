"""The rater's local journal: nothing typed is lost, whatever happens to the store or the session.

One append-only file per rater and store, in the user's data directory
(``$THERAPY_RLHF_DATA_DIR``, else ``$XDG_DATA_HOME/therapy-rlhf``, else
``~/.local/share/therapy-rlhf``), under ``journal/``. Every entry is one
JSON line written with a single ``write`` on an ``O_APPEND`` descriptor
before the call returns (so it survives a dropped SSH session, SIGHUP, or a
kill of the app at once), and ``fsync``-ed by a background thread within
milliseconds, and on every way out of the app (so it survives a crash of the
machine too; the key press never waits for the disk):

* ``queued``: a rating the rater submitted (the full record, with the
  ``submission_id`` chosen once for it);
* ``stored`` / ``rejected``: the writer's outcome for a submission;
* ``draft``: scores typed but not submitted for one response (``form``
  null when the draft was discarded); a later ``queued`` of the same
  response supersedes it.

On start the app *replays* what is outstanding (``queued`` with no outcome):
each is written with the store's conditional create after checking, on a
fresh read of the round, whether it is already stored under its
``submission_id`` (``RoundState.find_submission``), so a write whose answer was
lost is never stored twice. Only one app per rater and store replays at a
time (an ``flock`` held for the app's life); a second window still
journals its own entries. Replaying compacts the file: the outstanding
entries and live drafts are written to a new file that replaces the old one.
A torn last line (a kill mid-write) is skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from therapy_rlhf.contracts.records import Rating, RecordError, parse_record

DATA_DIR_ENV = "THERAPY_RLHF_DATA_DIR"
FORMAT = 1


def data_dir() -> Path:
    """Where the app keeps the rater's local data."""
    explicit = os.environ.get(DATA_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "therapy-rlhf"


def journal_path(store_uri: str, rater: str, root: Path | None = None) -> Path:
    """One file per rater and store (the store URI hashed into the name)."""
    digest = hashlib.sha256(store_uri.encode("utf-8")).hexdigest()[:16]
    return (root or data_dir()) / "journal" / f"{rater}@{digest}.jsonl"


@dataclass(frozen=True)
class QueuedRating:
    """A submitted rating the journal has no outcome for yet."""

    run: str  # namespace/name
    round: int
    rating: Rating

    @property
    def submission_id(self) -> str:
        return self.rating.submission_id or ""


@dataclass
class JournalState:
    """What reading the journal found."""

    outstanding: list[QueuedRating]
    drafts: dict[tuple[str, int, str], dict[str, Any]]  # (run, round, response id) -> form
    skipped_lines: int = 0


class Journal:
    def __init__(self, path: Path, store_uri: str, rater: str):
        self.path = path
        self.store_uri = store_uri
        self.rater = rater
        self._lock = threading.Lock()
        self._owner_fd: int | None = None
        self._fd: int | None = None  # the journal, open for appending (reopened if compaction replaced it)
        self._lock_fd: int | None = None  # the cross-process write lock
        self._unsynced = threading.Condition(self._lock)
        self._dirty = False
        self._syncer: threading.Thread | None = None

    @classmethod
    def open(cls, store_uri: str, rater: str, root: Path | None = None) -> "Journal":
        return cls(journal_path(store_uri, rater, root), store_uri, rater)

    # ----------------------------------------------------------- writing
    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[int]:
        """The journal's descriptor, with every process's appends and compaction serialised."""
        with self._lock:
            if self._lock_fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._lock_fd = os.open(str(self.path) + ".wlock", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield self._current_fd()
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _current_fd(self) -> int:
        """Our descriptor of the file now at ``path`` (another process's compaction may have replaced it)."""
        if self._fd is not None:
            try:
                same = os.fstat(self._fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return self._fd
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        return self._fd

    @staticmethod
    def _line(entry: dict[str, Any]) -> bytes:
        doc = {"v": FORMAT, "at": round(time.time(), 3), **entry}
        return (json.dumps(doc, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")

    def _append(self, entry: dict[str, Any]) -> None:
        """One whole line, written before this returns: it survives the app being killed at once.

        The fsync that makes it survive a machine crash too follows within
        milliseconds in a background thread (the key press never waits for the
        disk); ``sync()`` forces it, and the app calls it on every way out.
        """
        data = self._line(entry)
        with self._exclusive() as fd:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # after a torn line (a kill mid-write), start a fresh one
            os.write(fd, data)
            self._dirty = True
            self._unsynced.notify()
            if self._syncer is None:
                self._syncer = threading.Thread(target=self._sync_loop, name="journal-fsync", daemon=True)
                self._syncer.start()

    def _sync_loop(self) -> None:
        while True:
            with self._lock:
                while not self._dirty:
                    self._unsynced.wait()
                self._dirty = False
                fd = self._fd
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.fsync(fd)

    def sync(self) -> None:
        """Everything written so far is on disk when this returns."""
        with self._lock:
            fd, self._dirty = self._fd, False
        if fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(fd)

    def queued(self, run: str, round_no: int, rating: Rating) -> None:
        if not rating.submission_id:
            raise ValueError("a journaled rating needs a submission_id")
        self._append({"kind": "queued", "run": run, "round": round_no, "rating": rating.model_dump(mode="json")})

    def stored(self, submission_id: str) -> None:
        self._append({"kind": "stored", "submission_id": submission_id})

    def rejected(self, submission_id: str, reason: str) -> None:
        self._append({"kind": "rejected", "submission_id": submission_id, "reason": reason})

    def draft(self, run: str, round_no: int, response_id: str, form: dict[str, Any] | None) -> None:
        self._append({"kind": "draft", "run": run, "round": round_no, "response_id": response_id, "form": form})

    # ----------------------------------------------------------- reading
    def _lines(self) -> Iterator[dict[str, Any] | None]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        for line in raw.split(b"\n"):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                yield None  # torn or corrupt line
                continue
            yield entry if isinstance(entry, dict) else None

    def read(self) -> JournalState:
        queued: dict[str, QueuedRating] = {}
        drafts: dict[tuple[str, int, str], dict[str, Any]] = {}
        skipped = 0
        for entry in self._lines():
            kind = entry.get("kind") if entry else None
            try:
                if kind == "queued":
                    rating = parse_record(Rating, entry["rating"], str(self.path))
                    item = QueuedRating(str(entry["run"]), int(entry["round"]), rating)
                    queued[item.submission_id] = item
                    drafts.pop((item.run, item.round, rating.response_id), None)
                elif kind in ("stored", "rejected"):
                    queued.pop(str(entry["submission_id"]), None)
                elif kind == "draft":
                    key = (str(entry["run"]), int(entry["round"]), str(entry["response_id"]))
                    if entry.get("form"):
                        drafts[key] = dict(entry["form"])
                    else:
                        drafts.pop(key, None)
                else:
                    skipped += 1
            except (KeyError, TypeError, ValueError, RecordError):
                skipped += 1
        return JournalState(list(queued.values()), drafts, skipped)

    def drafts_for(self, run: str, round_no: int) -> dict[str, dict[str, Any]]:
        return {rid: form for (r, n, rid), form in self.read().drafts.items() if (r, n) == (run, round_no)}

    # ------------------------------------------------- replay ownership
    def claim(self) -> bool:
        """Become the one app that replays this journal (held until release()); False if another holds it."""
        if self._owner_fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._owner_fd = fd
        return True

    def release(self) -> None:
        """Sync, stop being the owner and close the files (the app calls it on the way out)."""
        self.sync()
        with self._lock:
            for name in ("_owner_fd", "_fd", "_lock_fd"):
                fd = getattr(self, name)
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)  # closing also drops an flock
                    setattr(self, name, None)

    def _worth_rewriting(self, state: JournalState) -> bool:
        """Only when it holds lines that are no longer needed (starting the app writes nothing otherwise)."""
        try:
            lines = sum(1 for line in self.path.read_bytes().split(b"\n") if line.strip())
        except FileNotFoundError:
            return False
        return lines > len(state.outstanding) + len(state.drafts)

    def compact(self) -> JournalState:
        """Rewrite the file with only what is still needed (owner only); returns it."""
        if self._owner_fd is None:
            raise RuntimeError("only the journal's owner compacts it (claim() first)")
        with self._exclusive():
            state = self.read()
            if not self._worth_rewriting(state):
                return state
            entries = [
                {"kind": "queued", "run": q.run, "round": q.round, "rating": q.rating.model_dump(mode="json")}
                for q in state.outstanding
            ]
            entries += [
                {"kind": "draft", "run": run, "round": rnd, "response_id": rid, "form": form}
                for (run, rnd, rid), form in state.drafts.items()
            ]
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as fh:
                for entry in entries:
                    fh.write(self._line(entry))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return state
