"""Benchmark: how long `run` takes to say a run is finished, and to stop its warm job worker (issue 20).

    python bench/fast_exits.py --before-python /work/main/.venv/bin/python            # print only
    python bench/fast_exits.py --before-python /work/main/.venv/bin/python --write    # + bench/RESULTS.md

"Before" is the code before this change, run from the virtualenv given by
``--before-python`` in the same invocation; "after" is this tree. Measured:

1. ``therapy-rlhf run RUN.yaml`` on a run that already succeeded (a tiny
   Mistral run, 1 round, SFT and evaluation off, finished once by this script
   with ``--scoring auto``): wall time of the whole command, a new process each
   time, as a person typing it again sees it.
2. The warm job worker stopped right after it was started (what a run that
   ends while the worker still imports torch waits for: the rater quit the
   scoring app, the run was finished): ``JobWorkerClient.start()`` with the
   jobs' preload, then ``close()``; the time ``close()`` takes.

The load average is printed: the machine is shared, and start-up grows with it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "RESULTS.md"
SECTION = "## Fast exits (issue 20)"
TINY_EXAMPLE = REPO / "examples" / "tiny-local.yaml"
CLOSE_PROBE = """
import sys, time
from pathlib import Path
from therapy_rlhf.execution.worker_client import JobWorkerClient
worker = JobWorkerClient(["therapy_rlhf.jobs.preload"], True, Path(sys.argv[1]))
worker.start()
time.sleep(0.3)  # the worker is importing torch now
started = time.perf_counter()
worker.close()
print(f"{time.perf_counter() - started:.3f}")
"""


def tiny_run(folder: Path) -> Path:
    doc = yaml.safe_load(TINY_EXAMPLE.read_text())
    doc["metadata"]["name"] = "fast-exit"
    doc["spec"]["storage"] = {"localPath": str(folder / "store")}
    doc["spec"]["sft"] = {"enabled": False}
    doc["spec"]["ppo"]["rounds"] = 1
    doc["spec"]["evaluation"] = {"enabled": False}
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def env_for(folder: Path) -> dict[str, str]:
    return {**os.environ, "THERAPY_RLHF_CACHE": str(folder / "cache"), "OMP_NUM_THREADS": "1"}


def finished_run_seconds(python: str, folder: Path, samples: int) -> list[float]:
    run_file = tiny_run(folder)
    cmd = [python, "-m", "therapy_rlhf.cli", "run", str(run_file)]
    first = subprocess.run([*cmd, "--scoring", "auto"], env=env_for(folder), capture_output=True, text=True, cwd=folder)
    if first.returncode != 0:
        raise SystemExit(f"the tiny run failed with {python}:\n{first.stderr[-2000:]}")
    out = []
    for _ in range(samples):
        started = time.perf_counter()
        done = subprocess.run(cmd, env=env_for(folder), capture_output=True, text=True, cwd=folder)
        out.append(time.perf_counter() - started)
        if done.returncode != 0 or "run succeeded" not in done.stderr:
            raise SystemExit(f"the finished run did not say so ({python}):\n{done.stderr[-2000:]}")
    return out


def close_seconds(python: str, folder: Path, samples: int) -> list[float]:
    out = []
    for i in range(samples):
        done = subprocess.run(
            [python, "-c", CLOSE_PROBE, str(folder / f"worker-{i}.log")], env=env_for(folder), capture_output=True,
            text=True, check=True, cwd=folder,  # not this checkout: `python -c` imports from its working directory
        )
        out.append(float(done.stdout.strip().splitlines()[-1]))
    return out


def describe(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s (n={len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before-python", required=True, help="Python of a virtualenv with the code before the change.")
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--write", action="store_true", help=f"Replace the section '{SECTION}' of bench/RESULTS.md.")
    args = parser.parse_args()
    load_start = os.getloadavg()
    rows = []
    for label, python in (("before", args.before_python), ("after", sys.executable)):
        with tempfile.TemporaryDirectory(prefix="fast-exit-") as tmp:
            finished = finished_run_seconds(python, Path(tmp), args.samples)
            closing = close_seconds(python, Path(tmp), args.samples)
        rows.append((label, finished, closing))
        print(f"{label}: finished run -> {describe(finished)}; worker close while preloading -> {describe(closing)}", flush=True)
    load_end = os.getloadavg()
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    how = (
        f"`python bench/fast_exits.py --before-python {args.before_python} --samples {args.samples}` ({when}, shared "
        f"2-CPU dev machine, no GPU; load average {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end). "
        "Before = the code before issue 20 (its own virtualenv, same invocation); after = this tree. Target: a "
        "finished run says so in under 2 s."
    )
    table = ["| variant | `run` on a finished run (whole command) | worker `close()` while it preloads |", "|---|---|---|"]
    table += [f"| {label} | {describe(f)} | {describe(c)} |" for label, f, c in rows]
    lines = [SECTION, "", how, "", *table, ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        old = RESULTS.read_text()
        start = old.find(SECTION)
        if start >= 0:
            end = old.find("\n## ", start + len(SECTION))
            old = old[:start] + (old[end + 1 :] if end >= 0 else "")
        RESULTS.write_text(old.rstrip("\n") + "\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
