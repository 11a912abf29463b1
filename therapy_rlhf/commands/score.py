"""therapy-rlhf score: the psychologist's scoring app (Textual TUI).

    therapy-rlhf score --store s3://bucket/therapy-rlhf --rater alice
    therapy-rlhf score --store ./local-store --run default/demo --round 1
"""

from __future__ import annotations

import argparse
import sys

NAME = "score"
HELP = "Score pending responses in the terminal (the psychologist's app)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        default=None,
        help="Store URI: s3://BUCKET/PREFIX or a local directory (default: $THERAPY_RLHF_STORE, else ./local-store).",
    )
    parser.add_argument("--rater", default=None, help="Your rater id (default: $THERAPY_RLHF_RATER, else your login name).")
    parser.add_argument("--run", default=None, metavar="NS/NAME", help="Open this run directly (namespace/name, or just name in 'default').")
    parser.add_argument("--round", type=int, default=None, dest="round_no", help="Round to open (default: the first open one).")
    parser.add_argument("--guidelines", default=None, metavar="FILE.md", help="Markdown guidelines shown with '?' (default: the spec's feedback.guidelines).")
    parser.add_argument("--unblind", action="store_true", help="Show other raters' round means and agreement before the gate closes.")


def parse_run_arg(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    namespace, sep, name = text.partition("/")
    return (namespace, name) if sep else ("default", namespace)


def run(args: argparse.Namespace) -> int:
    import os

    from therapy_rlhf import names
    from therapy_rlhf.store import open_store
    from therapy_rlhf.tui import resolve_rater

    uri = args.store or os.environ.get("THERAPY_RLHF_STORE") or "./local-store"
    try:
        rater = resolve_rater(args.rater)
        store = open_store(uri)
        target = parse_run_arg(args.run)
        if target is not None:
            names.namespace(target[0])
            names.run_name(target[1])
        if args.round_no is not None and not 1 <= args.round_no <= 9999:
            raise ValueError(f"invalid --round {args.round_no}: must be in 1..9999")
        guidelines = None
        if args.guidelines:
            with open(args.guidelines, encoding="utf-8") as fh:
                guidelines = fh.read()
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from therapy_rlhf.tui.app import ScoringApp

    app = ScoringApp(store, rater, target, args.round_no, guidelines=guidelines, unblind=args.unblind)
    return int(app.run() or 0)
