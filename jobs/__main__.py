"""The job entrypoint: ``python -m therapy_rlhf.jobs <kind> --run-config FILE --round N --store URI``.

    python -m therapy_rlhf.jobs sft --run-config examples/tiny-local.yaml --round 0 --store /tmp/store

``kind`` is sft, generate, ppo, ppo-generate (round N's update and round
N+1's batch in one process) or evaluate; ``FILE`` is the whole run
manifest (YAML or JSON); ``--round`` is 0 for sft/evaluate and 1.. for
generate/ppo/ppo-generate; ``--store`` overrides ``spec.storage``. The kind's module
(``therapy_rlhf.jobs.<kind>``, ``-`` spelled ``_``) is imported only after the clock has started
and the arguments are checked, and its ``main(ctx)`` does the work (see
``common.py`` for the convention).

Executors add ``--expect NAME=SHA256`` (repeatable) and ``--outputs-file
FILE``: with any ``--expect`` the job is in verified mode and refuses a run
config, or any stored input it reads, whose digest is not the one given (or
that has none given); after its work it writes the digests of its outputs to
FILE, the channel its executor reads (``therapy_rlhf.store.integrity``, ``verify.py``).

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
import sys
import traceback

# stdlib only: read before the clock starts
from therapy_rlhf.contracts.jobkinds import JOB_KINDS, RUN_LEVEL_KINDS

EXIT_FAILED = 1
EXIT_INTERNAL = 2
EXIT_USAGE = 64
MAX_ROUND = 9999  # therapy_rlhf.contracts.layout.MAX_ROUND (not imported before the clock starts)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, like every other failure
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m therapy_rlhf.jobs", description="Run one therapy-rlhf job.")
    parser.add_argument("kind", choices=JOB_KINDS)
    parser.add_argument("--run-config", required=True, metavar="FILE", help="Run manifest (YAML or JSON).")
    parser.add_argument("--round", required=True, type=int, metavar="N", help="0 for sft/evaluate, 1.. otherwise.")
    parser.add_argument("--store", metavar="URI", help="Store URI (s3://bucket/prefix or a directory); default spec.storage.")
    parser.add_argument(
        "--expect", action="append", default=[], metavar="NAME=SHA256",
        help="Digest the executor recorded for an input ('run-config' or a key under the run, e.g. "
        "rounds/0001/gate.json); with any, every input the job reads must match one.",
    )
    parser.add_argument("--outputs-file", metavar="FILE", help="Write the digests of the job's outputs here (JSON).")
    parser.add_argument(
        "--private-dir", metavar="DIR",
        help="The executor's private folder: the reward model's predictions wait there for the gate (local runner).",
    )
    return parser


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text


def _fail(line: str, code: int, outputs_file: str | None) -> int:
    """Print the one error line; also after a report already in the outputs file (ppo-generate
    reports its update before it samples), where Kubernetes reads the pod's termination message
    from that file instead of the log: the report stays on its first line, the reason follows."""
    print(line, file=sys.stderr)
    if outputs_file:
        try:
            with open(outputs_file, "r+", encoding="utf-8") as report:
                if report.read().strip():
                    report.write(line + "\n")
        except OSError:
            pass
    return code


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.kind in RUN_LEVEL_KINDS and args.round != 0:
        print(f"error: --round must be 0 for {args.kind} (got {args.round})", file=sys.stderr)
        return EXIT_USAGE
    if args.kind not in RUN_LEVEL_KINDS and args.round < 1:
        print(f"error: --round must be 1 or more for {args.kind} (got {args.round})", file=sys.stderr)
        return EXIT_USAGE
    if args.round > MAX_ROUND:  # the store layout numbers rounds with four digits
        print(f"error: --round must be at most {MAX_ROUND} (got {args.round})", file=sys.stderr)
        return EXIT_USAGE
    from therapy_rlhf.jobs.common import JobContext, JobError, configure_cpu_threads, detect_device, quiet_libraries

    quiet_libraries()
    from therapy_rlhf.store.integrity import parse_expect
    from therapy_rlhf.jobs import memory_check
    from therapy_rlhf.jobs.verify import JobStore, protected_inputs, report_outputs, verify_run_config
    from therapy_rlhf.contracts.layout import RunPaths
    from therapy_rlhf.contracts.records import RecordError
    from therapy_rlhf.contracts.spec import SpecError, parse_run_document, read_document
    from therapy_rlhf.store.backends import StoreError, store_for_spec

    expected = (JobError, SpecError, RecordError, StoreError, ValueError)
    ctx = None
    try:
        # The run config: read once, checked against the executor's digest, parsed from those bytes.
        expect = parse_expect(args.expect)
        try:
            text = read_document(args.run_config)
            verify_run_config(text, args.run_config, expect)
            manifest = parse_run_document(text, args.run_config)
        except SpecError as err:
            raise JobError(f"invalid run config: {'; '.join(err.problems)} ({args.run_config})") from None
        paths = RunPaths(manifest.namespace, manifest.name)
        store = JobStore(
            store_for_spec(manifest.spec.storage, args.store),
            paths,
            protected_inputs(args.kind, args.round, manifest.spec, paths, expect),
        )
        ctx = JobContext(kind=args.kind, manifest=manifest, round=args.round, store=store, outputs_file=args.outputs_file,
                         private_dir=args.private_dir)
        ctx.progress("run %s/%s, store %s", manifest.namespace, manifest.name, store.uri)
        module = importlib.import_module(f"therapy_rlhf.jobs.{args.kind.replace('-', '_')}")
        ctx.device = detect_device()
        threads = configure_cpu_threads(ctx.device)
        ctx.progress("device %s%s", ctx.device, f", {threads} CPU thread(s)" if threads else "")
        memory_check.check(ctx)  # refuse a plan that cannot fit before anything is downloaded
        module.main(ctx)
        if ctx.is_main_process:
            report_outputs(store, args.kind, args.round, args.outputs_file, lambda line: ctx.progress("%s", line))
        ctx.progress("done: %s", json.dumps(ctx.timings()))  # bench/jobs_bench.py parses this line
        return 0
    except expected as err:
        return _fail(f"error: {_one_line(err)}", EXIT_FAILED, args.outputs_file)
    except MemoryError:
        return _fail("error: out of memory", EXIT_FAILED, args.outputs_file)
    except Exception as err:  # a bug: keep the traceback in the log, one line for the operator
        traceback.print_exc(file=sys.stdout)
        if type(err).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError: a sizing problem, not a bug
            return _fail(f"error: GPU out of memory: {_one_line(err)[:300]}", EXIT_FAILED, args.outputs_file)
        return _fail(f"error: internal: {type(err).__name__}: {_one_line(err)}", EXIT_INTERNAL, args.outputs_file)
    finally:
        if ctx is not None:
            ctx.close()


if __name__ == "__main__":
    sys.exit(run())
