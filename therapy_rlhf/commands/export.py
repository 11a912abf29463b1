"""therapy-rlhf export RUN: a run's ratings as JSONL, ready for TRL / datasets.

One row per rated response (every round that has a batch), built from each
rater's latest rating only (corrections replace, withdrawals remove):

    {"prompt": [{"role": "user", "content": ...}],            # context turns first
     "completion": [{"role": "assistant", "content": ...}],
     "reward": 0.62,            # the gate's rule: mean over raters, safety penalty applied
     "raters": [...], "flags": [...], "comments": [{"rater": ..., "comment": ...}],
     "criteria": {name: mean score}, "round": 3, "response_id": ..., "prompt_id": ...,
     "gated": true,             # these are exactly the ratings the round's gate froze
     "late": false,             # the row holds ratings stored after the gate closed
     "simulated": false,        # true when any of its ratings came from the SIMULATED rater
     "scored_by": "experts"}    # or "reward-model" (only with --include-model-scored)

With ``feedback.selection`` some responses never reach the experts; a gate may
reward them with the reward model's prediction (``unselected: model``). Those
are not ratings: they are left out unless ``--include-model-scored`` is given,
and then come as rows with ``scored_by: "reward-model"``, no raters, no
criteria, and the model's ``predicted`` reward and ``spread``.

Ratings are read under the run's rules (``ratings.load_round``): only allowed
raters (with a roster, only ratings signed by the rater's registered key),
rewards recomputed from the criteria, garbage skipped. A gated round exports
exactly what trained: where a frozen rating's stored object changed after the
gate closed, the gate's copy is exported and a warning line says so. A closed round
gives one row per response the gate froze (``gated: true``); where ratings
arrived after the gate closed, a second row holds each rater's newest rating
including them (``late: true``, never ``gated``): kept for the record, not
what the model was trained on.

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
    parser.add_argument(
        "--include-model-scored",
        action="store_true",
        help="Also write the responses the reward model scored (never seen by experts), marked scored_by: reward-model.",
    )


def _prompt(response, fmt: str):
    turns = [*response.context, {"role": "user", "content": response.prompt}]
    if fmt == "conversational":
        return turns, [{"role": "assistant", "content": response.response}]
    text = "\n".join(f"{t['role']}: {t['content']}" for t in turns) if response.context else response.prompt
    return text, response.response


def export_rows(
    store, paths, fmt: str = "conversational", include_model_scored: bool = False, warnings: list[str] | None = None
) -> list[dict]:
    """The export rows of a run, in round and batch order; what the caller should be told goes to ``warnings``."""
    from dataclasses import replace

    from therapy_rlhf.feedback.gate import aggregate
    from therapy_rlhf.feedback.rounds import load_round
    from therapy_rlhf.store.runs import read_frozen_run, stored_rounds
    feedback = read_frozen_run(store, paths).spec.feedback
    rows: list[dict] = []
    for r in stored_rounds(store, paths):
        state = load_round(store, paths, r, feedback=feedback)
        if warnings is not None:
            warnings += _round_warnings(state)
        frozen = {rid for reward in state.gate.rewards.values() for rid in reward.ratings} if state.gate else set()
        rewards = aggregate(state, feedback)
        # Each rater's newest rating including late ones: the same rules, no gate.
        with_late = replace(state, late_ids=set()) if state.late_ids else None
        late_rewards = aggregate(with_late, feedback) if with_late is not None else {}
        for response in state.responses:
            if response.id in rewards:
                ids = set(rewards[response.id].ratings)
                rows.append(_row(response, rewards[response.id], state.latest(), r, fmt,
                                 gated=state.gate is not None and ids <= frozen, late=False))
            late = late_rewards.get(response.id)
            if late is not None and set(late.ratings) & state.late_ids:
                rows.append(_row(response, late, with_late.latest(), r, fmt, gated=False, late=True))  # type: ignore[union-attr]
        if include_model_scored and state.gate is not None:
            rows += [
                _model_row(response, state.gate.model_scored[response.id], r, fmt)
                for response in state.not_sent
                if response.id in state.gate.model_scored
            ]
    return rows


def _round_warnings(state) -> list[str]:
    out = []
    if state.changed_after_gate:
        out.append(
            f"warning: round {state.round}: {len(state.changed_after_gate)} rating(s) changed in the store after the gate "
            f"closed ({', '.join(state.changed_after_gate[:3])}); exported as the gate froze them (what trained)"
        )
    if state.refused:
        out.append(f"warning: round {state.round}: {len(state.refused)} rating(s) refused, not their rater's own "
                   f"(left out; `therapy-rlhf status` lists them)")
    return out


def _model_row(response, score, round_no: int, fmt: str) -> dict:
    """A response the experts never saw, rewarded by the reward model: no raters, no criteria, no comments."""
    prompt, completion = _prompt(response, fmt)
    return {
        "prompt": prompt,
        "completion": completion,
        "reward": score.reward,
        "raters": [],
        "flags": [],
        "comments": [],
        "criteria": {},
        "round": round_no,
        "response_id": response.id,
        "prompt_id": response.prompt_id,
        "gated": True,
        "late": False,
        "simulated": False,
        "scored_by": "reward-model",
        "predicted": score.predicted,
        "spread": score.spread,
    }


def _row(response, reward, latest, round_no: int, fmt: str, *, gated: bool, late: bool) -> dict:
    from therapy_rlhf.feedback.simrater import is_simulated

    ratings = [latest[(response.id, rater)] for rater in reward.raters]
    names = sorted({c for rating in ratings for c in rating.criteria})
    prompt, completion = _prompt(response, fmt)
    return {
        "prompt": prompt,
        "completion": completion,
        "reward": reward.reward,
        "raters": [rating.rater for rating in ratings],
        "flags": sorted({f for rating in ratings for f in rating.flags}),
        "comments": [{"rater": x.rater, "comment": x.comment} for x in ratings if x.comment],
        "criteria": {
            n: round(sum(x.criteria[n] for x in ratings if n in x.criteria)
                     / sum(1 for x in ratings if n in x.criteria), 6)
            for n in names
        },
        "round": round_no,
        "response_id": response.id,
        "prompt_id": response.prompt_id,
        "gated": gated,
        "late": late,
        "simulated": any(is_simulated(x) for x in ratings),
        "scored_by": "experts",
    }


def run(args: argparse.Namespace) -> int:
    from therapy_rlhf.contracts.spec import SpecError
    from therapy_rlhf.store.backends import StoreError

    try:
        store, paths = resolve(args, args.run)
        warnings: list[str] = []
        rows = export_rows(store, paths, args.format, args.include_model_scored, warnings)
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
    for line in warnings:
        print(line, file=sys.stderr)
    print(f"exported {len(rows)} rated response(s) of {paths.namespace}/{paths.run}", file=sys.stderr)
    return 0
