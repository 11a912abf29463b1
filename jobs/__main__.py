"""The job entrypoint: ``python -m therapy_rlhf.jobs <kind> --run-config FILE --round N --store URI``.

    python -m therapy_rlhf.jobs sft --run-config examples/tiny-local.yaml --round 0 --store /tmp/store

``kind`` is sft, generate, ppo or evaluate; ``FILE`` is the whole run
manifest (YAML or JSON); ``--round`` is 0 for sft/evaluate and 1.. for
generate/ppo; ``--store`` overrides ``spec.storage``. The kind's module
(``therapy_rlhf.jobs.<kind>``) is imported only after the clock has started
and the arguments are checked, and its ``main(ctx)`` does the work (see
``common.py`` for the convention).

Progress goes to stdout with UTC timestamps. Any expected failure ends the
process with exit code 1 and ONE line ``error: ...`` on stderr; an unexpected
exception prints its traceback to stdout (the job log) and still one
``error: internal: ...`` line on stderr, exit 2. Under ``accelerate launch``
(``spec.resources.gpus > 1``) every rank runs this same entrypoint.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
import warnings

EXIT_FAILED = 1
EXIT_INTERNAL = 2
EXIT_USAGE = 64
KINDS = ("sft", "generate", "ppo", "evaluate")
ROUND_ZERO_KINDS = ("sft", "evaluate")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, like every other failure
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m therapy_rlhf.jobs", description="Run one therapy-rlhf job.")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--run-config", required=True, metavar="FILE", help="Run manifest (YAML or JSON).")
    parser.add_argument("--round", required=True, type=int, metavar="N", help="0 for sft/evaluate, 1.. otherwise.")
    parser.add_argument("--store", metavar="URI", help="Store URI (s3://bucket/prefix or a directory); default spec.storage.")
    return parser


def _quiet_libraries() -> None:
    # Download/shard progress bars would drown the job log; nothing is downloaded anyway.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    # peft and trl read transformers' deprecated `(is_)gradient_checkpointing` on every
    # model they wrap: warnings per job that nobody running the job can act on.
    warnings.filterwarnings("ignore", message="`(is_)?gradient_checkpointing` is deprecated", category=FutureWarning)
    # Library warnings belong in the job log (stdout), not on stderr where the
    # operator expects at most the one error line.
    def _log_warning(message, category, filename, lineno, file=None, line=None):
        import logging

        text = " ".join(str(message).split())[:300]
        logging.getLogger("therapy_rlhf.jobs").warning("%s: %s", category.__name__, text)

    warnings.showwarning = _log_warning


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.kind in ROUND_ZERO_KINDS and args.round != 0:
        print(f"error: --round must be 0 for {args.kind} (got {args.round})", file=sys.stderr)
        return EXIT_USAGE
    if args.kind not in ROUND_ZERO_KINDS and args.round < 1:
        print(f"error: --round must be 1 or more for {args.kind} (got {args.round})", file=sys.stderr)
        return EXIT_USAGE
    _quiet_libraries()

    from therapy_rlhf.jobs import memory_check
    from therapy_rlhf.jobs.common import JobContext, JobError, configure_cpu_threads, detect_device
    from therapy_rlhf.records import RecordError
    from therapy_rlhf.spec import SpecError, load_run
    from therapy_rlhf.store import StoreError, store_for_spec

    expected = (JobError, SpecError, RecordError, StoreError, ValueError)
    ctx = None
    try:
        try:
            manifest = load_run(args.run_config)
        except SpecError as err:
            raise JobError(f"invalid run config: {'; '.join(err.problems)} ({args.run_config})") from None
        store = store_for_spec(manifest.spec.storage, args.store)
        ctx = JobContext(kind=args.kind, manifest=manifest, round=args.round, store=store)
        ctx.progress("run %s/%s, store %s", manifest.namespace, manifest.name, store.uri)
        module = importlib.import_module(f"therapy_rlhf.jobs.{args.kind}")
        ctx.device = detect_device()
        threads = configure_cpu_threads(ctx.device)
        ctx.progress("device %s%s", ctx.device, f", {threads} CPU thread(s)" if threads else "")
        memory_check.check(ctx)  # refuse a plan that cannot fit before anything is downloaded
        module.main(ctx)
        ctx.progress("done: %s", json.dumps(ctx.timings()))  # bench/jobs_bench.py parses this line
        return 0
    except expected as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return EXIT_FAILED
    except MemoryError:
        print("error: out of memory", file=sys.stderr)
        return EXIT_FAILED
    except Exception as err:  # a bug: keep the traceback in the log, one line for the operator
        traceback.print_exc(file=sys.stdout)
        if type(err).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError: a sizing problem, not a bug
            print(f"error: GPU out of memory: {_one_line(err)[:300]}", file=sys.stderr)
            return EXIT_FAILED
        print(f"error: internal: {type(err).__name__}: {_one_line(err)}", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        if ctx is not None:
            ctx.close()


if __name__ == "__main__":
    sys.exit(run())
