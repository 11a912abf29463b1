"""Job processes do not outlive a runner killed with -9, and a job that somehow does cannot write over the run
once another runner holds it (issue 18: the lease fences orphans)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
from dataclasses import asdict, replace

import pytest
from rich.console import Console
from tests.support.budget import budget
from tests.support.processes import marked_processes, wait_until

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.execution.runner import LocalRunner
from therapy_rlhf.store import lease
from therapy_rlhf.store.backends import LocalStore, dump_json
from therapy_rlhf.store.runs import dump_manifest

from .test_jobworker import STANDIN_SCRIPT, _env, manifest, mark, start_cli  # noqa: F401 - fixtures

PATHS = RunPaths("default", "demo")


def _gone(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def _group_empty(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return all(_gone(pid) for pid in (int(p) for p in os.listdir("/proc") if p.isdigit())
               if _stat_pgid(pid) == pgid)


def _stat_pgid(pid: int) -> int | None:
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[2])
    except (OSError, ValueError, IndexError):
        return None


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
def test_a_runner_killed_mid_job_leaves_no_job_process(tmp_path, mark, warm):
    proc, pid_dir, _ = start_cli(tmp_path, mark, warm)
    pids = [int(p.read_text()) for p in pid_dir.iterdir()]  # the job and the child it started in its group
    groups = {_stat_pgid(pid) for pid in pids} - {None}
    assert len(pids) == 2 and groups and all(not _gone(pid) for pid in pids)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=budget(1))
    wait_until(lambda: all(_gone(pid) for pid in pids), budget(2), "the job and its child to stop")
    wait_until(lambda: all(_group_empty(g) for g in groups), budget(2), "the job's process group to empty")
    wait_until(lambda: not marked_processes(mark), budget(2), "the worker to stop")


def test_a_runner_killed_while_its_worker_imports_takes_the_worker_with_it(tmp_path, mark, monkeypatch):
    """Nothing reads the control socket while the worker imports (torch: 5-13 s); it must not wait that out."""
    monkeypatch.setenv("SLOW_PRELOAD_SECONDS", "600")
    pid_file = tmp_path / "worker.pid"
    script = textwrap.dedent(f"""
        import time
        from therapy_rlhf.execution.worker_client import JobWorkerClient
        worker = JobWorkerClient(["slow_preload"], True)
        worker.start()
        open({str(pid_file)!r}, "w").write(str(worker.pid))
        time.sleep(600)
    """)
    runner = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stdin=subprocess.DEVNULL)
    try:
        worker_pid = int(wait_until(lambda: pid_file.is_file() and pid_file.read_text(), budget(6), "the worker"))
        wait_until(lambda: "slow_preload" in open(f"/proc/{worker_pid}/cmdline").read(), budget(2), "the preload")
        runner.kill()
        runner.wait(timeout=budget(1))
        wait_until(lambda: _gone(worker_pid), budget(2), "the worker to stop after its runner died")
    finally:
        runner.kill()


def _run_config(tmp_path, store) -> str:
    m = manifest(tmp_path)
    config = tmp_path / "run.json"
    config.write_text(dump_manifest(m))
    return str(config)


def test_an_orphaned_job_with_a_stale_holder_is_refused(tmp_path):
    store = LocalStore(tmp_path / "store")
    config = _run_config(tmp_path, store)
    # The killed runner's lease, taken over by the runner started after it.
    old = lease.acquire(store, PATHS, "local-runner:old", lease.KIND_LOCAL, 60)
    store.write_bytes(PATHS.lease(), dump_json(asdict(replace(old.lease, released=True))))
    new = lease.acquire(store, PATHS, "local-runner:new", lease.KIND_LOCAL, 60)
    job = [sys.executable, str(STANDIN_SCRIPT), "sft", "--run-config", config, "--round", "0", "--store", store.uri]
    orphan = subprocess.run([*job, "--lease-holder", old.lease.holder], capture_output=True, text=True, timeout=budget(30))
    assert orphan.returncode == 1
    assert "the run's lease is now held by local-runner:new" in orphan.stderr and "refusing to write" in orphan.stderr
    assert store.list(PATHS.root + "/sft/") == []  # not a byte written
    with pytest.raises(lease.Fenced):
        lease.check_holder(store, PATHS, old.lease.holder)
    lease.check_holder(store, PATHS, new.lease.holder)
    # the holder's own job writes
    ok = subprocess.run([*job, "--lease-holder", new.lease.holder], capture_output=True, text=True, timeout=budget(30))
    assert ok.returncode == 0, ok.stderr
    assert store.exists(PATHS.sft_metrics())


def test_the_runner_starts_its_jobs_fenced_by_its_lease(tmp_path, monkeypatch):
    """A takeover while a job runs: the job's writes are refused (the runner passed it --lease-holder)."""
    pid_dir = tmp_path / "pids"
    monkeypatch.setenv("STANDIN_PID_DIR", str(pid_dir))
    monkeypatch.setenv("STANDIN_SLEEP", "1")
    store = LocalStore(tmp_path / "store")
    out = io.StringIO()
    runner = LocalRunner(manifest(tmp_path).model_copy(), store, scoring="auto", poll_interval=0.01, warm=False,
                         job_command=[sys.executable, str(STANDIN_SCRIPT)], console=Console(file=out, width=400),
                         lease_seconds=600)

    def take_over():
        wait_until(lambda: pid_dir.is_dir() and any(pid_dir.iterdir()), budget(10), "the sft job to start")
        current = store.read_json(PATHS.lease())
        store.write_bytes(PATHS.lease(), dump_json({**current, "holder": "local-runner:someone-else"}))

    thief = threading.Thread(target=take_over)
    thief.start()
    code = runner.run()
    thief.join()
    assert code != 0
    assert "now held by local-runner:someone-else" in out.getvalue() and "refusing to write" in out.getvalue()
    assert not store.exists(PATHS.sft_metrics())
