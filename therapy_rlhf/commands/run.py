"""therapy-rlhf run RUN: the whole loop locally (no cluster).

    therapy-rlhf run examples/tiny-local.yaml --scoring auto        # simulated rater (demos, CI)
    therapy-rlhf run examples/tiny-human.yaml --scoring tui --rater dr-lee
    therapy-rlhf run tiny-local                                     # continue a run already in the store
"""

from __future__ import annotations

import argparse
import sys

from therapy_rlhf.commands._target import add_store_arguments, looks_like_file, one_line, resolve

NAME = "run"
HELP = "Run a TherapyRLHFRun locally: jobs as subprocesses, each batch waiting for scores."

SCORING_MODES = ("none", "auto", "tui")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run", metavar="RUN",
        help="A manifest file (starts or continues the run), or NAME / NAMESPACE/NAME of a run already in the store.",
    )
    add_store_arguments(parser)
    parser.add_argument(
        "--scoring",
        choices=SCORING_MODES,
        default="none",
        help="How each batch gets its scores: 'none' waits for scores given anywhere (the TUI in another "
        "terminal, rate --from FILE) (default); 'auto' runs the SIMULATED rater (demos and CI only); "
        "'tui' opens the scoring app in this terminal.",
    )
    parser.add_argument("--rater", metavar="ID", help="Your rater id for --scoring tui (required, or $THERAPY_RLHF_RATER).")
    parser.add_argument(
        "--poll-interval",
        type=float,
        help="Seconds between store polls at a gate (default 0.5 for a local directory, 2 for S3).",
    )
    parser.add_argument(
        "--cold-jobs",
        action="store_true",
        help="Start every job as a new Python process instead of forking it from the warm worker "
        "(seconds of imports per job; also THERAPY_RLHF_WARM_WORKER=0).",
    )


def _scoring_app(store_uri: str, rater: str | None, run: tuple[str, str], round_no: int) -> int:
    """The scoring TUI for --scoring tui: the CLI is the one place that wires the TUI to the runner."""
    from therapy_rlhf.tui import launch

    return launch(store_uri, rater, run, round_no)


def run(args: argparse.Namespace) -> int:
    from therapy_rlhf.execution.runner import LocalRunner
    from therapy_rlhf.execution.workdir import default_warm
    from therapy_rlhf.store.runs import FrozenSpecMismatch, read_frozen_run
    from therapy_rlhf.contracts.spec import SpecError, load_run
    from therapy_rlhf.store.backends import StoreError, store_for_spec

    if args.rater in SCORING_MODES:
        print(
            f"error: --rater is your rater id; to choose how batches are scored use --scoring {args.rater}",
            file=sys.stderr,
        )
        return 2
    try:
        if args.scoring == "tui":
            from therapy_rlhf.tui import resolve_rater

            args.rater = resolve_rater(args.rater)  # before any job: a missing id is a one-line error now
        if looks_like_file(args.run):
            manifest = load_run(args.run)
            store = store_for_spec(manifest.spec.storage, args.store)
        else:
            store, paths = resolve(args, args.run)
            manifest = read_frozen_run(store, paths)
        runner = LocalRunner(
            manifest, store, scoring=args.scoring, rater_id=args.rater, scoring_app=_scoring_app, poll_interval=args.poll_interval,
            warm=default_warm() and not args.cold_jobs,
        )
        return runner.run()
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)  # every problem, one line each
        return 1
    except (FrozenSpecMismatch, StoreError, ValueError) as err:
        print(one_line(err), file=sys.stderr)
        return 1
