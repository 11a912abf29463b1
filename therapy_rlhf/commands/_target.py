"""Which store and which run a CLI command means (shared by status, rate, export).

``RUN`` may be a run name (``NAME`` or ``NAMESPACE/NAME``) or a manifest file;
a manifest also supplies the store (its ``spec.storage``) unless ``--store``
is given. Without either, the store is ``$THERAPY_RLHF_STORE`` or
``./local-store`` (where the tiny local example keeps its runs).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

STORE_ENV = "THERAPY_RLHF_STORE"
DEFAULT_STORE = "./local-store"


class TargetError(ValueError):
    """A one-line usage problem (bad run name, missing store)."""


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="URI",
        help=f"Store: a directory or s3://bucket/prefix (default: the manifest's storage, "
        f"${STORE_ENV}, or {DEFAULT_STORE}).",
    )
    parser.add_argument(
        "--namespace", "-n", default=None, help="Namespace of RUN (default: 'default', or NAMESPACE/NAME)."
    )


def looks_like_file(run: str) -> bool:
    return run.endswith((".yaml", ".yml", ".json")) or (os.sep in run and Path(run).is_file())


def resolve(args: argparse.Namespace, run: str | None):
    """(store, RunPaths or None) for a command's RUN and --store/--namespace."""
    from therapy_rlhf.contracts import names
    from therapy_rlhf.contracts.layout import RunPaths
    from therapy_rlhf.contracts.spec import load_run
    from therapy_rlhf.store.backends import open_store, store_for_spec

    if run and looks_like_file(run):
        manifest = load_run(run)  # raises SpecError (one line per problem)
        store = existing(store_for_spec(manifest.spec.storage, args.store))
        return store, RunPaths(manifest.namespace, manifest.name)
    uri = args.store or os.environ.get(STORE_ENV) or DEFAULT_STORE
    store = existing(open_store(uri))
    if not run:
        return store, None
    namespace, _, name = run.rpartition("/")
    if namespace and args.namespace and namespace != args.namespace:
        raise TargetError(f"run {run!r} names namespace {namespace!r} but --namespace is {args.namespace!r}")
    namespace = namespace or args.namespace or "default"
    try:
        return store, RunPaths(names.namespace(namespace), names.run_name(name))
    except names.InvalidName as err:
        raise TargetError(str(err)) from None


def existing(store):
    """The store, or NoSuchStore naming a local directory that does not exist: every command that
    resolves a run reads a store that must be there (``run MANIFEST`` creates its own)."""
    from therapy_rlhf.store.backends import LocalStore

    if isinstance(store, LocalStore):
        store.check_exists()
    return store


def one_line(err: BaseException) -> str:
    """The first line of an error, prefixed 'error: ' (the CLI prints nothing else)."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    more = f" (and {len(lines) - 1} more problem{'s' if len(lines) > 2 else ''})" if len(lines) > 1 else ""
    return f"error: {lines[0]}{more}"
