"""Benchmark: where the time from the last rating to the next batch goes on the emulated cluster.

    python -m bench.cluster_round_steps                       # this tree's operator defaults
    python -m bench.cluster_round_steps --interval 3          # the timer interval before issue 22
    python -m bench.cluster_round_steps --rounds 4 --write    # + a section in bench/RESULTS.md

The set-up of ``bench/round_latency.py``'s emulated cluster (kmock's Kubernetes
emulator, moto's S3 server in its own process, the operator in its own process,
``tests/operator/conftest.py``'s harness as the Job controller: each Job's
container command run as a new local process, one warm model cache for all
Jobs), the tiny Mistral of ``examples/tiny-local.yaml``, one Job per round (the
default). Each round this process plays the psychologist (the simulated
rater's scores written from outside, once the Job that wrote the batch has
exited, as it has long before a person finishes a round), and timestamps each
step until round r+1's batch loads as the TUI loads it:

1. last rating stored -> the operator's next tick has closed the gate (gate.json exists);
2. gate.json -> the ppo-generate Job exists in the API;
3. Job exists -> the harness (the "kubelet") has started its process;
4. process start -> the job's own "start-up done" line (imports, model, data, inputs verified);
5. -> its update is stored (the policy's metrics.json), 6. -> its batch is written;
7. batch written -> readable by the TUI (``ratings.load_round``).

Steps 4-6 come from the job's own UTC-timestamped log lines. The machine's
load average is recorded: a cold interpreter importing torch is most of step
4, and it grows with the load more than anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.round_latency import _harness, emulated_cluster, readable, tiny_doc, write_section
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.contracts.spec import parse_run
from therapy_rlhf.feedback.simrater import rate_round

SECTION = "## Emulated-cluster round latency, step by step (issue 22)"
LINE_RE = re.compile(r"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(?P<ms>\d{3})Z \w+ (?P<msg>.*)$")
STEPS = [
    ("rating", "gate", "last rating -> gate.json written (operator tick)"),
    ("gate", "job", "gate.json -> ppo-generate Job created"),
    ("job", "spawn", "Job created -> its process started (harness as kubelet)"),
    ("spawn", "startup", "process start -> job start-up done (imports, model, inputs)"),
    ("startup", "update", "start-up -> round r's update stored"),
    ("update", "batch", "update stored -> round r+1's batch written"),
    ("batch", "readable", "batch written -> readable by the TUI"),
    ("rating", "readable", "**last rating -> next batch readable**"),
]


def _log_times(log: Path) -> dict[str, float]:
    """Wall-clock times of the job's own milestones, from its UTC log lines."""
    found: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = LINE_RE.match(line)
        if not m:
            continue
        when = calendar.timegm(time.strptime(m["ts"], "%Y-%m-%dT%H:%M:%S")) + int(m["ms"]) / 1000
        msg = m["msg"]
        if "start-up done" in msg:
            found.setdefault("startup", when)
        elif "policy/metrics.json" in msg and "wrote" in msg:
            found.setdefault("update", when)
        elif "batch.jsonl" in msg and "wrote" in msg:
            found.setdefault("batch", when)
    return found


async def _measure(rounds: int, interval: float, tmp: Path) -> tuple[list[dict], str]:
    spawned: dict[str, float] = {}

    class TimedCluster(_harness().Cluster):
        async def _run_job(self, job):
            spawned[job["metadata"]["name"]] = time.time()
            return await super()._run_job(job)

    env = {"THERAPY_RLHF_INTERVAL": str(interval)} if interval else {}
    async with emulated_cluster(tmp, TimedCluster, env) as (cluster, store, storage):
        samples = await _rounds(cluster, store, storage, rounds, spawned, tmp)
    return samples, f"interval {interval:g} s" if interval else "default interval"


async def _rounds(cluster, store, storage, rounds, spawned, tmp) -> list[dict]:
    name = f"steps-{uuid.uuid4().hex[:4]}"
    doc = tiny_doc(name, rounds, sft=False, evaluation=False, storage=storage)
    doc["spec"]["resources"].update(cpu="1", memory="1Gi")
    manifest, paths = parse_run(doc), RunPaths("default", name)
    await cluster.create_run(name, doc["spec"])

    async def until(predicate, what):
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            value = await predicate()
            if value:
                return time.time()
            await asyncio.sleep(0.02)
        raise SystemExit(f"timed out waiting for {what}")

    async def job_exists(job: str):
        return any(j["metadata"]["name"] == job for j in await cluster.jobs())

    async def jobs_finished():
        jobs = [j for j in await cluster.jobs() if j["metadata"]["name"].startswith(name + "-")]
        return bool(jobs) and all((j.get("status") or {}).get("conditions") for j in jobs)

    samples = []
    for r in range(1, rounds):
        await until(lambda: asyncio.to_thread(readable, store, paths, r), f"round {r}'s batch")
        # At a person's pace: the Job that wrote the batch has exited (and been reported) before the last
        # rating lands. Rated the instant the batch appears, the gate would wait for that report.
        await until(jobs_finished, "the Job that wrote the batch to finish")
        await asyncio.to_thread(rate_round, store, paths, manifest, r)
        t = {"rating": time.time()}
        job = f"{name}-ppo-generate-r{r}-a1"
        gate = asyncio.create_task(until(lambda: asyncio.to_thread(store.exists, paths.gate(r)), "the gate"))
        created = asyncio.create_task(until(lambda: job_exists(job), "the Job"))
        t["readable"] = await until(lambda: asyncio.to_thread(readable, store, paths, r + 1), f"round {r + 1}'s batch")
        t["gate"], t["job"] = await gate, await created
        t["spawn"] = spawned[job]
        while not (logs := sorted(tmp.glob(f"{job}-*/log.txt"))):  # written when the process exits
            await asyncio.sleep(0.05)
        t.update(_log_times(logs[0]))
        samples.append(t)
        print(" ".join(f"{a}->{b} {t[b] - t[a]:.2f}s" for a, b, _ in STEPS if a in t and b in t), file=sys.stderr, flush=True)
    return samples


def render(runs: list[tuple[str, list[dict]]], loads: tuple[float, float], command: str) -> str:
    head = "| step | " + " | ".join(label for label, _ in runs) + " |"
    lines = [
        SECTION, "",
        f"`{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, shared 2-CPU machine, no GPU; "
        f"load average {loads[0]:.1f} at the start, {loads[1]:.1f} at the end). Median (max) seconds over the rounds.",
        "", head, "|---|" + "---|" * len(runs),
    ]
    for a, b, label in STEPS:
        cells = []
        for _, samples in runs:
            xs = [s[b] - s[a] for s in samples if a in s and b in s]
            cells.append(f"{statistics.median(xs):.2f} ({max(xs):.2f})" if xs else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="Rounds per run (rounds - 1 samples).")
    parser.add_argument("--interval", type=float, action="append",
                        help="THERAPY_RLHF_INTERVAL of the operator; repeat to compare (default: the operator's default).")
    parser.add_argument("--write", action="store_true", help=f"Update '{SECTION}' in bench/RESULTS.md.")
    args = parser.parse_args()
    loads = [os.getloadavg()[0]]
    runs = []
    for interval in args.interval or [0.0]:
        with tempfile.TemporaryDirectory(prefix="cluster-steps-") as tmp:
            samples, label = asyncio.run(_measure(args.rounds, interval, Path(tmp)))
            runs.append((label, samples))
    loads.append(os.getloadavg()[0])
    text = render(runs, (loads[0], loads[1]), "python -m bench.cluster_round_steps " + " ".join(sys.argv[1:]))
    print(text)
    if args.write:
        write_section(text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
