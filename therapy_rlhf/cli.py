"""The ``therapy-rlhf`` command line: one entry point, one module per subcommand.

Each module in ``therapy_rlhf.commands`` defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. Modules import their heavy
dependencies (torch, Textual) inside ``run`` so that ``--help`` and the
light commands start fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from therapy_rlhf import __version__

# Order here is the order in --help.
COMMAND_MODULES = [
    "validate",
    "run",
    "status",
    "pending",
    "rate",
    "export",
    "rater_access",
    "rater_key",
    "score",
    "report",
    "tiny_model",
    "crd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="therapy-rlhf",
        description="PPO fine-tuning with a psychologist as the reward function.",
    )
    parser.add_argument("--version", action="version", version=f"therapy-rlhf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"therapy_rlhf.commands.{name}")
        cmd = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
