"""therapy-rlhf validate FILE...: check run manifests against the spec."""

from __future__ import annotations

import argparse
import sys

from therapy_rlhf.spec import SpecError, load_run

NAME = "validate"
HELP = "Validate TherapyRLHFRun manifests; prints 'ok' per file or field-path errors."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="YAML or JSON run manifests.")


def run(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            load_run(path)
        except SpecError as err:
            failed += 1
            print(str(err), file=sys.stderr)
        else:
            print(f"{path}: ok")
    return 1 if failed else 0
