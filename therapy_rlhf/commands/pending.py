"""therapy-rlhf pending [RUN]: what awaits a rater, machine-readable.

JSON (default): every open batch of the store (or of RUN) with its progress
and the responses still to score, in the order the scoring app offers them
(the ones that most need a rater first). ``--rater ID`` lists what awaits that
rater; without it, what still needs any rater.

``--csv`` writes a fill-in sheet for one batch: one row per response to score,
with the patient's words and the response for reading, and empty columns for
each criterion, the flags and a comment; ``therapy-rlhf rate RUN --from
SHEET.csv`` reads it back. A cell a spreadsheet would run as a formula (the
patient's words or the response starting with ``=``, ``+``, ``-``, ``@``, a tab
or a carriage return) is written with a leading single quote
(``therapy_rlhf.feedback.csv_cells``); those columns are information only on
import, so the filled sheet reads back the same.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys

from therapy_rlhf.commands._output import write_output
from therapy_rlhf.commands._target import add_store_arguments, one_line, resolve

NAME = "pending"
HELP = "List what awaits a rater (JSON), or write a CSV sheet to score one batch (--csv)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="?", metavar="RUN", help="NAME, NAMESPACE/NAME or a manifest file (default: every run).")
    add_store_arguments(parser)
    parser.add_argument("--rater", metavar="ID", help="List what awaits this rater (default: what needs any rater).")
    parser.add_argument("--csv", action="store_true", help="Write a fill-in sheet (CSV) for one batch instead of JSON.")
    parser.add_argument("--round", type=int, metavar="N", help="With --csv: the batch (default: the only open one).")
    parser.add_argument("--output", "-o", metavar="FILE", help="Write here (default: stdout).")


def sheet(store, waiting, rater: str | None) -> str:
    """The CSV fill-in sheet for one open batch."""
    from therapy_rlhf.feedback.csv_cells import guarded_rows
    from therapy_rlhf.feedback.rounds import load_round
    from therapy_rlhf.store.runs import read_frozen_run

    manifest = read_frozen_run(store, waiting.paths)
    state = load_round(store, waiting.paths, waiting.round)
    by_id = {r.id: r for r in state.responses}
    criteria = [c.name for c in manifest.spec.feedback.rubric]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["response_id", "position", "raters", "crisis_cues", "patient", "response", *criteria, "flags", "comment"])
    rows = []
    for item in waiting.todo:
        resp = by_id[item.id]
        patient = "\n".join([*(f"{t.get('role')}: {t.get('content')}" for t in resp.context), resp.prompt])
        rows.append(
            [item.id, item.position, item.raters, "; ".join(item.crisis_cues), patient, resp.response, *[""] * len(criteria), "", ""]
        )
    writer.writerows(guarded_rows(rows))
    return out.getvalue()


def run(args: argparse.Namespace) -> int:
    from therapy_rlhf.contracts import names
    from therapy_rlhf.feedback.pending import find_waiting
    from therapy_rlhf.contracts.spec import SpecError
    from therapy_rlhf.store.backends import StoreError

    try:
        if args.rater:
            names.rater_id(args.rater)
        store, paths = resolve(args, args.run)
        found = find_waiting(store, args.rater, [paths] if paths is not None else None)
        if args.csv:
            rounds = [w for w in found.rounds if args.round is None or w.round == args.round]
            if len(rounds) != 1:
                which = ", ".join(f"{w.run} batch {w.round}" for w in rounds) or "none"
                raise ValueError(f"--csv writes one batch; open batches here: {which} (pass RUN and --round N)")
            text = sheet(store, rounds[0], args.rater)
        else:
            doc = {
                "store": store.uri,
                "rater": args.rater,
                "rounds": [w.to_dict() for w in found.rounds],
                "problems": found.problems,
            }
            text = json.dumps(doc, indent=2) + "\n"
    except (SpecError, StoreError, ValueError) as err:
        print(one_line(err), file=sys.stderr)
        return 1
    if not args.output:
        sys.stdout.write(text)
        return 0
    error = write_output(args.output, text)
    if error:
        print(error, file=sys.stderr)
        return 1
    return 0
