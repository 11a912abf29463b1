"""therapy-rlhf rate RUN --from FILE | --auto: store ratings without the TUI.

* ``--from FILE``: a psychologist's scores from a spreadsheet (CSV) or
  another tool (JSONL), stored as real ratings under the rater's id through
  the same rules as the scoring TUI (see ``therapy_rlhf.feedback.importer``); bad rows
  are reported one line each, good rows are stored; ``--dry-run`` checks
  everything and stores nothing. Importing the same file twice stores each
  row once.
* ``--auto``: the SIMULATED rater (``therapy_rlhf.feedback.simrater``), for demos and
  CI only; every rating it writes says so in its ``client`` and comment.
"""

from __future__ import annotations

import argparse
import sys

from therapy_rlhf.commands._target import add_store_arguments, one_line, resolve

NAME = "rate"
HELP = (
    "Store scores without the TUI: --from FILE imports a psychologist's CSV/JSONL scores; "
    "--auto runs the SIMULATED rater (a word-list heuristic, not a clinician; demos and CI only)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="NAME, NAMESPACE/NAME or a manifest file.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--from", dest="from_file", metavar="FILE", help="Import scores from a .csv or .jsonl file.")
    source.add_argument(
        "--auto",
        action="store_true",
        help="Simulated ratings (required to use the simulated rater: there is no default rater).",
    )
    add_store_arguments(parser)
    parser.add_argument(
        "--round", type=int, metavar="N", help="Batch to score (default: the one waiting for scores)."
    )
    parser.add_argument(
        "--rater",
        action="append",
        metavar="ID",
        help="Rater id: with --from, yours (required, or $THERAPY_RLHF_RATER; never your login name); with --auto, "
        "the simulated raters' ids (repeatable; default as many as feedback.minRaters needs, 'sim-rater', ...).",
    )
    parser.add_argument("--dry-run", action="store_true", help="With --from: check every row, store nothing.")
    parser.add_argument(
        "--scale",
        choices=["levels", "fraction"],
        default="levels",
        help="With --from: scores are levels 0..scaleLevels-1 as in the TUI (default), or fractions 0..1.",
    )


def _round(store, paths, requested: int | None) -> int:
    from therapy_rlhf.feedback.pending import awaiting_round
    from therapy_rlhf.store.backends import NotFound

    round_no = requested if requested is not None else awaiting_round(store, paths)
    if round_no is None:
        raise ValueError(f"no batch of {paths.namespace}/{paths.run} is waiting for scores (pass --round N)")
    if not store.exists(paths.batch(round_no)):
        raise NotFound(f"batch {round_no} of {paths.namespace}/{paths.run} has no responses yet")
    if store.exists(paths.gate(round_no)):
        raise ValueError(
            f"batch {round_no} of {paths.namespace}/{paths.run} is closed (scoring finished); new scores would not count"
        )
    return round_no


def _import(args, store, paths, manifest, round_no: int) -> int:
    from therapy_rlhf.feedback.import_checks import capped
    from therapy_rlhf.feedback.importer import describe_stored, read_rows, submission_id
    from therapy_rlhf.feedback.rater_keys import signer_for
    from therapy_rlhf.feedback.rewards import check_rater
    from therapy_rlhf.feedback.rounds import load_round
    from therapy_rlhf.feedback.submit import submit_rating
    from therapy_rlhf.tui import resolve_rater

    if args.rater and len(args.rater) > 1:
        raise ValueError("--from imports one rater's scores: give --rater once")
    rater = check_rater(resolve_rater(args.rater[0] if args.rater else None), manifest.spec.feedback)
    feedback = manifest.spec.feedback
    signer = signer_for(rater, feedback)  # before reading anything: a run with a roster needs the rater's key
    state = load_round(store, paths, round_no, feedback=feedback)
    rows = read_rows(args.from_file, feedback, rater, state.response_ids, args.scale, round_no=round_no)
    run = f"{paths.namespace}/{paths.run}"
    positions = {r.id: i + 1 for i, r in enumerate(state.responses)}
    stored = already = corrected = 0
    bad = [row for row in rows if row.error]
    for row in rows:
        if row.rating is None:
            continue
        rating = row.rating.model_copy(update={"submission_id": submission_id(rater, run, round_no, row.rating)})
        where = f"line {row.line}: response {positions[rating.response_id]} ({rating.response_id})"
        if state.find_submission(rating) is not None:
            already += 1
            print(f"{where}: already stored (this row was imported before)")
            continue
        had = any(r.rater == rater and r.response_id == rating.response_id for r in state.ratings)
        if args.dry_run:
            print(f"{where}: ok, would be {describe_stored(rating, feedback)}{' (correcting your earlier score)' if had else ''}")
            continue
        record = submit_rating(store, paths, state, rating, feedback, signer=signer)
        stored += 1
        corrected += had
        print(f"{where}: {describe_stored(rating, feedback)}{' as a correction' if record.version > 1 else ''}")
    for line in capped([row.error for row in bad]):
        print(line if line.startswith("...") else f"error: {line}", file=sys.stderr)
    good = len(rows) - len(bad) - already
    if args.dry_run:
        summary = f"dry run: {good} row(s) would be stored, {already} already stored, {len(bad)} bad; nothing written"
    else:
        summary = (
            f"stored {stored} score(s) for batch {round_no} of {run} as {rater}"
            f" ({corrected} correction(s)), {already} already stored, {len(bad)} bad row(s)"
        )
    print(summary, file=sys.stderr)
    return 1 if bad else 0


def _simulate(args, store, paths, manifest, round_no: int) -> int:
    from therapy_rlhf.feedback.rewards import check_rater
    from therapy_rlhf.feedback.gate import coverage
    from therapy_rlhf.feedback.rounds import load_round
    from therapy_rlhf.feedback.simrater import rate_round, simulated_raters

    feedback = manifest.spec.feedback
    raters = args.rater or simulated_raters(feedback)
    for rater in raters:
        check_rater(rater, feedback)
    written = rate_round(store, paths, manifest, round_no, raters)
    cov = coverage(load_round(store, paths, round_no, feedback=feedback), feedback.min_raters)
    print(
        f"SIMULATED RATER (heuristic, not a clinician): wrote {written} rating(s) for round {round_no} "
        f"of {paths.namespace}/{paths.run} as {', '.join(raters)}; {cov.describe()}"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    from therapy_rlhf.feedback.importer import ImportFileError
    from therapy_rlhf.store.runs import read_frozen_run
    from therapy_rlhf.contracts.spec import SpecError
    from therapy_rlhf.store.backends import StoreError

    if not args.auto and not args.from_file:
        print(
            "error: say where the scores come from: --from FILE (a psychologist's CSV/JSONL scores) or --auto "
            "(the simulated rater, demos and CI only); psychologists can also score in the TUI (therapy-rlhf score)",
            file=sys.stderr,
        )
        return 1
    try:
        store, paths = resolve(args, args.run)
        manifest = read_frozen_run(store, paths)
        round_no = _round(store, paths, args.round)
        if args.from_file:
            return _import(args, store, paths, manifest, round_no)
        return _simulate(args, store, paths, manifest, round_no)
    except (SpecError, StoreError, ValueError, ImportFileError) as err:
        print(one_line(err), file=sys.stderr)
        return 1
