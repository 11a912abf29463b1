"""therapy-rlhf crd [--output FILE]: print or write the generated CRD."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from therapy_rlhf.commands._output import write_output

NAME = "crd"
HELP = (
    "Generate the TherapyRLHFRun CustomResourceDefinition from the spec and status models "
    "(stdout, or --output FILE; the repository keeps it in crds/therapyrlhfrun.yaml)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", metavar="FILE", help="Write the CRD here instead of stdout.")
    parser.add_argument(
        "--check",
        action="store_true",
        help="Do not write: exit 1 if --output FILE differs from the generated CRD.",
    )


def run(args: argparse.Namespace) -> int:
    from therapy_rlhf.contracts.crd import render_crd

    text = render_crd()
    if args.check:
        if not args.output:
            print("error: --check needs --output FILE", file=sys.stderr)
            return 1
        try:
            current = Path(args.output).read_text(encoding="utf-8")
        except OSError as err:
            print(f"error: cannot read {args.output}: {err.strerror}", file=sys.stderr)
            return 1
        if current != text:
            print(f"error: {args.output} is out of date; run: therapy-rlhf crd --output {args.output}", file=sys.stderr)
            return 1
        print(f"{args.output}: up to date")
        return 0
    if not args.output:
        sys.stdout.write(text)
        return 0
    error = write_output(args.output, text)
    if error:
        print(error, file=sys.stderr)
        return 1
    print(f"wrote {args.output}")
    return 0
