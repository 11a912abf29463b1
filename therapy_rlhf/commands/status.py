"""therapy-rlhf status [RUN]: the runs in a store, or one run's rounds.

Everything is read from the store (the same functions the TUI and the
operator use), so it works on a laptop, on the raters' bastion and next to a
cluster alike. The "at" column is what the shared planner makes of the
store's markers: the step the run is at (or would start next).
"""

from __future__ import annotations

import argparse
import json
import sys

from therapy_rlhf.commands._target import add_store_arguments, one_line, resolve

NAME = "status"
HELP = "Show the runs in a store, or one run's rounds: rated counts, mean rewards, rater agreement."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run", nargs="?", metavar="RUN", help="NAME, NAMESPACE/NAME or a manifest file; omit to list runs."
    )
    add_store_arguments(parser)
    parser.add_argument("--json", action="store_true", help="Print JSON instead of tables.")


def _where(store, paths, manifest) -> dict:
    """Phase and next step the planner derives from the store's markers."""
    from therapy_rlhf.planning.observe import observe_store
    from therapy_rlhf.planning.planner import plan

    observed, _ = observe_store(store, paths, manifest.spec)
    decision = plan(manifest.spec, observed)
    done_rounds = sum(1 for ro in observed.rounds.values() if ro.policy)
    return {
        "phase": decision.phase,
        "round": decision.round,
        "roundsDone": done_rounds,
        "rounds": manifest.spec.ppo.rounds,
        "sftDone": observed.sft_done,
        "evalDone": observed.eval_done,
        "detail": decision.message,
    }


def _list(store, as_json: bool) -> int:
    from rich.table import Table

    from therapy_rlhf.store.runs import list_runs, read_frozen_run

    rows = []
    for paths in list_runs(store):
        entry = {"namespace": paths.namespace, "name": paths.run}
        try:
            manifest = read_frozen_run(store, paths)
            entry.update(model=manifest.spec.model.source, **_where(store, paths, manifest))
        except Exception as err:  # one broken run must not hide the others
            entry.update(error=one_line(err).removeprefix("error: "))
        rows.append(entry)
    if as_json:
        print(json.dumps({"store": store.uri, "runs": rows}, indent=2))
        return 0
    console = _console()
    if not rows:
        console.print(f"no runs in {store.uri}")
        return 0
    table = Table(title=f"runs in {store.uri}")
    for col in ("namespace", "run", "model", "rounds done", "at", "detail"):
        table.add_column(col)
    for e in rows:
        if "error" in e:
            table.add_row(e["namespace"], e["name"], "", "", "[red]unreadable[/]", e["error"])
            continue
        table.add_row(e["namespace"], e["name"], e["model"], f"{e['roundsDone']}/{e['rounds']}", e["phase"], e["detail"])
    console.print(table)
    return 0


def _console():
    from rich.console import Console

    # Piped output (scripts, CI logs) gets wide tables instead of 80-column wrapping.
    return Console() if sys.stdout.isatty() else Console(width=200)


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _fluency(r) -> str:
    """The batch's fluency in one cell: log-likelihood under the base, share of dictionary words."""
    if r.fluency_log_likelihood is None and r.dictionary_share is None:
        return "-"
    ll = "-" if r.fluency_log_likelihood is None else f"{r.fluency_log_likelihood:.2f}"
    share = "-" if r.dictionary_share is None else f"{r.dictionary_share:.0%}"
    return f"{ll} / {share}"


def _one(store, paths, as_json: bool) -> int:
    from rich.table import Table

    from therapy_rlhf.feedback.summary import summarize_run

    manifest, rounds = summarize_run(store, paths)
    where = _where(store, paths, manifest)
    fb = manifest.spec.feedback
    if as_json:
        doc = {
            "store": store.uri,
            "namespace": paths.namespace,
            "name": paths.run,
            "model": manifest.spec.model.source,
            "minRaters": fb.min_raters,
            **where,
            "history": [
                {**r.to_dict(), "batchErrors": r.batch_errors, "simulatedRaters": list(r.simulated)} for r in rounds
            ],
        }
        print(json.dumps(doc, indent=2))
        return 0
    console = _console()
    console.print(f"[bold]{paths.namespace}/{paths.run}[/]  model {manifest.spec.model.source}  store {store.uri}")
    steps = []
    if manifest.spec.sft.enabled:
        steps.append(f"sft {'done' if where['sftDone'] else 'not done'}")
    steps.append(f"rounds {where['roundsDone']}/{where['rounds']} updated")
    if manifest.spec.evaluation.enabled:
        steps.append(f"evaluation {'done' if where['evalDone'] else 'not done'}")
    console.print(f"at [bold]{where['phase']}[/]: {where['detail']}  ({', '.join(steps)})")
    if not rounds:
        console.print("no rounds generated yet")
        return 0
    table = Table(title=f"rounds (a response is rated when it has >= {fb.min_raters} rater{'s' if fb.min_raters > 1 else ''})")
    for col, just in (("round", "right"), ("rated", "right"), ("ratings", "right"), ("raters", "left"),
                      ("mean reward", "right"), ("agreement (α)", "right"), ("fluency", "right"), ("gate", "left"),
                      ("updated", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rounds:
        table.add_row(
            str(r.round),
            f"{r.rated}/{r.responses}",
            str(r.ratings),
            ", ".join(f"{who} (SIMULATED)" if who in r.simulated else who for who in r.raters) or "-",
            _fmt(r.mean_reward),
            _fmt(r.agreement),
            _fluency(r),
            "closed" if r.gate_closed else "open",
            "yes" if r.updated else "no",
        )
    console.print(table)
    if any(r.simulated for r in rounds):
        console.print("(SIMULATED) raters are the word-list heuristic for demos and CI, not clinicians.")
    bad = sum(r.batch_errors for r in rounds)
    if bad:
        console.print(f"[yellow]warning: {bad} unreadable line(s) in stored batches (skipped)[/]")
    for r in rounds:
        notes = []
        if r.garbage:
            notes.append(f"{r.garbage} object(s) in the ratings prefix are not usable ratings (skipped)")
        if r.reward_mismatches:
            notes.append(f"{r.reward_mismatches} stored reward(s) disagree with their criteria (recomputed)")
        if r.late:
            notes.append(f"{r.late} rating(s) arrived after the gate closed (kept, marked late, not used)")
        for note in notes:
            console.print(f"[yellow]round {r.round}: {note}[/]")
    if fb.selection.mode != "all":
        for r in rounds:
            model = []
            if r.not_sent:
                model.append(f"{r.not_sent} response(s) not sent to the experts, {r.model_scored} of them model-scored")
            if r.selection_decision:
                model.append(f"selection {r.selection_mode} ({r.selection_decision})")
            if r.safety_flagged:
                model.append(
                    f"{r.safety_flagged} safety-flagged sent outside the budget"
                    + (" [yellow]above safetyCap: crises dominate the batch[/]" if r.safety_cap_exceeded else "")
                )
            if r.reward_model_skill is not None:
                model.append(
                    f"reward model skill {r.reward_model_skill:.3f} (lower bound {_fmt(r.reward_model_skill_lower)}), "
                    f"error {_fmt(r.reward_model_error)} on the experts' fresh ratings"
                    + (" [red]no better than the mean: the next round falls back[/]" if r.reward_model_drifted else "")
                )
            elif r.reward_model_error is not None:
                model.append(f"reward model error {r.reward_model_error:.3f} on the experts' fresh ratings")
            if model:
                console.print(f"round {r.round}: " + "; ".join(model))
    return 0


def run(args: argparse.Namespace) -> int:
    from therapy_rlhf.contracts.spec import SpecError
    from therapy_rlhf.store.backends import StoreError

    try:
        store, paths = resolve(args, args.run)
        if paths is None:
            return _list(store, args.json)
        return _one(store, paths, args.json)
    except (SpecError, StoreError, ValueError) as err:
        print(one_line(err), file=sys.stderr)
        return 1
