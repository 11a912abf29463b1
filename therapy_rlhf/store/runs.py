"""Runs as the store holds them: the frozen spec, the run list, the rounds with a batch.

What each round amounts to (counts, reward, agreement) is ``feedback.summary``.
"""

from __future__ import annotations

import json

from therapy_rlhf.contracts.layout import RunPaths, parse_run_root
from therapy_rlhf.contracts.spec import RunManifest, SpecError, parse_run
from therapy_rlhf.store.backends import AlreadyExists, NotFound, Store


# How many other runs a "no such run" message names.
MISSING_RUN_SHOWN = 5


class FrozenSpecMismatch(ValueError):
    """The store already holds a different frozen spec for this run."""


def _canonical(manifest: RunManifest) -> dict:
    doc = manifest.to_json_dict()
    doc.pop("status", None)
    doc["metadata"] = {"name": manifest.name, "namespace": manifest.namespace}
    return doc


def freeze_spec(store: Store, manifest: RunManifest) -> RunManifest:
    """Write spec.json once; on a later start return the frozen one.

    A run's training settings never change under it: if the stored spec
    differs from ``manifest`` in anything but ``suspend``, the stored spec is
    kept and FrozenSpecMismatch says which top-level fields differ.
    """
    paths = RunPaths(manifest.namespace, manifest.name)
    doc = _canonical(manifest)
    try:
        store.create_json(paths.spec(), doc)
        return manifest
    except AlreadyExists:
        pass
    frozen = read_frozen_run(store, paths)
    old, new = _canonical(frozen)["spec"], doc["spec"]
    old.pop("suspend", None)
    new.pop("suspend", None)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        raise FrozenSpecMismatch(
            f"run {manifest.namespace}/{manifest.name} was started with a different spec "
            f"(fields {', '.join('spec.' + c for c in changed)} differ from {store.describe(paths.spec())}); "
            "start a new run under another name to change them"
        )
    return frozen


def read_frozen_run(store: Store, paths: RunPaths) -> RunManifest:
    source = store.describe(paths.spec())
    try:
        return parse_run(store.read_json(paths.spec()), source)
    except NotFound:
        raise NotFound(missing_run(store, paths)) from None


def missing_run(store: Store, paths: RunPaths) -> str:
    """Why a run is not there, told apart: a misspelt name (the store holds other runs) or the wrong store
    (it holds none). A store directory that does not exist raises NoSuchStore from the listing."""
    others = [f"{p.namespace}/{p.run}" for p in list_runs(store)]
    if not others:
        return (
            f"no run {paths.namespace}/{paths.run} in {store.uri}, which holds no runs at all: is it the right "
            "store? (--store, $THERAPY_RLHF_STORE or the manifest's spec.storage)"
        )
    shown = ", ".join(others[:MISSING_RUN_SHOWN]) + (f" and {len(others) - MISSING_RUN_SHOWN} more" if len(others) > MISSING_RUN_SHOWN else "")
    return f"no run {paths.namespace}/{paths.run} in {store.uri} (it holds {shown})"


def list_runs(store: Store) -> list[RunPaths]:
    """Every run whose frozen spec is in the store."""
    out = []
    for key in store.list(""):
        parsed = parse_run_root(key)
        if parsed:
            out.append(RunPaths(*parsed))
    return out


def read_fluency(store: Store, paths: RunPaths, round_no: int) -> dict | None:
    """rounds/r/fluency.json, or None when absent or unreadable (never fatal: the guard then cannot act)."""
    try:
        doc = store.read_json(paths.fluency(round_no))
    except Exception:  # noqa: BLE001  (missing or damaged: the run goes on, unmeasured)
        return None
    return doc if isinstance(doc, dict) else None


def stored_rounds(store: Store, paths: RunPaths) -> list[int]:
    """Rounds that have a batch, in order."""
    rounds = []
    prefix = paths.root + "/rounds/"
    for key in store.list(prefix):
        rest = key[len(prefix) :]
        if rest.endswith("/batch.jsonl") and rest.count("/") == 1 and rest[:4].isdigit():
            rounds.append(int(rest[:4]))
    return sorted(rounds)


def dump_manifest(manifest: RunManifest) -> str:
    return json.dumps(_canonical(manifest), indent=2, sort_keys=True)


__all__ = [
    "FrozenSpecMismatch",
    "SpecError",
    "dump_manifest",
    "freeze_spec",
    "list_runs",
    "missing_run",
    "read_fluency",
    "read_frozen_run",
    "stored_rounds",
]
