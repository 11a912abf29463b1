"""therapy-rlhf tiny-model --arch mistral|mixtral|llama OUT: write a tiny random-weight model."""

from __future__ import annotations

import argparse
import sys

NAME = "tiny-model"
HELP = "Build a tiny random-weight Mistral, Mixtral or Llama (with BPE tokenizer and chat template) into OUT."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", choices=["mistral", "mixtral", "llama"], default="mistral", help="Architecture (default mistral).")
    parser.add_argument("out", metavar="OUT", help="Directory to create (must not exist or be empty).")


def run(args: argparse.Namespace) -> int:
    from therapy_rlhf.jobs.tiny import build_tiny

    try:
        out = build_tiny(args.arch, args.out)
    except (FileExistsError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"tiny {args.arch} model written to {out}")
    return 0
