"""therapy-rlhf report RUN: print a run's evaluation table and where its reward curve is.

Each way a report can be missing is told apart: no such run (the store holds
others), the wrong store (it holds no runs, or does not exist), evaluation
disabled in the spec (the reward curve and the per-round table are still
written, to ``--output``), and an evaluation that has not finished yet.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from therapy_rlhf.commands._target import add_store_arguments, one_line, resolve

NAME = "report"
HELP = "Print the evaluation table (like the paper's Table 1) of a run and the path of its reward curve."

CURVE_FILE = "reward_curve.png"
ROUNDS_FILE = "report.md"


class EvaluationNotFinished(Exception):
    """The run's evaluation is enabled but its results are not in the store yet."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="NAME, NAMESPACE/NAME or a manifest file.")
    add_store_arguments(parser)
    parser.add_argument(
        "--output",
        metavar="DIR",
        help="For a run with evaluation disabled: where the reward curve and per-round table are written "
        "(default: ./RUN-report).",
    )


def run(args: argparse.Namespace) -> int:
    from therapy_rlhf.jobs.report import render_markdown
    from therapy_rlhf.store.runs import read_frozen_run
    from therapy_rlhf.contracts.spec import SpecError
    from therapy_rlhf.store.backends import StoreError

    try:
        store, paths = resolve(args, args.run)
        manifest = read_frozen_run(store, paths)  # no such run / wrong store: says which
        if not manifest.spec.evaluation.enabled:
            return _without_evaluation(args, store, paths, manifest)
        if not store.exists(paths.eval_results()):
            raise EvaluationNotFinished
        results = store.read_json(paths.eval_results())
    except EvaluationNotFinished:
        print(
            f"error: the evaluation of {paths.namespace}/{paths.run} has not finished ({paths.eval_results()} "
            f"is not in {store.uri} yet); `therapy-rlhf status {paths.run} --store {store.uri}` shows where the run is",
            file=sys.stderr,
        )
        return 1
    except (SpecError, StoreError, ValueError) as err:
        print(one_line(err), file=sys.stderr)
        return 1
    if not isinstance(results, dict) or not isinstance(results.get("systems"), list):
        print(f"error: {store.describe(paths.eval_results())} is not an evaluation results file", file=sys.stderr)
        return 1
    print(render_markdown(results))
    print(f"Reward curve: {store.describe(paths.eval_reward_curve())}")
    return 0


def _without_evaluation(args: argparse.Namespace, store, paths, manifest) -> int:
    """No comparison table to show, but the rounds' rewards are there: the curve and the table, written locally."""
    from therapy_rlhf.jobs import report

    rounds = manifest.spec.ppo.rounds
    curve = report.reward_curve(store, paths, rounds)
    source = report.rating_source(store, paths, rounds)
    title = f"{paths.run}: {report.curve_title(source)}"
    out = Path(args.output or f"{paths.run}-report")
    out.mkdir(parents=True, exist_ok=True)
    table = report.rounds_table(curve, title)
    (out / ROUNDS_FILE).write_text(table, encoding="utf-8")
    print(
        f"Evaluation is disabled for {paths.namespace}/{paths.run} (spec.evaluation.enabled: false): "
        "no comparison with reference responses. The rounds' rewards:",
    )
    print(table)
    try:
        report.plot_reward_curve(curve, out / CURVE_FILE, title)
        print(f"Reward curve: {out / CURVE_FILE}")
    except ImportError:
        print(f"Reward curve: not drawn (matplotlib is not installed: pip install 'therapy-rlhf[jobs]'); table in {out / ROUNDS_FILE}")
    return 0
