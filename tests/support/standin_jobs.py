"""Stand-in jobs for executor tests: the real job CLI, instant fake artifacts.

    python tests/support/standin_jobs.py <sft|generate|ppo|ppo-generate|evaluate> \
        --run-config RUN.json --round N --store URI
    python -m standin_jobs ...        (with tests/support on PYTHONPATH: the warm worker forks it)

Each kind writes the same keys as the real job, marker last, so the planner,
the local runner and the operator can be tested in seconds. Inputs are read
through the real jobs' ``verify.JobStore`` (``--expect`` digests checked the
same way) and outputs reported the same way (``--outputs-file``). Behaviour for
failure scenarios comes from the environment:

    STANDIN_FAIL="generate:1=2,ppo:2=9"   fail (kind, round) for its first N attempts
    STANDIN_STATE_DIR=/tmp/x              where attempt counters live (required with STANDIN_FAIL)
    STANDIN_SLEEP=0.5                     seconds each job takes
    STANDIN_SKIP_MARKER="ppo:1"           exit 0 without writing the marker
    STANDIN_DIE_AFTER_UPDATE="1,2"        ppo-generate of these rounds: SIGKILL itself between
                                          the update (stored) and the next batch
    STANDIN_HOLD_AFTER_UPDATE=/tmp/go     ppo-generate: wait between the halves until this file exists
    STANDIN_PID_DIR=/tmp/p                each job writes its pid to <dir>/<kind>-<round>-<pid>
    STANDIN_GRANDCHILD=1                  each job first starts a child in its process group that
                                          ignores SIGTERM and sleeps (pid in <dir>/<kind>-<round>-child-<pid>)
    STANDIN_TAMPER="ppo:1=gate"           before reading its inputs, overwrite one of them the
                                          way an attacker with write access to the bucket could
                                          (gate, batch, policy = round r-1's checkpoint, sft)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from therapy_rlhf.contracts import jobkinds
from therapy_rlhf.store.integrity import parse_expect
from therapy_rlhf.jobs.common import JobError
from therapy_rlhf.jobs.verify import JobStore, protected_inputs, report_outputs, verify_run_config
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.rounds import read_batch, read_gate
from therapy_rlhf.contracts.records import PendingResponse, dump_batch
from therapy_rlhf.contracts.spec import parse_run_document, read_document
from therapy_rlhf.store.backends import NotFound, open_store, store_for_spec

RESPONSES = [
    "I'm sorry you're feeling this way. It sounds really hard, and I'm here to listen.",
    "Have you tried just thinking positive?",
    "That sounds painful. Could you tell me a bit more about what has been happening?",
    "Maybe talk to a friend or a therapist about it.",
]


def _attempt(kind: str, round_no: int) -> int:
    state = Path(os.environ["STANDIN_STATE_DIR"])
    state.mkdir(parents=True, exist_ok=True)
    counter = state / f"{kind}-{round_no}"
    n = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(n))
    return n


def _should_fail(kind: str, round_no: int) -> bool:
    spec = os.environ.get("STANDIN_FAIL", "")
    for item in filter(None, spec.split(",")):
        target, _, times = item.partition("=")
        k, _, r = target.partition(":")
        if k == kind and int(r) == round_no:
            return _attempt(kind, round_no) <= int(times)
    return False


def _generate(store, paths, spec, r: int) -> None:
    batch = [
        PendingResponse(
            id=f"r{r:04d}-{p.id}-s{s:02d}",
            round=r,
            prompt_id=p.id,
            prompt=p.text,
            response=RESPONSES[(s + r) % len(RESPONSES)],
            policy=paths.policy_for_round(r, spec.sft.enabled),
        )
        for p in spec.ppo.prompts
        for s in range(spec.ppo.samples_per_prompt)
    ]
    if not store.exists(paths.batch(r)):  # like the real job: a batch is written once, never replaced
        store.create_bytes(paths.batch(r), dump_batch(batch))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind")
    parser.add_argument("--run-config", required=True)
    parser.add_argument("--round", type=int, default=0)
    parser.add_argument("--store")
    parser.add_argument("--expect", action="append", default=[])
    parser.add_argument("--outputs-file")
    parser.add_argument("--private-dir")
    args = parser.parse_args()
    try:
        return run(args)
    except JobError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def run(args) -> int:
    expect = parse_expect(args.expect)
    text = read_document(args.run_config)
    verify_run_config(text, args.run_config, expect)
    manifest = parse_run_document(text, args.run_config)
    spec = manifest.spec
    paths = RunPaths(manifest.namespace, manifest.name)
    inner = open_store(args.store) if args.store else store_for_spec(spec.storage)
    store = JobStore(inner, paths, protected_inputs(args.kind, args.round, spec, paths, expect))
    r = args.round
    _tamper(inner, paths, args.kind, r)
    print(f"standin {args.kind} round {r} starting", flush=True)
    if os.environ.get("STANDIN_PID_DIR"):
        pid_dir = Path(os.environ["STANDIN_PID_DIR"])
        pid_dir.mkdir(parents=True, exist_ok=True)
        if os.environ.get("STANDIN_GRANDCHILD"):  # what a data loader or a launched rank looks like to a stop
            child = subprocess.Popen(
                [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"]
            )
            (pid_dir / f"{args.kind}-{r}-child-{child.pid}").write_text(str(child.pid))
        (pid_dir / f"{args.kind}-{r}-{os.getpid()}").write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("STANDIN_SLEEP", "0")))
    if _should_fail(args.kind, r):
        print(f"error: standin {args.kind} round {r} failed on purpose", file=sys.stderr)
        return 1
    skip_marker = f"{args.kind}:{r}" in os.environ.get("STANDIN_SKIP_MARKER", "").split(",")

    row = jobkinds.TABLE.get(args.kind)
    if row is None:
        print(f"error: unknown job kind {args.kind!r}", file=sys.stderr)
        return 2
    # The job's parts in the table's order (ppo-generate: round r's update, then round r+1's batch).
    for i, part in enumerate(row.parts):
        if i:  # like the real job: the earlier part's outputs are reported before the next part runs
            report_outputs(store, row.parts[i - 1], r, args.outputs_file, lambda line: print(line, flush=True))
            if str(r) in os.environ.get("STANDIN_DIE_AFTER_UPDATE", "").split(","):
                print(f"standin {args.kind} round {r}: dying after the update", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            hold = os.environ.get("STANDIN_HOLD_AFTER_UPDATE")
            while hold and not Path(hold).exists():
                time.sleep(0.05)
        code = PARTS[part](store, paths, spec, r + i if not row.run_level else r, skip_marker and i == 0, with_policy=i == 0)
        if code is not None:
            return code
    report_outputs(store, args.kind, r, args.outputs_file, lambda line: print(line, flush=True))
    print(f"standin {args.kind} round {r} done", flush=True)
    return 0


def _sft(store, paths, spec, r, skip_marker, with_policy=True):
    store.write_json(f"{paths.sft_adapter()}/adapter_config.json", {"standin": True})
    if not skip_marker:
        store.write_json(paths.sft_metrics(), {"train_loss": 1.0, "standin": True})


def _generate_part(store, paths, spec, r, skip_marker, with_policy=True):
    if with_policy:  # a fused job samples from the policy it just trained, already in memory
        _read_policy(store, paths, r, spec)
    if not skip_marker:
        _generate(store, paths, spec, r)


def _ppo(store, paths, spec, r, skip_marker, with_policy=True):
    _read_policy(store, paths, r, spec)
    gate = read_gate(store, paths, r)
    _, _, digest = read_batch(store, paths, r)
    if gate is None or gate.batch_sha256 != digest:
        print(f"error: round {r} has no gate matching its batch", file=sys.stderr)
        return 1
    if spec.sft.enabled:  # the KL reference, as the real job loads it (verified when protected)
        store.list(paths.sft_adapter() + "/")
    if r > 1:
        try:  # Adam's state of round r-1, as the real job resumes it (verified when protected)
            store.read_bytes(paths.optimizer_state(r - 1))
        except NotFound:
            pass
    store.write_json(f"{paths.policy_prefix(r)}/adapter_config.json", {"standin": True})
    store.write_bytes(paths.optimizer_state(r), b"standin optimizer state")
    if skip_marker:
        return 0
    store.write_json(paths.policy_metrics(r), {"mean_reward": gate.mean_reward, "standin": True})


def _evaluate(store, paths, spec, r, skip_marker, with_policy=True):
    store.write_bytes(f"{paths.eval_prefix()}/report.md", b"| model | rouge1 |\n|---|---|\n| base | 0.1 |\n")
    if not skip_marker:
        store.write_json(paths.eval_results(), {"models": {"base": {"rouge1": 0.1}}, "standin": True})


# What each part of a job does, by the job-kind table's names.
PARTS = {jobkinds.SFT: _sft, jobkinds.GENERATE: _generate_part, jobkinds.PPO: _ppo, jobkinds.EVALUATE: _evaluate}


def _tamper(store, paths: RunPaths, kind: str, r: int) -> None:
    """STANDIN_TAMPER: plain PUTs over this job's inputs, as a rater with write access would make."""
    for item in filter(None, os.environ.get("STANDIN_TAMPER", "").split(",")):
        target, _, what = item.partition("=")
        if target != f"{kind}:{r}":
            continue
        if what == "gate":
            forged = store.read_json(paths.gate(r))
            for reward in forged["rewards"].values():
                reward["reward"] = 1.0
            store.write_json(paths.gate(r), forged)
        elif what == "batch":
            store.write_bytes(paths.batch(r), store.read_bytes(paths.batch(r)).replace(b'"response": "', b'"response": "FORGED ', 1))
        elif what == "policy":
            store.write_json(f"{paths.policy_prefix(r - 1)}/adapter_config.json", {"forged": True})
        elif what == "sft":
            store.write_json(f"{paths.sft_adapter()}/adapter_config.json", {"forged": True})
        print(f"standin: tampered with the {what} of {kind} round {r}", flush=True)


def _read_policy(store, paths: RunPaths, r: int, spec) -> None:
    """Read the checkpoint the round samples from, as the real jobs do (verified when protected)."""
    prefix = paths.policy_for_round(r, spec.sft.enabled)
    if prefix and not store.list(prefix + "/"):
        print(f"error: checkpoint missing from the store: nothing under {store.describe(prefix)}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    sys.exit(main())
