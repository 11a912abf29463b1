"""One executor per run: the lease in the store, on both backends, and two real `run` commands on one run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from tests.support.budget import budget

from therapy_rlhf.store import lease
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.store.backends import dump_json

from .test_runner import STANDIN, manifest

PATHS = RunPaths("default", "demo")


def test_the_lease_key_is_in_the_layout():
    assert PATHS.lease() == "default/demo/lease.json"


def test_a_second_holder_is_refused_with_the_holder_named(store):
    first = lease.acquire(store, PATHS, "local-runner:a", lease.KIND_LOCAL, 60)
    assert first.took_over == ""
    with pytest.raises(lease.LeaseHeld) as refused:
        lease.acquire(store, PATHS, "local-runner:b", lease.KIND_LOCAL, 60)
    message = str(refused.value)
    assert "\n" not in message
    assert f"pid {os.getpid()} on {socket.gethostname()}, since " in message
    assert "stop that runner" in message and f"kill {os.getpid()}" in message
    # the refused attempt changed nothing: the first holder still renews
    first.renew(60)


def test_an_expired_lease_is_taken_over_and_its_holder_learns_it(store):
    old = lease.acquire(store, PATHS, "local-runner:gone-host", lease.KIND_LOCAL, 60, now=time.time() - 120)
    new = lease.acquire(store, PATHS, "local-runner:b", lease.KIND_LOCAL, 60)
    assert new.took_over.startswith(f"local-runner pid {os.getpid()}") and "expired at" in new.took_over
    with pytest.raises(lease.LeaseLost):
        old.renew(60)  # the old holder cannot write over the new one
    new.renew(60)


def test_a_dead_pid_on_this_host_is_taken_over_at_once(store):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holding = lease.acquire(store, PATHS, "local-runner:x", lease.KIND_LOCAL, 600)
    ghost = replace(holding.lease, pid=dead.pid, proc_start="")
    store.write_bytes(PATHS.lease(), dump_json(asdict(ghost)))
    taken = lease.acquire(store, PATHS, "local-runner:y", lease.KIND_LOCAL, 600)
    assert f"pid {dead.pid} is no longer running on {socket.gethostname()}" in taken.took_over


def test_a_released_lease_is_taken_without_a_takeover(store):
    lease.acquire(store, PATHS, "local-runner:a", lease.KIND_LOCAL, 60).release()
    assert lease.acquire(store, PATHS, "local-runner:b", lease.KIND_LOCAL, 60).took_over == ""


def test_of_two_executors_taking_over_a_stale_lease_exactly_one_wins(store):
    lease.acquire(store, PATHS, "local-runner:old", lease.KIND_LOCAL, 60, now=time.time() - 120)
    results: list[str] = []
    barrier = threading.Barrier(4)

    def take(name: str) -> None:
        barrier.wait()
        try:
            lease.acquire(store, PATHS, f"local-runner:{name}", lease.KIND_LOCAL, 60)
            results.append("won")
        except lease.LeaseHeld:
            results.append("refused")

    threads = [threading.Thread(target=take, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["refused"] * 3 + ["won"]


def test_the_operator_holding_a_run_refuses_a_local_runner(store):
    lease.acquire(store, PATHS, lease.operator_holder("default", "demo"), lease.KIND_OPERATOR, 600)
    with pytest.raises(lease.LeaseHeld, match=r"is managed by the operator .*kubectl describe trr demo -n default"):
        lease.acquire(store, PATHS, lease.local_holder(), lease.KIND_LOCAL, 60)
    # the operator itself, again (a restarted operator too), keeps it
    lease.acquire(store, PATHS, lease.operator_holder("default", "demo"), lease.KIND_OPERATOR, 600)


def test_the_keeper_renews_and_reports_a_takeover(local_store):
    holding = lease.acquire(local_store, PATHS, "local-runner:a", lease.KIND_LOCAL, 0.3)
    keeper = lease.LeaseKeeper(holding, 0.3)
    keeper.start()
    deadline = time.monotonic() + budget(2)
    first = holding.lease.expires
    while holding.lease.expires == first and time.monotonic() < deadline:
        time.sleep(0.02)
    assert holding.lease.expires > first  # renewed
    # someone writes over it (a takeover): the next renewal finds out
    local_store.write_bytes(PATHS.lease(), dump_json(asdict(replace(holding.lease, holder="local-runner:z"))))
    keeper.join(budget(2))
    assert "took over this run's lease" in keeper.lost
    keeper.stop()


# ----------------------------------------------------- two real runners


@pytest.fixture
def run_file(tmp_path, monkeypatch):
    import yaml

    monkeypatch.setenv("THERAPY_RLHF_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "run.yaml"
    m = manifest(tmp_path, ppo={"rounds": 1}, sft={"enabled": False})
    path.write_text(yaml.safe_dump(m.model_dump(mode="json", by_alias=True, exclude_none=True)))
    return path


def wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_second_run_command_refuses_then_takes_over_a_killed_one(tmp_path, run_file):
    from tests.support.processes import MARK_ENV, kill_marked

    from therapy_rlhf.store.backends import LocalStore

    mark = uuid.uuid4().hex
    env = {**os.environ, "THERAPY_RLHF_JOB_COMMAND": " ".join(STANDIN), MARK_ENV: mark,
           "STANDIN_STATE_DIR": str(tmp_path / "standin"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(STANDIN[1]).parent), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "therapy_rlhf.cli", "run", str(run_file), "--poll-interval", "0.05"]
    store = LocalStore(tmp_path / "store")
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # the first runner generates the batch and waits for scores, holding the lease
        wait_for(lambda: store.exists(PATHS.batch(1)), budget(30), "the first runner's batch")
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=budget(30))
        assert second.returncode == 5, second.stderr
        refusal = [line for line in second.stderr.splitlines() if "refused" in line]
        assert len(refusal) == 1 and f"pid {first.pid} on {socket.gethostname()}, since " in refusal[0], second.stderr
        assert "job finished" not in second.stderr  # it started nothing
        first.kill()
        first.wait()
        third = subprocess.Popen(cmd + ["--scoring", "auto"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, err = third.communicate(timeout=budget(60))
    finally:
        kill_marked(mark)
    assert third.returncode == 0, err
    assert f"took over the run's lease from local-runner pid {first.pid} on {socket.gethostname()}" in err
    assert f"pid {first.pid} is no longer running" in err
    assert store.read_json(PATHS.lease())["released"] is True  # the finished runner let go
