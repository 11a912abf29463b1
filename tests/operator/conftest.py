"""An emulated cluster for the operator: kmock's Kubernetes API over HTTP, moto's
S3 over HTTP, the real operator (kopf) in the test's event loop, and a harness
that plays the two controllers the emulator lacks:

* the Job controller: every Job the operator creates is run as a local
  process -- its container command, its env (secretKeyRef resolved from the
  Secret), its ConfigMap volume written to a temp dir -- and the Job's status
  is written back through the API when the process exits;
* the garbage collector: when a run is deleted, objects whose ownerReferences
  name its uid are deleted.

Most scenarios substitute the lead's stand-in jobs (``tests/support/
standin_jobs.py``, same CLI, instant artifacts) for ``python -m
therapy_rlhf.jobs``; ``Cluster(job_command=None)`` runs the real jobs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest

from therapy_rlhf.contracts.spec import API_GROUP, API_VERSION, PLURAL
from therapy_rlhf.store.backends import S3Store

# Import up front what the operator's thread would otherwise import lazily: CPython
# 3.11.7's compiler is not thread-safe ("AST constructor recursion depth mismatch")
# when pytest rewrites a module in one thread while another thread compiles.
import boto3  # noqa: E402,F401
import botocore.config  # noqa: E402,F401
import hypothesis.control  # noqa: E402,F401
import kopf  # noqa: E402,F401
import prometheus_client  # noqa: E402,F401

import therapy_rlhf.operator.handlers  # noqa: E402,F401

SUPPORT = Path(__file__).resolve().parents[1] / "support"
from tests.support.kube_emulator import Emulator, register_resources, write_kubeconfig

from tests.support.budget import budget
from tests.support.manifests import run_doc

STANDIN = SUPPORT / "standin_jobs.py"
NAMESPACE = "default"
RUNS = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{NAMESPACE}/{PLURAL}"
JOBS = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
SECRET_NAME = "s3-creds"
JOB_ENTRYPOINT = ["python", "-m", "therapy_rlhf.jobs"]
TEST_IMAGES = "therapy-rlhf/jobs-cpu:*"  # the job image the test runs name (an installation allow-list)
OPT_IN = "rlhf.therapy.dev/credentials"


async def _as_awaitable(value):
    """``value`` as an awaitable, for wait_for's async predicates."""
    return value


class Cluster:
    """The emulated cluster plus the controllers the harness plays."""

    # Quiet-machine seconds of the usual waits, scaled by budget(): one step (an operator
    # tick or two, an API round trip) and one phase (a few stand-in Jobs and ticks).
    STEP_SECONDS = 4
    PHASE_SECONDS = 8

    def __init__(self, emulator, url: str, workdir: Path, standin: bool = True, job_env: dict[str, str] | None = None):
        self.emulator = emulator
        self.url = url.rstrip("/")
        self.workdir = workdir
        self.standin = standin
        self.job_env = dict(job_env or {})
        self.session: aiohttp.ClientSession | None = None
        self.started: dict[str, asyncio.Task] = {}
        self.runs_seen: dict[str, str] = {}  # uid -> name
        self.job_log: list[str] = []  # names of Jobs, in creation order, as first seen
        self.paused = False  # while True, new Jobs stay pending (not started)...
        self.released: set[str] = set()  # ...except these, let through one by one with release()
        self._tasks: list[asyncio.Task] = []
        self.operator: tuple[threading.Thread, threading.Event] | None = None

    # -- HTTP ---------------------------------------------------------------
    async def api(self, method: str, path: str, body: Any = None, ok=(200, 201)) -> Any:
        assert self.session is not None
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        async with self.session.request(method, self.url + path, json=body, headers=headers) as resp:
            data = await resp.json(content_type=None)
            if resp.status not in ok:
                raise AssertionError(f"{method} {path}: HTTP {resp.status}: {data}")
            return data

    async def list(self, path: str) -> list[dict[str, Any]]:
        return (await self.api("GET", path)).get("items") or []

    async def jobs(self) -> list[dict[str, Any]]:
        return await self.list(JOBS)

    async def run(self, name: str) -> dict[str, Any]:
        return await self.api("GET", f"{RUNS}/{name}")

    async def events(self) -> list[dict[str, Any]]:
        return await self.list(f"/api/v1/namespaces/{NAMESPACE}/events")

    async def create_run(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = run_doc(spec, name, NAMESPACE, uid=str(uuid.uuid4()), resourceVersion="1", generation=1, creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        return await self.api("POST", RUNS, body)

    async def patch_run(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self.api("PATCH", f"{RUNS}/{name}", patch)

    async def delete(self, path: str) -> None:
        await self.api("DELETE", path)

    async def settle(self, ticks: int = 5) -> None:
        """Wait until the operator has finished ``ticks`` reconcile passes that began after this call
        (``therapy_rlhf_reconciles_total``), so that something checked absent next had that many
        chances to appear, however slow the machine."""
        from prometheus_client import REGISTRY

        def passes() -> float:
            return REGISTRY.get_sample_value("therapy_rlhf_reconciles_total") or 0.0

        start = passes()  # a pass under way now may have read the store before this call: one more
        await self.wait_for(lambda: _as_awaitable(passes() >= start + ticks + 1), budget(self.STEP_SECONDS) * ticks,
                            f"{ticks} operator passes")

    async def create_secret(self, name: str, data: dict[str, str], labels: dict[str, str] | None = None,
                            annotations: dict[str, str] | None = None) -> None:
        """A Secret; by default opted in to being used by runs (the label admission.py asks for)."""
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        meta = {"name": name, "namespace": NAMESPACE, "labels": {OPT_IN: "true"} if labels is None else labels}
        if annotations:
            meta["annotations"] = annotations
        await self.api(
            "POST",
            f"/api/v1/namespaces/{NAMESPACE}/secrets",
            {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": encoded},
        )

    # -- waiting --------------------------------------------------------------
    async def wait_for(self, predicate, timeout: float | None = None, what: str = "condition"):
        """Poll an async predicate until it returns something truthy (default: budget(STEP_SECONDS))."""
        timeout = budget(self.STEP_SECONDS) if timeout is None else timeout
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = await predicate()
            if last:
                return last
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")

    async def wait_reason(self, name: str, reason: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait until one of the run's conditions carries ``reason`` (a refusal, say); returns the run."""
        async def check():
            run = await self.run(name)
            conds = (run.get("status") or {}).get("conditions") or []
            return run if any(c["reason"] == reason for c in conds) else None

        return await self.wait_for(check, timeout, f"run {name} to show reason {reason}")

    async def wait_phase(self, name: str, phase: str, timeout: float | None = None, round_no: int | None = None) -> dict[str, Any]:
        """Wait for a phase (default: budget(PHASE_SECONDS), a few stand-in Jobs and operator ticks)."""
        timeout = budget(self.PHASE_SECONDS) if timeout is None else timeout
        async def check():
            run = await self.run(name)
            status = run.get("status") or {}
            ok = status.get("phase") == phase and (round_no is None or status.get("round") == round_no)
            return run if ok else None

        try:
            return await self.wait_for(check, timeout, f"run {name} to reach {phase}")
        except AssertionError:
            run = await self.run(name)
            raise AssertionError(f"run {name} never reached {phase}; status: {json.dumps(run.get('status'), indent=1)}") from None

    # -- the operator ---------------------------------------------------------
    async def start_operator(self, interval: float = 0.3, config=None, namespaces: list[str] | None = None) -> None:
        """The real operator in its own thread and event loop, as in its own process.

        (kopf cancels every task of its loop on exit; a loop of its own keeps the
        emulator and the harness alive across operator restarts.)
        """
        import kopf

        from therapy_rlhf.operator.config import OperatorConfig
        from therapy_rlhf.operator.handlers import register

        config = config or OperatorConfig(interval=interval, python="python", allowed_images=(TEST_IMAGES,))
        registry = register(kopf.OperatorRegistry(), config)
        stop = threading.Event()
        ready = threading.Event()

        def main() -> None:
            asyncio.run(
                kopf.operator(
                    registry=registry, standalone=True, clusterwide=namespaces is None, namespaces=namespaces or [],
                    stop_flag=stop, ready_flag=ready,
                    memo=kopf.Memo(),
                )
            )

        thread = threading.Thread(target=main, name="operator", daemon=True)
        thread.start()
        self.operator = (thread, stop)
        await asyncio.to_thread(ready.wait, budget(3))

    async def kill_operator(self) -> None:
        """Stop the operator; everything it held in memory is gone, as after a crash."""
        if self.operator is None:
            return
        thread, stop = self.operator
        stop.set()
        await asyncio.to_thread(thread.join, budget(3))
        assert not thread.is_alive(), "the operator did not stop"
        self.operator = None

    # -- the Job controller and garbage collector ------------------------------
    async def controllers(self) -> None:
        while True:
            try:
                await self._sync_jobs()
                await self._collect_garbage()
            except Exception as err:  # keep playing the controllers; say why a pass failed
                logging.getLogger(__name__).warning("harness controller pass failed: %r", err)
            await asyncio.sleep(0.1)

    async def _sync_jobs(self) -> None:
        for job in await self.jobs():
            name = job["metadata"]["name"]
            held = self.paused and name not in self.released
            if name in self.started or held or job.get("status", {}).get("conditions"):
                continue
            self.job_log.append(name)
            self.started[name] = asyncio.create_task(self._run_job(job))

    def release(self, name: str) -> None:
        """While paused, let exactly this Job run; the next one stays pending.

        (Toggling ``paused`` off and on again races the operator: the next Job
        can be created and started inside that window.)
        """
        self.released.add(name)

    async def _run_job(self, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        pod = job["spec"]["template"]["spec"]
        container = pod["containers"][0]
        workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir))
        # Volumes: ConfigMaps are written out; other volumes become empty dirs.
        mounts: dict[str, Path] = {}
        for volume in pod.get("volumes", []):
            local = workdir / volume["name"]
            if volume["name"] == "cache":
                # One model cache for all Jobs, like a node's warm image cache: the
                # tiny model is built once, not per Job.
                local = self.workdir / "shared-cache"
            local.mkdir(exist_ok=True)
            if "configMap" in volume:
                cm = await self.api("GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps/{volume['configMap']['name']}")
                for item in volume["configMap"].get("items") or [{"key": k, "path": k} for k in cm["data"]]:
                    (local / item["path"]).write_text(cm["data"][item["key"]])
            mounts[volume["name"]] = local
        paths = {m["mountPath"]: mounts[m["name"]] for m in container.get("volumeMounts", [])}
        # The kubelet mounts a file for the termination message; what the container writes there is kept.
        termination = workdir / "termination-log"
        termination.touch()
        paths[container.get("terminationMessagePath") or "/dev/termination-log"] = termination

        def localise(arg: str) -> str:
            for mount, local in paths.items():
                if arg == mount or arg.startswith(mount + "/"):
                    return str(local) + arg[len(mount):]
            return arg

        env = {"PATH": os.environ["PATH"], "HOME": str(workdir), **self.job_env}
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = localise(item["value"])
            else:
                ref = item["valueFrom"]["secretKeyRef"]
                secret = await self.api("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/{ref['name']}")
                env[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        command = [localise(a) for a in container["command"]]
        if self.standin and command[:3] == JOB_ENTRYPOINT:
            command = [sys.executable, str(STANDIN), *command[3:]]
        elif command[:1] == ["python"]:
            command = [sys.executable, *command[1:]]
        await self.api("PATCH", f"{JOBS}/{name}/status", {"status": {"active": 1, "startTime": _now()}})
        proc = await asyncio.create_subprocess_exec(
            *command, env=env, cwd=workdir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await proc.communicate()
        (workdir / "log.txt").write_bytes(out)
        await self._record_pod(job, container["name"], proc.returncode, out, termination.read_bytes())
        if proc.returncode == 0:
            status = {"active": 0, "succeeded": 1, "completionTime": _now(),
                      "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": _now()}]}
        else:
            # What the Job controller says; why the pod failed is only on the pod.
            status = {"active": 0, "failed": 1, "conditions": [{
                "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit", "lastTransitionTime": _now()}]}
        with contextlib.suppress(AssertionError):  # the Job may have been deleted meanwhile
            await self.api("PATCH", f"{JOBS}/{name}/status", {"status": status})

    async def _record_pod(self, job: dict[str, Any], container: str, code: int, out: bytes, message: bytes = b"") -> None:
        """The Job's pod as the kubelet leaves it: the termination message is what the container
        wrote to its terminationMessagePath (4096 bytes at most); with FallbackToLogsOnError, a
        failed container that wrote none gets its log's tail (2048 bytes, 80 lines at most)."""
        name = job["metadata"]["name"]
        tail = "\n".join(out.decode(errors="replace").splitlines()[-80:])[-2048:]
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "finishedAt": _now()}
        if message.strip():
            terminated["message"] = message[:4096].decode(errors="replace")
        elif code != 0 and job["spec"]["template"]["spec"]["containers"][0].get("terminationMessagePolicy") == "FallbackToLogsOnError":
            terminated["message"] = tail
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{name}-{uuid.uuid4().hex[:5]}", "namespace": NAMESPACE,
                         "labels": {"job-name": name, "batch.kubernetes.io/job-name": name}},
            "spec": job["spec"]["template"]["spec"],
            "status": {"phase": "Succeeded" if code == 0 else "Failed",
                       "containerStatuses": [{"name": container, "state": {"terminated": terminated}}]},
        }
        with contextlib.suppress(AssertionError):
            await self.api("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", pod)

    async def _collect_garbage(self) -> None:
        runs = {r["metadata"]["uid"] for r in await self.list(RUNS)}
        for path in (JOBS, f"/api/v1/namespaces/{NAMESPACE}/configmaps"):
            for obj in await self.list(path):
                owners = {o.get("uid") for o in obj["metadata"].get("ownerReferences") or []}
                if owners and not owners & runs:
                    with contextlib.suppress(AssertionError):
                        await self.api("DELETE", f"{path}/{obj['metadata']['name']}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@pytest.fixture
async def cluster(tmp_path, s3_endpoint, monkeypatch):
    """The emulated cluster with the Secret in place; the operator is started by the test."""
    async with Emulator() as emulator, kmock.Server(emulator) as server:
        register_resources(emulator)
        url = str(server.url)
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", url)))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        c = Cluster(emulator, url, tmp_path, job_env={"STANDIN_STATE_DIR": str(tmp_path / "standin-state")})
        async with aiohttp.ClientSession() as session:
            c.session = session
            await c.create_secret(SECRET_NAME, {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
            controller = asyncio.create_task(c.controllers())
            try:
                yield c
            finally:
                await c.kill_operator()
                controller.cancel()
                for task in c.started.values():
                    task.cancel()
                await asyncio.gather(controller, *c.started.values(), return_exceptions=True)
    logging.getLogger("kopf").handlers.clear()


@pytest.fixture
def run_spec(s3_bucket, s3_endpoint):
    """A tiny run: SFT, two PPO rounds of 2 responses, evaluation; S3 via the Secret."""

    def make(**overrides: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "model": {"source": "tiny:mistral"},
            "storage": {
                "bucket": s3_bucket,
                "prefix": "therapy-rlhf",
                "endpoint": s3_endpoint,
                "region": "us-east-1",
                "credentialsSecret": {"name": SECRET_NAME},
            },
            "ppo": {
                "rounds": 2,
                "samplesPerPrompt": 2,
                "prompts": [{"id": "hopeless", "text": "I'm feeling depressed and hopeless. Can you help me?"}],
            },
            "evaluation": {"checkpoints": ["base", "sft", "final"]},
            "resources": {"gpus": 0, "cpu": "1", "memory": "1Gi", "image": "therapy-rlhf/jobs-cpu:dev"},
            "backoffLimit": 1,
        }
        for key, value in overrides.items():
            spec[key] = value
        return spec

    return make


@pytest.fixture
def run_store(s3_bucket, s3_endpoint) -> S3Store:
    return S3Store(s3_bucket, "therapy-rlhf", endpoint_url=s3_endpoint)
