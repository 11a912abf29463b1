"""Where the reward model's predictions wait for the gate, out of every rater's sight (issue 21).

A prediction shown before a rater scores anchors the rating (and a rater who
can read what the model expects can game the drift check). So a round's
``predictions.json`` never sits where a rater can read it before the gate
closes:

* **Local runner** (any store): the job writes it into the runner's private
  work folder (``--private-dir``, created mode 0700, outside the shared store
  folder), and the runner publishes it into the store only after it closed
  the gate -- so a finished round's predictions can be audited, and nobody
  can read them while they still matter.
* **Operator** (S3): the job writes it to ``rounds/{r}/predictions.json`` in
  the bucket, a key the rater policy (``therapy-rlhf rater-access``) does
  not grant; only the executor's credential reads it.

Either way the round's ``selection.json`` (which the executor verifies by the
digest its job reported) commits to the predictions' SHA-256, so predictions
swapped after the fact are refused, not used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.contracts.records import Predictions, Selection, parse_record
from therapy_rlhf.store import integrity
from therapy_rlhf.store.backends import NotFound, Store, dump_json, parse_json


class PredictionsVault(Protocol):
    """Somewhere only the executor (and the job that writes) can read."""

    def put(self, round_no: int, data: bytes) -> None: ...

    def get(self, round_no: int) -> bytes | None: ...

    def describe(self, round_no: int) -> str: ...


class PrivateFolder:
    """The local runner's private work folder (mode 0700)."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)

    def _path(self, round_no: int) -> Path:
        return self.folder / f"predictions-r{round_no:04d}.json"

    def put(self, round_no: int, data: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.folder, 0o700)  # mkdir's mode is masked by the umask, and an existing folder keeps its own
        tmp = self._path(round_no).with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, self._path(round_no))

    def get(self, round_no: int) -> bytes | None:
        try:
            return self._path(round_no).read_bytes()
        except FileNotFoundError:
            return None

    def describe(self, round_no: int) -> str:
        return str(self._path(round_no))


class StoreVault:
    """``rounds/{r}/predictions.json`` in the store: private on S3 (the rater policy does not grant it); on a
    shared local folder it is not, so jobs on a local store use the runner's ``PrivateFolder``."""

    def __init__(self, store: Store, paths: RunPaths):
        self.store, self.paths = store, paths

    def put(self, round_no: int, data: bytes) -> None:
        self.store.write_bytes(self.paths.predictions(round_no), data)

    def get(self, round_no: int) -> bytes | None:
        try:
            return self.store.read_bytes(self.paths.predictions(round_no))
        except NotFound:
            return None

    def describe(self, round_no: int) -> str:
        return self.store.describe(self.paths.predictions(round_no))


def seal(vault: PredictionsVault, selection: Selection, predictions: Predictions | None) -> Selection:
    """Put ``predictions`` in the vault; the selection (to be written next) commits to their digest."""
    if predictions is None:
        return selection
    data = dump_json(predictions.model_dump(mode="json"))
    vault.put(selection.round, data)
    return selection.model_copy(update={"predictions_sha256": integrity.sha256(data)})


def unseal(vault: PredictionsVault, selection: Selection | None) -> Predictions | None:
    """The round's predictions, checked against the selection's commitment; IntegrityError when they are
    missing or differ. A selection written before issue 21 carries them itself."""
    if selection is None:
        return None
    if selection.predictions_sha256 is None:
        return Predictions(round=selection.round, model_sha256=selection.model_sha256, predictions=selection.predictions) if selection.predictions else None
    data = vault.get(selection.round)
    where = vault.describe(selection.round)
    if data is None:
        raise integrity.IntegrityError(f"{where} is missing, but round {selection.round}'s selection commits to it: refusing to close its gate")
    if integrity.sha256(data) != selection.predictions_sha256:
        raise integrity.IntegrityError(f"{where} does not match the digest its selection.json records: refusing to close round {selection.round}'s gate")
    return parse_record(Predictions, parse_json(data, where), where)


def publish(store: Store, paths: RunPaths, vault: PredictionsVault, round_no: int) -> None:
    """After the gate closed: copy the predictions from a private vault into the store, for the record."""
    if isinstance(vault, StoreVault):
        return
    data = vault.get(round_no)
    if data is not None:
        store.write_bytes(paths.predictions(round_no), data)
