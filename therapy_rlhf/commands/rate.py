"""therapy-rlhf rate --auto RUN: the SIMULATED rater, for demos and CI only.

Scores a round's pending responses with the transparent heuristic of
``therapy_rlhf.simrater`` and stores ordinary rating objects through the
same API as the scoring TUI (each one labelled as simulated in its ``client``
and comment). It never runs unless ``--auto`` is given: real rewards come
from a psychologist in the TUI.
"""

from __future__ import annotations

import argparse
import sys

from therapy_rlhf.commands._target import add_store_arguments, one_line, resolve

NAME = "rate"
HELP = (
    "SIMULATED rater for demos and CI (requires --auto): scores a round's pending responses "
    "with a word-list heuristic, NOT a clinician. Psychologists rate in the scoring TUI."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="NAME, NAMESPACE/NAME or a manifest file.")
    parser.add_argument(
        "--auto",
        action="store_true",
        help="Confirm that simulated ratings are wanted (required: there is no default rater).",
    )
    add_store_arguments(parser)
    parser.add_argument(
        "--round", type=int, metavar="N", help="Round to rate (default: the round whose gate is open)."
    )
    parser.add_argument(
        "--rater",
        action="append",
        metavar="ID",
        help="Simulated rater id (repeatable; default: as many as feedback.minRaters needs, "
        "'sim-rater', 'sim-rater-2', ...).",
    )


def open_round(store, paths, rounds: int) -> int:
    """The first round with a batch but no gate."""
    for r in range(1, rounds + 1):
        if not store.exists(paths.batch(r)):
            break
        if not store.exists(paths.gate(r)):
            return r
    raise ValueError(f"no round of {paths.namespace}/{paths.run} is waiting for ratings (pass --round N)")


def run(args: argparse.Namespace) -> int:
    from therapy_rlhf.ratings import check_rater, coverage, load_round
    from therapy_rlhf.runs import read_frozen_run
    from therapy_rlhf.simrater import rate_round, simulated_raters
    from therapy_rlhf.spec import SpecError
    from therapy_rlhf.store import NotFound, StoreError

    if not args.auto:
        print(
            "error: only simulated rating is available here and it must be asked for with --auto; "
            "psychologists rate in the scoring TUI (therapy-rlhf score)",
            file=sys.stderr,
        )
        return 1
    try:
        store, paths = resolve(args, args.run)
        manifest = read_frozen_run(store, paths)
        feedback = manifest.spec.feedback
        round_no = args.round if args.round is not None else open_round(store, paths, manifest.spec.ppo.rounds)
        if not store.exists(paths.batch(round_no)):
            raise NotFound(f"round {round_no} of {paths.namespace}/{paths.run} has no pending responses yet")
        if store.exists(paths.gate(round_no)):
            raise ValueError(f"round {round_no} of {paths.namespace}/{paths.run} is already gated; ratings would not be used")
        raters = args.rater or simulated_raters(feedback)
        for rater in raters:
            check_rater(rater, feedback)
        written = rate_round(store, paths, manifest, round_no, raters)
        cov = coverage(load_round(store, paths, round_no), feedback.min_raters)
    except (SpecError, StoreError, ValueError) as err:
        print(one_line(err), file=sys.stderr)
        return 1
    print(
        f"SIMULATED RATER (heuristic, not a clinician): wrote {written} rating(s) for round {round_no} "
        f"of {paths.namespace}/{paths.run} as {', '.join(raters)}; {cov.describe()}"
    )
    return 0
