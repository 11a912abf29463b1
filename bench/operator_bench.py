"""Operator benchmark against the Kubernetes API emulator (kmock) and S3 (moto).

    python -m bench.operator_bench [--runs 100] [--responses 8] [--trials 5] [--window 60]

The operator runs as its own process, exactly as deployed
(``python -m therapy_rlhf.operator --all-namespaces``, default timer interval
unless ``--interval``), against kmock's emulator and moto's S3 server started
here on loopback. Runs are put straight into AwaitingRatings by writing the
SFT marker and round 1's batch to the store before the run is created, so no
Jobs have to run. Measured:

1. gate latency: seconds from the last rating of a round being written to the
   round's PPO Job existing in the API (``--trials`` runs, one at a time);
2. load: the operator's CPU (user+system, from /proc) and peak RSS while
   ``--runs`` runs await ratings at once, over ``--window`` seconds; then the
   gate latency again for ``--trials`` of those runs.

Prints a Markdown summary; append it to bench/RESULTS.md (## Operator) by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import kmock

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.rounds import load_round
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.contracts.records import PendingResponse, dump_batch
from therapy_rlhf.store.runs import freeze_spec
from therapy_rlhf.feedback.simrater import judge
from therapy_rlhf.contracts.spec import API_GROUP, API_VERSION, PLURAL
from therapy_rlhf.store.backends import S3Store

logging.getLogger("werkzeug").setLevel(logging.ERROR)

NS = "default"
RUNS = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{NS}/{PLURAL}"
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The same emulator set-up as the operator tests.
from tests.support.kube_emulator import Emulator, register_resources, write_kubeconfig
from tests.support.manifests import run_doc, run_manifest


def spec_for(bucket: str, endpoint: str, responses: int) -> dict:
    return {
        "model": {"source": "tiny:mistral"},
        "storage": {"bucket": bucket, "prefix": "bench", "endpoint": endpoint, "region": "us-east-1",
                    "credentialsSecret": {"name": "s3-creds"}},
        "ppo": {"rounds": 2, "samplesPerPrompt": responses,
                "prompts": [{"id": "hopeless", "text": "I'm feeling depressed and hopeless. Can you help me?"}]},
        "resources": {"gpus": 0},
    }


def prepare_store(store: S3Store, name: str, spec: dict, responses: int):
    """Frozen spec, SFT marker and round 1's batch: the run starts out awaiting ratings."""
    manifest = run_manifest(spec, name, NS)
    freeze_spec(store, manifest)
    paths = RunPaths(NS, name)
    store.write_json(paths.sft_metrics(), {"bench": True})
    batch = [PendingResponse(id=f"r0001-hopeless-s{i:02d}", round=1, prompt_id="hopeless",
                             prompt="I'm feeling depressed and hopeless.",
                             response="I'm sorry you're feeling this way; I'm here to listen.")
             for i in range(responses)]
    store.write_bytes(paths.batch(1), dump_batch(batch))
    return manifest, paths


def rate(store, paths, manifest, last: bool) -> None:
    """Rate all responses but the last one (last=False), or just the last one."""
    state = load_round(store, paths, 1)
    targets = state.responses[-1:] if last else state.responses[:-1]
    for response in targets:
        submit_rating(store, paths, state, judge(response, manifest.spec.feedback), manifest.spec.feedback)


def proc_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds user+system, peak RSS bytes) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    peak = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
    return cpu, peak


async def main_async(args) -> str:
    # moto in its own process: in this one it would compete with the emulator for the GIL.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    import urllib.request

    for _ in range(100):
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    import boto3

    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    store = S3Store(bucket, "bench", endpoint_url=endpoint)
    spec = spec_for(bucket, endpoint, args.responses)
    tmp = Path(tempfile.mkdtemp(prefix="operator-bench-"))

    async with Emulator() as emulator, kmock.Server(emulator) as server, aiohttp.ClientSession() as http:
        register_resources(emulator)
        url = str(server.url).rstrip("/")

        async def api(method, path, body=None):
            async with http.request(method, url + path, json=body) as resp:
                return await resp.json(content_type=None)

        await api("POST", f"/api/v1/namespaces/{NS}/secrets", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds", "namespace": NS,
                         "labels": {"rlhf.therapy.dev/credentials": "true"}},  # opted in (admission.py)
            "data": {k: base64.b64encode(b"bench").decode() for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}})
        kubeconfig = write_kubeconfig(tmp / "kubeconfig", url)
        env = dict(os.environ, KUBECONFIG=str(kubeconfig))
        env.pop("KUBERNETES_SERVICE_HOST", None)
        if args.interval:
            env["THERAPY_RLHF_INTERVAL"] = str(args.interval)
        log = open(tmp / "operator.log", "w")
        operator = subprocess.Popen([sys.executable, "-m", "therapy_rlhf.operator", "--all-namespaces"],
                                    env=env, stdout=log, stderr=subprocess.STDOUT)

        async def create(name):
            manifest, paths = await asyncio.to_thread(prepare_store, store, name, spec, args.responses)
            await api("POST", RUNS, run_doc(spec, name, NS, uid=str(uuid.uuid4()), resourceVersion="1", generation=1))
            return manifest, paths

        async def wait(predicate, timeout, what, poll=0.02):
            # Polls share the emulator's event loop with the operator's requests: keep heavy ones rare.
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if await predicate():
                    return
                await asyncio.sleep(poll)
            raise SystemExit(f"timed out waiting for {what}; operator log: {tmp / 'operator.log'}")

        async def awaiting(name, rated):
            status = (await api("GET", f"{RUNS}/{name}")).get("status") or {}
            return status.get("phase") == "AwaitingRatings" and status.get("rated") == rated

        async def gate_latency(name, manifest, paths) -> float:
            await asyncio.to_thread(rate, store, paths, manifest, False)
            await wait(lambda: awaiting(name, f"{args.responses - 1}/{args.responses}"), 120, f"{name} rated n-1", 0.2)
            await asyncio.to_thread(rate, store, paths, manifest, True)
            start = time.monotonic()  # the last rating is stored now
            job = f"{JOBS}/{name}-ppo-r1-a1"

            async def ppo_job():
                return (await api("GET", job)).get("kind") == "Job"

            await wait(ppo_job, 60, f"{name}'s PPO Job")
            return time.monotonic() - start

        try:
            idle = []
            for i in range(args.trials):
                manifest, paths = await create(f"solo-{i}")
                idle.append(await gate_latency(f"solo-{i}", manifest, paths))
            runs = []
            for i in range(args.runs):
                runs.append((f"load-{i:03d}", *(await create(f"load-{i:03d}"))))

            async def all_awaiting():
                items = (await api("GET", RUNS)).get("items") or []
                ready = [r for r in items if r["metadata"]["name"].startswith("load-")
                         and (r.get("status") or {}).get("phase") == "AwaitingRatings"]
                return len(ready) == args.runs

            t_all = time.monotonic()
            await wait(all_awaiting, 900, f"{args.runs} runs awaiting ratings", poll=2.0)
            settle = time.monotonic() - t_all
            cpu0, _ = proc_usage(operator.pid)
            await asyncio.sleep(args.window)
            cpu1, peak = proc_usage(operator.pid)
            loaded = []
            for name, manifest, paths in runs[: args.trials]:
                loaded.append(await gate_latency(name, manifest, paths))
        finally:
            operator.terminate()
            try:  # the emulator must keep serving while kopf shuts down
                await asyncio.to_thread(operator.wait, 30)
            except subprocess.TimeoutExpired:
                operator.kill()
            log.close()
            moto.terminate()
            moto.wait(10)

    interval = args.interval or 3.0
    def fmt(xs):
        return f"median {statistics.median(xs):.2f} s, max {max(xs):.2f} s (n={len(xs)})"
    return "\n".join([
        f"`python -m bench.operator_bench --runs {args.runs} --responses {args.responses} --trials {args.trials} "
        f"--window {args.window}` (timer interval {interval:g} s), {time.strftime('%Y-%m-%d')}, "
        f"{platform.node() or 'host'} ({os.cpu_count()} CPUs, shared), Python {platform.python_version()}; "
        "operator, moto's S3 server and the benchmark (with kmock's emulator) as three processes.",
        "",
        "| measure | result |",
        "|---|---|",
        f"| last rating -> PPO Job created, 1 run | {fmt(idle)} |",
        f"| last rating -> PPO Job created, {args.runs} runs awaiting | {fmt(loaded)} |",
        f"| {args.runs} runs created -> all AwaitingRatings | {settle:.1f} s |",
        f"| operator CPU, {args.runs} runs awaiting | {100 * (cpu1 - cpu0) / args.window:.1f} % of one core "
        f"(over {args.window} s) |",
        f"| operator peak RSS | {peak / 2**20:.0f} MiB |",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--responses", type=int, default=8, help="responses per round")
    parser.add_argument("--trials", type=int, default=5, help="gate-latency samples per setting")
    parser.add_argument("--window", type=float, default=60.0, help="seconds of CPU measurement under load")
    parser.add_argument("--interval", type=float, default=None, help="timer interval (default: the operator's)")
    args = parser.parse_args()
    print(asyncio.run(main_async(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
