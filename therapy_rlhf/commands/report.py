"""therapy-rlhf report RUN: print a run's evaluation table and where its reward curve is."""

from __future__ import annotations

import argparse
import sys

from therapy_rlhf.commands._target import add_store_arguments, one_line, resolve

NAME = "report"
HELP = "Print the evaluation table (like the paper's Table 1) of a run and the path of its reward curve."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="NAME, NAMESPACE/NAME or a manifest file.")
    add_store_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from therapy_rlhf.jobs.report import render_markdown
    from therapy_rlhf.contracts.spec import SpecError
    from therapy_rlhf.store.backends import NotFound, StoreError

    try:
        store, paths = resolve(args, args.run)
        results = store.read_json(paths.eval_results())
    except NotFound:
        print(
            f"error: run {paths.namespace}/{paths.run} has no evaluation results in {store.uri} "
            f"({paths.eval_results()} is missing; has the evaluate job finished?)",
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
