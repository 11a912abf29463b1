"""therapy-rlhf report RUN: print a run's evaluation table and where its reward curve is."""

from __future__ import annotations

import argparse
import sys

NAME = "report"
HELP = "Print the evaluation table (like the paper's Table 1) of a run and the path of its reward curve."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="Run name.")
    parser.add_argument("--store", default="./local-store", help="Store URI (s3://bucket/prefix or a directory; default ./local-store).")
    parser.add_argument("--namespace", default="default", help="Run namespace (default 'default').")


def run(args: argparse.Namespace) -> int:
    from therapy_rlhf.jobs.report import render_markdown
    from therapy_rlhf.layout import RunPaths
    from therapy_rlhf.names import InvalidName
    from therapy_rlhf.store import NotFound, StoreError, open_store

    try:
        paths = RunPaths(args.namespace, args.run)
        store = open_store(args.store)
        results = store.read_json(paths.eval_results())
    except NotFound:
        print(
            f"error: run {args.namespace}/{args.run} has no evaluation results in {args.store} "
            f"({paths.eval_results()} is missing; has the evaluate job finished?)",
            file=sys.stderr,
        )
        return 1
    except (InvalidName, StoreError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not isinstance(results, dict) or not isinstance(results.get("systems"), list):
        print(f"error: {store.describe(paths.eval_results())} is not an evaluation results file", file=sys.stderr)
        return 1
    print(render_markdown(results))
    print(f"Reward curve: {store.describe(paths.eval_reward_curve())}")
    return 0
