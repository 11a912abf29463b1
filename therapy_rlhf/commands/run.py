"""therapy-rlhf run RUN.yaml: the whole loop locally (no cluster)."""

from __future__ import annotations

import argparse
import sys

NAME = "run"
HELP = "Run a TherapyRLHFRun locally: jobs as subprocesses, gates waiting for ratings."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="RUN.yaml", help="The run manifest.")
    parser.add_argument(
        "--store",
        help="Store URI (a directory or s3://bucket/prefix); default: the manifest's spec.storage.",
    )
    parser.add_argument(
        "--rater",
        choices=["none", "auto", "tui"],
        default="none",
        help="At each gate: 'none' waits for ratings written from anywhere (default); "
        "'auto' runs the SIMULATED rater (demos and CI only); 'tui' opens the scoring TUI here.",
    )
    parser.add_argument("--rater-id", help="Rater id for --rater tui (default: $THERAPY_RLHF_RATER or login).")
    parser.add_argument("--poll-interval", type=float, default=2.0, help="Seconds between store polls at a gate.")


def run(args: argparse.Namespace) -> int:
    from therapy_rlhf.runner import LocalRunner
    from therapy_rlhf.runs import FrozenSpecMismatch
    from therapy_rlhf.spec import SpecError, load_run
    from therapy_rlhf.store import StoreError, store_for_spec

    try:
        manifest = load_run(args.file)
        store = store_for_spec(manifest.spec.storage, args.store)
        runner = LocalRunner(
            manifest, store, rater=args.rater, rater_id=args.rater_id, poll_interval=args.poll_interval
        )
        return runner.run()
    except (SpecError, FrozenSpecMismatch, StoreError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
