"""Stand-in jobs for executor tests: the real job CLI, instant fake artifacts.

    python tests/support/standin_jobs.py <sft|generate|ppo|evaluate> \
        --run-config RUN.json --round N --store URI

Each kind writes the same keys as the real job, marker last, so the planner,
the local runner and the operator can be tested in seconds. Behaviour for
failure scenarios comes from the environment:

    STANDIN_FAIL="generate:1=2,ppo:2=9"   fail (kind, round) for its first N attempts
    STANDIN_STATE_DIR=/tmp/x              where attempt counters live (required with STANDIN_FAIL)
    STANDIN_SLEEP=0.5                     seconds each job takes
    STANDIN_SKIP_MARKER="ppo:1"           exit 0 without writing the marker
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from therapy_rlhf.layout import RunPaths
from therapy_rlhf.ratings import read_batch, read_gate
from therapy_rlhf.records import PendingResponse, dump_batch
from therapy_rlhf.spec import load_run
from therapy_rlhf.store import open_store, store_for_spec

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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind")
    parser.add_argument("--run-config", required=True)
    parser.add_argument("--round", type=int, default=0)
    parser.add_argument("--store")
    args = parser.parse_args()
    manifest = load_run(args.run_config)
    spec = manifest.spec
    store = open_store(args.store) if args.store else store_for_spec(spec.storage)
    paths = RunPaths(manifest.namespace, manifest.name)
    r = args.round
    print(f"standin {args.kind} round {r} starting", flush=True)
    time.sleep(float(os.environ.get("STANDIN_SLEEP", "0")))
    if _should_fail(args.kind, r):
        print(f"error: standin {args.kind} round {r} failed on purpose", file=sys.stderr)
        return 1
    skip_marker = f"{args.kind}:{r}" in os.environ.get("STANDIN_SKIP_MARKER", "").split(",")

    if args.kind == "sft":
        store.write_json(f"{paths.sft_adapter()}/adapter_config.json", {"standin": True})
        if not skip_marker:
            store.write_json(paths.sft_metrics(), {"train_loss": 1.0, "standin": True})
    elif args.kind == "generate":
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
        if not skip_marker:
            store.write_bytes(paths.batch(r), dump_batch(batch))
    elif args.kind == "ppo":
        gate = read_gate(store, paths, r)
        _, _, digest = read_batch(store, paths, r)
        if gate is None or gate.batch_sha256 != digest:
            print(f"error: round {r} has no gate matching its batch", file=sys.stderr)
            return 1
        store.write_json(f"{paths.policy_prefix(r)}/adapter_config.json", {"standin": True})
        if not skip_marker:
            store.write_json(paths.policy_metrics(r), {"mean_reward": gate.mean_reward, "standin": True})
    elif args.kind == "evaluate":
        store.write_bytes(f"{paths.eval_prefix()}/report.md", b"| model | rouge1 |\n|---|---|\n| base | 0.1 |\n")
        if not skip_marker:
            store.write_json(paths.eval_results(), {"models": {"base": {"rouge1": 0.1}}, "standin": True})
    else:
        print(f"error: unknown job kind {args.kind!r}", file=sys.stderr)
        return 2
    print(f"standin {args.kind} round {r} done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
