"""therapy-rlhf score: the psychologist's scoring app (Textual TUI).

    therapy-rlhf score --store s3://bucket/therapy-rlhf --rater alice
    therapy-rlhf score --run demo --round 1            # NAME, NAMESPACE/NAME or a manifest file
"""

from __future__ import annotations

import argparse
import sys

from therapy_rlhf.commands._target import add_store_arguments, one_line, resolve

NAME = "score"
HELP = "Score pending responses in the terminal (the psychologist's app)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_arguments(parser)
    parser.add_argument("--rater", default=None, help="Your rater id (required, or $THERAPY_RLHF_RATER; never your login name).")
    parser.add_argument(
        "--run", default=None, metavar="RUN", help="Open this run directly: NAME, NAMESPACE/NAME or a manifest file."
    )
    parser.add_argument("--round", type=int, default=None, dest="round_no", help="Batch to open (default: the first open one).")
    parser.add_argument("--guidelines", default=None, metavar="FILE.md", help="Markdown guidelines shown with '?' (default: the spec's feedback.guidelines).")
    parser.add_argument("--unblind", action="store_true", help="Show other raters' batch means and agreement before a batch closes.")
    parser.add_argument(
        "--order",
        choices=["least-covered", "crisis-first", "batch"],
        default=None,
        help="Which response comes next (default: the run's feedback.responseOrder, least-covered first).",
    )
    parser.add_argument(
        "--refresh", type=float, default=10.0, metavar="SECONDS",
        help="Seconds between looks at the store for others' progress and closed batches (0: only on ctrl+r).",
    )


def run(args: argparse.Namespace) -> int:
    from therapy_rlhf.contracts.spec import SpecError
    from therapy_rlhf.store.backends import StoreError
    from therapy_rlhf.tui import resolve_rater

    try:
        rater = resolve_rater(args.rater)
        store, paths = resolve(args, args.run)
        target = (paths.namespace, paths.run) if paths is not None else None
        if args.round_no is not None and not 1 <= args.round_no <= 9999:
            raise ValueError(f"invalid --round {args.round_no}: must be in 1..9999")
        if args.refresh < 0:
            raise ValueError(f"invalid --refresh {args.refresh}: must be 0 or more seconds")
        guidelines = None
        if args.guidelines:
            with open(args.guidelines, encoding="utf-8") as fh:
                guidelines = fh.read()
    except OSError as err:
        print(f"error: cannot read {err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    except (SpecError, StoreError, ValueError) as err:
        print(one_line(err), file=sys.stderr)
        return 2
    from therapy_rlhf.tui.app import ScoringApp

    app = ScoringApp(
        store, rater, target, args.round_no, guidelines=guidelines, unblind=args.unblind,
        order=args.order, refresh_seconds=args.refresh,
    )
    return int(app.run() or 0)
