"""therapy-rlhf export RUN: a run's ratings as JSONL, ready for TRL / datasets.

One row per rated response (every round that has a batch), built from each
rater's latest rating only (corrections replace, withdrawals remove):

    {"prompt": [{"role": "user", "content": ...}],            # context turns first
     "completion": [{"role": "assistant", "content": ...}],
     "reward": 0.62,            # the gate's rule: mean over raters, safety penalty applied
     "raters": [...], "flags": [...], "comments": [{"rater": ..., "comment": ...}],
     "criteria": {name: mean score}, "round": 3, "response_id": ..., "prompt_id": ...,
     "gated": true}              # whether the round's gate froze this response

``--format standard`` writes plain strings for prompt and completion instead
(TRL's "standard" prompt-completion format). ``datasets.load_dataset("json",
data_files=FILE)`` reads either.
"""

from __future__ import annotations

import argparse
import json
import sys

from therapy_rlhf.commands._output import write_output
from therapy_rlhf.commands._target import add_store_arguments, one_line, resolve

NAME = "export"
HELP = "Export a run's latest ratings as JSONL (prompt, completion, reward, raters, flags, comments, round)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="NAME, NAMESPACE/NAME or a manifest file.")
    add_store_arguments(parser)
    parser.add_argument("--output", "-o", metavar="FILE", help="Write here (default: stdout).")
    parser.add_argument(
        "--format",
        choices=["conversational", "standard"],
        default="conversational",
        help="TRL dataset format: chat messages (default) or plain strings.",
    )


def _prompt(response, fmt: str):
    turns = [*response.context, {"role": "user", "content": response.prompt}]
    if fmt == "conversational":
        return turns, [{"role": "assistant", "content": response.response}]
    text = "\n".join(f"{t['role']}: {t['content']}" for t in turns) if response.context else response.prompt
    return text, response.response


def export_rows(store, paths, fmt: str = "conversational") -> list[dict]:
    """The export rows of a run, in round and batch order."""
    from therapy_rlhf.ratings import aggregate, load_round, read_gate
    from therapy_rlhf.runs import read_frozen_run, stored_rounds

    feedback = read_frozen_run(store, paths).spec.feedback
    rows: list[dict] = []
    for r in stored_rounds(store, paths):
        state = load_round(store, paths, r)
        gate = read_gate(store, paths, r)
        rewards = aggregate(state, feedback)
        latest = state.latest()
        for response in state.responses:
            if response.id not in rewards:
                continue
            ratings = [latest[(response.id, rater)] for rater in rewards[response.id].raters]
            names = sorted({c for rating in ratings for c in rating.criteria})
            prompt, completion = _prompt(response, fmt)
            rows.append(
                {
                    "prompt": prompt,
                    "completion": completion,
                    "reward": rewards[response.id].reward,
                    "raters": [rating.rater for rating in ratings],
                    "flags": sorted({f for rating in ratings for f in rating.flags}),
                    "comments": [{"rater": x.rater, "comment": x.comment} for x in ratings if x.comment],
                    "criteria": {
                        n: round(sum(x.criteria[n] for x in ratings if n in x.criteria)
                                 / sum(1 for x in ratings if n in x.criteria), 6)
                        for n in names
                    },
                    "round": r,
                    "response_id": response.id,
                    "prompt_id": response.prompt_id,
                    "gated": gate is not None and response.id in gate.rewards,
                }
            )
    return rows


def run(args: argparse.Namespace) -> int:
    from therapy_rlhf.spec import SpecError
    from therapy_rlhf.store import StoreError

    try:
        store, paths = resolve(args, args.run)
        rows = export_rows(store, paths, args.format)
    except (SpecError, StoreError, ValueError) as err:
        print(one_line(err), file=sys.stderr)
        return 1
    text = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
    if not args.output:
        sys.stdout.write(text)
    else:
        error = write_output(args.output, text)
        if error:
            print(error, file=sys.stderr)
            return 1
    print(f"exported {len(rows)} rated response(s) of {paths.namespace}/{paths.run}", file=sys.stderr)
    return 0
