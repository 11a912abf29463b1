"""Benchmark: from the last rating of a round to the next batch, and a 20-round tiny run, before and after.

    python -m bench.round_latency --before-python /tmp/main/.venv/bin/python            # print only
    python -m bench.round_latency --before-python /tmp/main/.venv/bin/python --write    # + bench/RESULTS.md

"Before" is today's behaviour, measured in the same invocation: ``--before-python``
is the Python of a virtualenv where ``therapy_rlhf`` is installed from a checkout
of the code before this change (a PPO Job and a generate Job per round, every job
a new interpreter, the runner polling every 2 s). "After" is this tree. What is
measured, on this machine, with the tiny Mistral (``examples/tiny-local.yaml``'s
model and sizes; SFT and evaluation off where only rounds matter):

1. local, last rating -> next batch readable by the TUI: ``therapy-rlhf run
   --scoring none`` in its own process; this process plays the psychologist (the
   simulated rater's scores, written from outside the runner as a person's
   would be), stores the last rating of round r, and times until round r+1's
   batch loads with ``ratings.load_round`` (what the TUI reads). Variants:
   before; after with ``--cold-jobs``; after.
2. emulated cluster, the same latency: kmock's Kubernetes API emulator, moto's
   S3 server (own process), the operator in its own process (its default timer: 3 s before issue 22, 1 s since)
   and a Job-runner stand-in (``tests/operator/conftest.py``'s harness: each
   Job's container command run as a new local process, one model cache for all
   Jobs, like a node's warm cache; no image pull, no S3 model download). With
   ``spec.ppo.oneJobPerRound: false`` (today's Job shape) and true (the default).
3. a 20-round tiny run end to end, ``therapy-rlhf run --scoring auto`` (SFT, 20
   rounds, evaluation): wall time, and per job the start-up each job logs
   (process start -> model and data loaded) and its wall time in the runner.

The load average is recorded: the machine is shared and start-up grows with it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import importlib.util
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "RESULTS.md"
SECTION = "## Round latency and start-up (issue 13)"
TINY_EXAMPLE = REPO / "examples" / "tiny-local.yaml"
DONE_RE = re.compile(r"\[(?P<kind>[\w-]+) r(?P<round>\d+)\] done: (?P<json>\{.*\})")
FINISHED_RE = re.compile(r"(?P<kind>[\w-]+) job finished in (?P<seconds>[0-9.]+)s")
ROUND_KINDS = ("generate", "ppo", "ppo-generate")

from therapy_rlhf.contracts.layout import RunPaths  # noqa: E402
from therapy_rlhf.feedback.rounds import load_round  # noqa: E402
from therapy_rlhf.feedback.simrater import rate_round  # noqa: E402
from therapy_rlhf.contracts.spec import parse_run  # noqa: E402
from therapy_rlhf.store.backends import LocalStore, S3Store  # noqa: E402


# ---------------------------------------------------------------- helpers


def tiny_doc(name: str, rounds: int, sft: bool, evaluation: bool, storage: dict | None = None) -> dict:
    doc = yaml.safe_load(TINY_EXAMPLE.read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["ppo"]["rounds"] = rounds
    doc["spec"]["sft"]["enabled"] = sft
    doc["spec"]["evaluation"]["enabled"] = evaluation
    if not sft:
        doc["spec"]["evaluation"]["checkpoints"] = ["base", "final"]
    if storage is not None:
        doc["spec"]["storage"] = storage
    return doc


def wait(predicate, timeout: float, what: str, poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def readable(store, paths: RunPaths, round_no: int) -> bool:
    """Round r's batch as the TUI reads it."""
    if not store.exists(paths.batch(round_no)):
        return False
    return bool(load_round(store, paths, round_no).responses)


def summary(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.2f} s, max {max(xs):.2f} s (n={len(xs)})"


def job_rows(cache: Path, run: str, console: str) -> list[dict]:
    """Per job: kind, round, start-up and work (the job's own 'done:' line), wall (the runner's line)."""
    rows = []
    for log in sorted(cache.glob(f"runner/**/default/{run}/logs/*.log")):
        for line in log.read_text(errors="replace").splitlines():
            m = DONE_RE.search(line)
            if m:
                rows.append({"kind": m["kind"], "round": int(m["round"]), **json.loads(m["json"])})
    walls = [(m["kind"], float(m["seconds"])) for m in FINISHED_RE.finditer(console)]
    return rows + [{"kind": kind, "wall": seconds} for kind, seconds in walls]


def progress(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


# ------------------------------------------------------------------ local


def scoring_flag(python: str) -> str:
    """``--scoring`` (issue 11's name for how batches are scored); older checkouts call it ``--rater``."""
    out = subprocess.run([python, "-m", "therapy_rlhf.cli", "run", "--help"], capture_output=True, text=True).stdout
    return "--scoring" if "--scoring" in out else "--rater"


def local_latency(python: str, extra: list[str], rounds: int, cache: Path, tmp: Path, label: str) -> dict:
    name = f"latency-{uuid.uuid4().hex[:6]}"
    doc = tiny_doc(name, rounds, sft=False, evaluation=False)
    run_file = tmp / f"{name}.yaml"
    run_file.write_text(yaml.safe_dump(doc))
    store_dir = tmp / f"{name}-store"
    store, manifest, paths = LocalStore(store_dir), parse_run(doc), RunPaths("default", name)
    env = dict(os.environ, THERAPY_RLHF_CACHE=str(cache))
    env.pop("THERAPY_RLHF_WARM_WORKER", None)
    cmd = [python, "-m", "therapy_rlhf.cli", "run", str(run_file), scoring_flag(python), "none", "--store", str(store_dir), *extra]
    err = open(tmp / f"{name}.err", "w")
    proc = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=err)
    samples = []
    try:
        for r in range(1, rounds + 1):
            wait(lambda: readable(store, paths, r), 600, f"{label}: round {r}'s batch")
            rate_round(store, paths, manifest, r)  # the last rating of round r is stored when this returns
            if r == rounds:
                break
            start = time.perf_counter()
            wait(lambda: readable(store, paths, r + 1), 600, f"{label}: round {r + 1}'s batch", poll=0.01)
            samples.append(time.perf_counter() - start)
        code = proc.wait(600)
    finally:
        if proc.poll() is None:
            proc.kill()
        err.close()
    if code != 0:
        raise SystemExit(f"{label}: run failed (exit {code}); see {tmp / (name + '.err')}")
    progress(f"local, {label}: {summary(samples)}")
    return {"label": label, "samples": samples}


# --------------------------------------------------------- emulated cluster


def _harness():
    """tests/operator/conftest.py's Cluster (the Job-runner stand-in), loaded as a module."""
    spec = importlib.util.spec_from_file_location("operator_harness", REPO / "tests" / "operator" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.asynccontextmanager
async def emulated_cluster(tmp: Path, cluster_class=None, operator_env: dict[str, str] | None = None):
    """moto's S3 server and the operator in their own processes, kmock's emulator and the Job-runner
    harness here (``cluster_class``: the harness's Cluster or a subclass); yields (cluster, store, storage)."""
    import aiohttp
    import boto3
    import kmock
    from tests.support.kube_emulator import Emulator, register_resources, write_kubeconfig

    cluster_class = cluster_class or _harness().Cluster
    progress("emulated cluster: starting moto, the emulator and the operator")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    wait(lambda: _up(endpoint), 60, "moto's S3 server", poll=0.1)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    bucket = f"latency-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    store = S3Store(bucket, "bench", endpoint_url=endpoint)
    storage = {"bucket": bucket, "prefix": "bench", "endpoint": endpoint, "region": "us-east-1",
               "credentialsSecret": {"name": "s3-creds"}}
    try:
        async with Emulator() as emulator, kmock.Server(emulator) as server, aiohttp.ClientSession() as http:
            register_resources(emulator)
            url = str(server.url).rstrip("/")
            cluster = cluster_class(emulator, url, tmp, standin=False)
            cluster.session = http
            await cluster.create_secret("s3-creds", {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"})
            # The node's warm model cache: the tiny model is built before any Job is timed.
            from therapy_rlhf.jobs.tiny import tiny_model_dir

            (tmp / "shared-cache").mkdir(exist_ok=True)
            tiny_model_dir("mistral", tmp / "shared-cache")
            controllers = asyncio.create_task(cluster.controllers())
            env = dict(os.environ, KUBECONFIG=str(write_kubeconfig(tmp / "kubeconfig", url)), **(operator_env or {}))
            env.pop("KUBERNETES_SERVICE_HOST", None)
            log = open(tmp / "operator.log", "w")
            operator = subprocess.Popen([sys.executable, "-m", "therapy_rlhf.operator", "--all-namespaces"],
                                        env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                yield cluster, store, storage
            finally:
                operator.terminate()
                try:  # the emulator must keep serving while kopf shuts down
                    await asyncio.to_thread(operator.wait, 30)
                except subprocess.TimeoutExpired:
                    operator.kill()
                log.close()
                controllers.cancel()
                for task in cluster.started.values():
                    task.cancel()
                await asyncio.gather(controllers, *cluster.started.values(), return_exceptions=True)
                import gc

                gc.collect()  # finished Jobs' subprocess transports, while their loop still runs
    finally:
        moto.terminate()
        moto.wait(10)


async def cluster_latency(rounds: int, modes: list[tuple[str, bool]], tmp: Path) -> list[dict]:
    async with emulated_cluster(tmp) as (cluster, store, storage):
        return [await _cluster_mode(cluster, store, storage, rounds, label, one_job) for label, one_job in modes]


def _up(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
        return True
    except OSError:
        return False


async def _cluster_mode(cluster, store, storage, rounds, label, one_job) -> dict:
    name = f"lat-{'one' if one_job else 'two'}-{uuid.uuid4().hex[:4]}"
    doc = tiny_doc(name, rounds, sft=False, evaluation=False, storage=storage)
    doc["spec"]["ppo"]["oneJobPerRound"] = one_job
    doc["spec"]["resources"].update(cpu="1", memory="1Gi")
    manifest, paths = parse_run(doc), RunPaths("default", name)
    await cluster.create_run(name, doc["spec"])

    async def until(predicate, what, poll=0.02):
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if await asyncio.to_thread(predicate):
                return
            await asyncio.sleep(poll)
        raise SystemExit(f"timed out waiting for {what}")

    samples = []
    for r in range(1, rounds):
        await until(lambda: readable(store, paths, r), f"{label}: round {r}'s batch", poll=0.1)
        await asyncio.to_thread(rate_round, store, paths, manifest, r)
        start = time.perf_counter()
        await until(lambda: readable(store, paths, r + 1), f"{label}: round {r + 1}'s batch")
        samples.append(time.perf_counter() - start)
    jobs = sorted(j["metadata"]["name"].removeprefix(name + "-") for j in await cluster.jobs()
                  if j["metadata"]["name"].startswith(name + "-"))
    progress(f"emulated cluster, {label}: {summary(samples)}")
    return {"label": label, "samples": samples, "jobs": jobs}


# ---------------------------------------------------------- 20-round run


def full_run(python: str, extra: list[str], rounds: int, cache: Path, tmp: Path, label: str) -> dict:
    name = f"full-{uuid.uuid4().hex[:6]}"
    doc = tiny_doc(name, rounds, sft=True, evaluation=True)
    run_file = tmp / f"{name}.yaml"
    run_file.write_text(yaml.safe_dump(doc))
    env = dict(os.environ, THERAPY_RLHF_CACHE=str(cache))
    env.pop("THERAPY_RLHF_WARM_WORKER", None)
    cmd = [python, "-m", "therapy_rlhf.cli", "run", str(run_file), scoring_flag(python), "auto", "--store", str(tmp / f"{name}-store"), *extra]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{label}: run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    progress(f"{rounds}-round run, {label}: {wall:.1f} s")
    return {"label": label, "wall": wall, "load": (load, os.getloadavg()[0]), "rows": job_rows(cache, name, proc.stderr)}


# ----------------------------------------------------------------- report


def render(args, local: list[dict], cluster: list[dict], full: list[dict], loads: tuple[float, float]) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        SECTION,
        "",
        f"`python -m bench.round_latency --before-python {args.before_python}` ({when}, shared 2-CPU dev machine, "
        f"no GPU, Python {sys.version.split()[0]}; load average {loads[0]:.1f} at the start, {loads[1]:.1f} at the end). "
        f"Before = {args.before_label}, run from its own virtualenv in the same invocation; after = this tree. "
        "Tiny Mistral of `examples/tiny-local.yaml`. Targets on this machine: per-job start-up < 0.5 s locally, "
        "last rating -> next batch < 3 s locally, the 20-round run < 60 s.",
        "",
        f"### Last rating -> next batch readable by the TUI (rounds of {args.rounds}, {args.rounds - 1} samples each)",
        "",
        "| where | variant | latency |",
        "|---|---|---|",
        *[f"| local runner (`--scoring none`) | {r['label']} | {summary(r['samples'])} |" for r in local],
        *[f"| emulated cluster (operator, default timer, Job-runner stand-in) | {r['label']} (Jobs: {', '.join(r['jobs'])}) "
          f"| {summary(r['samples'])} |" for r in cluster],
        "",
        f"### {args.full_rounds}-round tiny run end to end (`--scoring auto`: SFT, {args.full_rounds} rounds, evaluation)",
        "",
        "| variant | wall | jobs | mean start-up, round jobs | max start-up, round jobs | mean start-up, all jobs | mean job wall in the runner |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in full:
        done = [x for x in r["rows"] if "startup_seconds" in x]
        rounds = [x["startup_seconds"] for x in done if x["kind"] in ROUND_KINDS]
        walls = [x["wall"] for x in r["rows"] if "wall" in x]
        out.append(
            f"| {r['label']} | **{r['wall']:.1f} s** | {len(done)} | {mean(rounds):.2f} s | {max(rounds):.2f} s | "
            f"{mean(x['startup_seconds'] for x in done):.2f} s | {mean(walls):.2f} s |"
        )
    return "\n".join(out) + "\n"


def write_section(text: str, section: str = SECTION) -> None:
    """Replace ``section`` of bench/RESULTS.md with ``text`` (or append it)."""
    current = RESULTS.read_text()
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text.rstrip() + "\n\n", current) if pattern.search(current) else current.rstrip() + "\n\n" + text
    RESULTS.write_text(new)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before-python", required=True, help="Python of a virtualenv with the code before this change.")
    parser.add_argument("--before-label", default="main before this change", help="What 'before' is, for the report.")
    parser.add_argument("--rounds", type=int, default=4, help="Rounds per latency run (rounds - 1 samples).")
    parser.add_argument("--full-rounds", type=int, default=20)
    parser.add_argument("--skip-cluster", action="store_true")
    parser.add_argument("--write", action="store_true", help=f"Update '{SECTION}' in bench/RESULTS.md.")
    args = parser.parse_args()
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="round-latency-") as tmp_name:
        tmp = Path(tmp_name)
        cache = tmp / "cache"
        subprocess.run([sys.executable, "-c", f"from therapy_rlhf.jobs.tiny import tiny_model_dir; tiny_model_dir('mistral', {str(cache)!r})"],
                       check=True, capture_output=True)
        me = sys.executable
        local = [
            local_latency(args.before_python, [], args.rounds, cache, tmp, "before"),
            local_latency(me, ["--cold-jobs"], args.rounds, cache, tmp, "after, `--cold-jobs` (one Job per round, new interpreter per job)"),
            local_latency(me, [], args.rounds, cache, tmp, "after (one Job per round, warm worker)"),
        ]
        cluster = []
        if not args.skip_cluster:
            (tmp / "cluster").mkdir()
            modes = [("separate Jobs (`oneJobPerRound: false`, today's shape)", False), ("one Job per round", True)]
            cluster = asyncio.run(cluster_latency(args.rounds, modes, tmp / "cluster"))
        full = [
            full_run(args.before_python, [], args.full_rounds, cache, tmp, "before"),
            full_run(me, [], args.full_rounds, cache, tmp, "after"),
        ]
    loads.append(os.getloadavg()[0])
    text = render(args, local, cluster, full, tuple(loads))
    print(text)
    if args.write:
        write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
