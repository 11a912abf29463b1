"""The local runner's job worker: warm jobs are still isolated processes, a crash is a failed
attempt, and signals (to the runner or to the worker) stop everything the run started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import threading
import uuid
from pathlib import Path

import pytest
import yaml
from tests.support.budget import budget
from tests.support.processes import MARK_ENV, kill_marked, marked_processes, wait_until
from rich.console import Console

from therapy_rlhf.execution.worker_client import JobWorkerClient
from therapy_rlhf.planning.planner import StartJob
from therapy_rlhf.execution.runner import LocalRunner
from therapy_rlhf.store.backends import LocalStore
from tests.support.manifests import run_manifest

SUPPORT = Path(__file__).resolve().parents[1] / "support"
STANDIN_SCRIPT = SUPPORT / "standin_jobs.py"


def manifest(tmp_path: Path):
    return run_manifest({
                "model": {"source": "tiny:mistral"},
                "storage": {"localPath": str(tmp_path / "store")},
                "sft": {"enabled": True},
                "ppo": {"rounds": 2, "samplesPerPrompt": 2, "prompts": [{"id": "p", "text": "I feel hopeless."}]},
            }, "demo")


@pytest.fixture
def mark(monkeypatch):
    """A mark in the environment of every process the test starts; whatever is left is killed at the end."""
    value = uuid.uuid4().hex
    monkeypatch.setenv(MARK_ENV, value)
    yield value
    kill_marked(value)


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("THERAPY_RLHF_CACHE", str(tmp_path / "cache"))
    # The stand-ins run as top-level modules of their own folder (never the repository root on a
    # child's PYTHONPATH: its operator/ would shadow the standard library's at start-up).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("STANDIN_STATE_DIR", str(tmp_path / "standin"))


def probe_runner(tmp_path: Path, **kw) -> LocalRunner:
    runner = LocalRunner(
        manifest(tmp_path), LocalStore(tmp_path / "store"), job_command=[sys.executable, "-m", "warm_probe"],
        console=Console(file=open(os.devnull, "w")), **kw,
    )
    runner.prepare()
    return runner


def probe_states(runner: LocalRunner, rounds) -> list[dict]:
    states = []
    for r in rounds:
        log = (runner.work_dir / "logs" / f"probe-r{r}-a1.log").read_text()
        line = next(ln for ln in log.splitlines() if ln.startswith("probe-state: "))
        states.append(json.loads(line.removeprefix("probe-state: ")))
    return states


# ------------------------------------------------------------ isolation


def test_a_job_that_changes_global_torch_state_does_not_affect_the_next(tmp_path, mark):
    warm = probe_runner(tmp_path, preload=("numpy", "torch"))
    try:
        for r in (1, 2):
            warm.run_job(StartJob("probe", r))
        worker_pid = warm.worker.pid
        warm.run_job(StartJob("probe", 3))
        assert warm.worker.pid == worker_pid  # one worker, a fresh child per job
    finally:
        warm.close()
    first, second, third = probe_states(warm, (1, 2, 3))
    cold = probe_runner(tmp_path / "cold", warm=False)
    try:
        cold.run_job(StartJob("probe", 1))
    finally:
        cold.close()
    (fresh,) = probe_states(cold, (1,))

    # Forked from the worker (torch already imported), unlike the cold start.
    assert first["torch_already_imported"] and second["torch_already_imported"]
    assert not fresh["torch_already_imported"]
    # The first job's changes died with it: the next sees what a fresh interpreter sees.
    for key in ("default_dtype", "num_threads", "grad_enabled", "torch_mark", "env_mark"):
        assert first[key] == second[key] == third[key] == fresh[key], key
    assert second["default_dtype"] == "torch.float32" and second["grad_enabled"] is True
    assert second["torch_mark"] is None and second["env_mark"] is None
    # Each job is its own process with its own random streams (reseeded after the fork).
    assert len({first["pid"], second["pid"], third["pid"]}) == 3
    assert len({s["torch_draw"] for s in (first, second, third)}) == 3
    assert len({s["numpy_draw"] for s in (first, second, third)}) == 3
    # The job interface is unchanged: the same arguments reach the job.
    assert second["argv"][:7] == ["probe", "--run-config", str(warm.config_file), "--round", "2", "--store", warm.store.uri]
    assert second["argv"][7:9] == ["--expect", f"run-config={warm.config_sha}"]  # the executor's digests follow
    assert all(warm.jobs[("probe", r)].state == "succeeded" for r in (1, 2, 3))


def test_a_crashed_job_is_a_failed_attempt_and_the_worker_goes_on(tmp_path, mark):
    runner = probe_runner(tmp_path, preload=("numpy", "torch"))
    try:
        runner.run_job(StartJob("crash", 1))
        worker_pid = runner.worker.pid
        crashed = runner.jobs[("crash", 1)]
        assert (crashed.state, crashed.failures) == ("failed", 1)
        assert crashed.reason == "the job process was killed by SIGSEGV"
        runner.run_job(StartJob("probe", 1))
        assert runner.worker.pid == worker_pid and runner.jobs[("probe", 1)].state == "succeeded"
    finally:
        runner.close()
    assert probe_states(runner, (1,))[0]["torch_already_imported"]


def test_a_job_with_another_environment_starts_cold(tmp_path, mark):
    client = JobWorkerClient(preload=["json"])
    client.start()
    try:
        quick = [sys.executable, "-m", "json.tool", "--help"]
        same = client.run(quick, lambda line: None)
        changed = client.run(quick, lambda line: None, env={**os.environ, "SOMETHING_NEW": "1"})
        elsewhere = client.run(quick, lambda line: None, cwd=str(tmp_path))
        script = client.run([sys.executable, "-c", "print('hi')"], lambda line: None)
    finally:
        client.close()
    assert (same.returncode, same.warm) == (0, True)
    assert (changed.returncode, changed.warm) == (0, False)
    assert (elsewhere.returncode, elsewhere.warm) == (0, False)
    assert (script.returncode, script.warm) == (0, False)


def test_a_command_that_cannot_start_is_a_failed_attempt(tmp_path, mark):
    runner = LocalRunner(
        manifest(tmp_path), LocalStore(tmp_path / "store"), job_command=[str(tmp_path / "no-such-launcher")],
        console=Console(file=open(os.devnull, "w")),
    )
    runner.prepare()
    try:
        runner.run_job(StartJob("sft", 0))
    finally:
        runner.close()
    job = runner.jobs[("sft", 0)]
    assert job.state == "failed" and "cannot start the job" in job.reason and "No such file" in job.reason


# --------------------------------------------------------------- signals


def start_cli(tmp_path: Path, mark: str, warm: bool) -> tuple[subprocess.Popen, Path, Path]:
    """`therapy-rlhf run` with stand-in jobs that sleep; returns (process, pid dir, stderr file)."""
    m = manifest(tmp_path)
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump(m.model_dump(mode="json", by_alias=True, exclude_none=True)))
    pid_dir = tmp_path / "pids"
    command = f"{sys.executable} -m standin_jobs" if warm else f"{sys.executable} {STANDIN_SCRIPT}"
    env = {**os.environ, "THERAPY_RLHF_JOB_COMMAND": command, "STANDIN_SLEEP": "600", "STANDIN_PID_DIR": str(pid_dir),
           "STANDIN_GRANDCHILD": "1"}  # each job has a child in its group that ignores SIGTERM
    stderr = tmp_path / "runner.err"
    proc = subprocess.Popen(
        [sys.executable, "-m", "therapy_rlhf.cli", "run", str(run_file), "--scoring", "auto"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(stderr, "w"), stdin=subprocess.DEVNULL,
        # Started as a shell without job control starts a background command: SIGINT ignored.
        # `kill -INT` must stop the runner all the same (CI runs the suite that way).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    wait_until(lambda: len(list(pid_dir.glob("sft-0-*"))) == 2 if pid_dir.is_dir() else None, budget(6),
               "the sft job and its child to start")
    return proc, pid_dir, stderr


@pytest.mark.parametrize(
    "warm,sig",
    [(True, signal.SIGTERM), (True, signal.SIGHUP), (True, signal.SIGINT), (False, signal.SIGTERM), (False, signal.SIGHUP)],
    ids=["warm-SIGTERM", "warm-SIGHUP", "warm-SIGINT", "cold-SIGTERM", "cold-SIGHUP"],
)
def test_a_signal_to_the_runner_stops_its_job_and_worker(tmp_path, mark, warm, sig):
    proc, pid_dir, stderr = start_cli(tmp_path, mark, warm)
    assert len(marked_processes(mark)) >= 4  # the runner, its job worker, the job and the job's child
    proc.send_signal(sig)
    rc = proc.wait(timeout=budget(3))
    assert rc == 128 + sig, stderr.read_text()[-2000:]
    assert f"stopped ({signal.Signals(sig).name if sig != signal.SIGINT else 'Ctrl-C'})" in stderr.read_text()
    wait_until(lambda: not marked_processes(mark), budget(2), "every process of the run to stop")


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
def test_a_killed_runner_takes_its_job_with_it(tmp_path, mark, warm):
    """SIGKILL cannot be caught: the worker sees the runner's socket close and stops the job."""
    proc, pid_dir, _ = start_cli(tmp_path, mark, warm)
    proc.kill()
    proc.wait(timeout=budget(1))
    wait_until(lambda: not marked_processes(mark), budget(2), "the orphaned job and worker to stop")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_worker_stops_its_job(tmp_path, mark, monkeypatch, sig):
    pid_file = tmp_path / "job.pid"
    monkeypatch.setenv("PROBE_PID_FILE", str(pid_file))
    client = JobWorkerClient(preload=["numpy", "torch"])
    client.start()
    outcome = []
    runner = threading.Thread(
        target=lambda: outcome.append(client.run([sys.executable, "-m", "warm_probe", "sleep"], lambda line: None))
    )
    runner.start()
    try:
        job_pid = int(wait_until(lambda: pid_file.is_file() and pid_file.read_text(), budget(6), "the job to start"))
        os.kill(client.pid, sig)
        runner.join(budget(3))
        assert not runner.is_alive()
        assert outcome[0].worker_died and outcome[0].pid == job_pid and outcome[0].warm
        wait_until(lambda: not marked_processes(mark), budget(2), "the worker and its job to stop")
    finally:
        client.close()
        runner.join(budget(1))


# ------------------------------------------------------------ fast exits


def test_a_worker_still_preloading_is_stopped_at_once(tmp_path, mark):
    """A run that ends while the worker imports (a finished run, the rater quit) does not wait for the imports."""
    worker = JobWorkerClient(["slow_preload"], True, tmp_path / "worker.log")
    worker.start()
    wait_until(lambda: "slow_preload" in Path(f"/proc/{worker.pid}/cmdline").read_text(), budget(2), "the worker")
    time.sleep(0.3)  # inside the preload now
    proc = worker._proc
    worker.close()
    # It stopped cleanly on SIGTERM, inside its 60 s preload; before, close() waited 15 s for a "stop"
    # the worker could not read, then killed it (-9).
    assert proc.returncode == 0
    assert proc.pid not in marked_processes(mark)


def test_a_finished_run_starts_no_worker_and_takes_no_lease(tmp_path, mark, monkeypatch):
    store = LocalStore(tmp_path / "store")
    standin = [sys.executable, str(SUPPORT / "standin_jobs.py")]
    first = LocalRunner(manifest(tmp_path), store, scoring="auto", poll_interval=0.01, job_command=standin,
                        preload=("slow_preload",), console=Console(file=open(os.devnull, "w")))
    monkeypatch.setenv("SLOW_PRELOAD_SECONDS", "0")
    assert first.run() == 0
    lease_key = "default/demo/lease.json"  # RunPaths.lease()
    lease_before = store.read_bytes(lease_key) if store.exists(lease_key) else None
    starts = []
    again = LocalRunner(manifest(tmp_path), store, scoring="auto", poll_interval=0.01, job_command=standin,
                        preload=("slow_preload",), console=Console(file=open(os.devnull, "w")))
    monkeypatch.setattr(again, "_start_worker", lambda: starts.append(1))
    assert again.run() == 0
    assert starts == []  # before: the worker started (and imported) before the run was seen to be finished
    assert (store.read_bytes(lease_key) if store.exists(lease_key) else None) == lease_before
