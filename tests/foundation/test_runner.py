"""The local runner with stand-in jobs: full loop, retries, suspend, crash and resume."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.budget import budget
from rich.console import Console

import therapy_rlhf.execution.runner as runner_mod
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.rounds import read_gate
from therapy_rlhf.execution.runner import EXIT_FAILED, EXIT_SUCCEEDED, EXIT_SUSPENDED, LocalRunner
from therapy_rlhf.store.runs import FrozenSpecMismatch
from therapy_rlhf.feedback.simrater import rate_round
from tests.support.manifests import run_manifest

SUPPORT = Path(__file__).resolve().parents[1] / "support"
# The stand-ins as a script (a cold start: the worker execs it) and as a module (forked warm).
STANDIN = [sys.executable, str(SUPPORT / "standin_jobs.py")]
STANDIN_WARM = [sys.executable, "-m", "standin_jobs"]


def manifest(tmp_path: Path, **spec_overrides):
    spec = {
        "model": {"source": "tiny:mistral"},
        "storage": {"localPath": str(tmp_path / "store")},
        "sft": {"enabled": True},
        "ppo": {
            "rounds": 3,
            "samplesPerPrompt": 2,
            "prompts": [
                {"id": "p-depressed", "text": "I'm feeling depressed and hopeless.", "category": "depression"},
                {"id": "p-anxious", "text": "I can't stop worrying.", "category": "anxiety"},
            ],
        },
    }
    for key, value in spec_overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return run_manifest(spec, "demo")


def make_runner(m, store, **kw) -> LocalRunner:
    kw.setdefault("scoring", "auto")
    kw.setdefault("poll_interval", 0.01)
    kw.setdefault("job_command", STANDIN_WARM)
    kw.setdefault("preload", ("standin_jobs",))
    kw.setdefault("console", Console(file=open(os.devnull, "w")))
    return LocalRunner(m, store, **kw)


def job_logs(runner: LocalRunner) -> list[str]:
    """The runner's job logs in the order the jobs ran."""
    logs = [p for p in (runner.work_dir / "logs").iterdir() if p.name != "worker.log"]
    return [p.name.removesuffix(".log") for p in sorted(logs, key=lambda p: p.stat().st_mtime_ns)]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("THERAPY_RLHF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("STANDIN_STATE_DIR", str(tmp_path / "standin"))
    # The stand-ins run as top-level modules of their own folder (never the repository root on a
    # child's PYTHONPATH: its operator/ would shadow the standard library's at start-up).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")])))


def snapshot(store) -> dict[str, bytes]:
    return {k: store.read_bytes(k) for k in store.list("")}


def test_full_loop_with_simulated_rater(tmp_path, store):
    m = manifest(tmp_path)
    runner = make_runner(m, store)
    assert runner.run() == EXIT_SUCCEEDED
    # One Job per round after the first: round r's update and round r+1's batch together.
    assert job_logs(runner) == [
        "sft-r0-a1", "generate-r1-a1", "ppo-generate-r1-a1", "ppo-generate-r2-a1", "ppo-r3-a1", "evaluate-r0-a1"
    ]
    paths = RunPaths("default", "demo")
    keys = set(store.list(""))
    assert paths.sft_metrics() in keys and paths.eval_results() in keys
    for r in (1, 2, 3):
        gate = read_gate(store, paths, r)
        assert gate is not None and gate.responses_rewarded == 4 and gate.reason == "complete"
        assert paths.policy_metrics(r) in keys
    # Running again redoes nothing.
    before = snapshot(store)
    assert make_runner(m, store).run() == EXIT_SUCCEEDED
    assert snapshot(store) == before


def test_separate_update_and_generate_jobs_by_spec(tmp_path, local_store):
    runner = make_runner(manifest(tmp_path, ppo={"oneJobPerRound": False}), local_store)
    assert runner.run() == EXIT_SUCCEEDED
    assert job_logs(runner) == [
        "sft-r0-a1", "generate-r1-a1", "ppo-r1-a1", "generate-r2-a1", "ppo-r2-a1", "generate-r3-a1", "ppo-r3-a1",
        "evaluate-r0-a1",
    ]


def test_a_job_dying_between_update_and_generate_resumes_with_generate(tmp_path, local_store, monkeypatch):
    """The one-Job round is killed after storing round 1's update: a failed attempt, then a plain
    generate job for round 2, and the run goes on with one Job per round."""
    monkeypatch.setenv("STANDIN_DIE_AFTER_UPDATE", "1")
    runner = make_runner(manifest(tmp_path), local_store)
    assert runner.run() == EXIT_SUCCEEDED
    assert job_logs(runner) == [
        "sft-r0-a1", "generate-r1-a1", "ppo-generate-r1-a1", "generate-r2-a1", "ppo-generate-r2-a1", "ppo-r3-a1",
        "evaluate-r0-a1",
    ]
    died = runner.jobs[("ppo-generate", 1)]
    assert (died.state, died.failures, died.reason) == ("failed", 1, "the job process was killed by SIGKILL")
    paths = RunPaths("default", "demo")
    assert all(local_store.exists(paths.policy_metrics(r)) for r in (1, 2, 3))


def test_waits_for_ratings_written_elsewhere(tmp_path, local_store):
    m = manifest(tmp_path, sft={"enabled": False}, evaluation={"enabled": False}, ppo={"rounds": 1})
    paths = RunPaths("default", "demo")
    waits = []

    def rate_from_elsewhere(action):
        waits.append(action.round)
        if len(waits) == 3:  # the runner polls a few times before the psychologist is done
            rate_round(local_store, paths, m, action.round)

    assert make_runner(m, local_store, scoring="none", on_wait=rate_from_elsewhere).run() == EXIT_SUCCEEDED
    assert waits == [1, 1, 1]
    assert local_store.exists(paths.policy_metrics(1))


def test_two_raters_needed_before_gate_closes(tmp_path, local_store):
    m = manifest(tmp_path, sft={"enabled": False}, evaluation={"enabled": False}, ppo={"rounds": 1}, feedback={"minRaters": 2})
    paths = RunPaths("default", "demo")
    calls = []

    def one_rater_at_a_time(action):
        calls.append((action.rated, action.total))
        rate_round(local_store, paths, m, action.round, raters=[f"rater-{len(calls)}"])

    assert make_runner(m, local_store, scoring="none", on_wait=one_rater_at_a_time).run() == EXIT_SUCCEEDED
    assert calls == [(0, 4), (0, 4)]  # after one rater, no response has two raters yet
    gate = read_gate(local_store, paths, 1)
    assert gate.min_raters == 2 and all(len(r.raters) == 2 for r in gate.rewards.values())


def test_job_retried_then_succeeds(tmp_path, local_store, monkeypatch):
    monkeypatch.setenv("STANDIN_FAIL", "generate:1=1")
    runner = make_runner(manifest(tmp_path), local_store)
    assert runner.run() == EXIT_SUCCEEDED
    assert job_logs(runner)[1:3] == ["generate-r1-a1", "generate-r1-a2"]


def test_cold_jobs_run_the_same_loop(tmp_path, local_store, monkeypatch):
    """A job command the worker cannot fork (a script) is exec'd: same loop, same retries."""
    monkeypatch.setenv("STANDIN_FAIL", "ppo-generate:2=1")
    runner = make_runner(manifest(tmp_path), local_store, job_command=STANDIN, preload=None)
    assert runner.run() == EXIT_SUCCEEDED
    assert "ppo-generate-r2-a2" in job_logs(runner)


def test_runs_of_one_name_in_two_stores_never_share_run_config_or_logs(tmp_path):
    """Two runs called demo, in two stores, with different specs: each job reads its own run's config."""
    from therapy_rlhf.contracts.spec import load_run
    from therapy_rlhf.store.backends import LocalStore

    first_store, second_store = LocalStore(tmp_path / "one"), LocalStore(tmp_path / "two")
    first = make_runner(manifest(tmp_path, ppo={"rounds": 1}), first_store, scoring="none")
    second = make_runner(manifest(tmp_path, ppo={"rounds": 2, "samplesPerPrompt": 1}), second_store)

    def meanwhile_the_other_run(action):
        if not second_store.exists(RunPaths("default", "demo").eval_results()):
            assert second.run() == EXIT_SUCCEEDED  # run to the end while the first waits at its gate
        rate_round(first_store, RunPaths("default", "demo"), first.manifest, action.round)

    first.on_wait = meanwhile_the_other_run
    assert first.run() == EXIT_SUCCEEDED
    assert first.work_dir != second.work_dir
    assert load_run(first.config_file).spec.ppo.rounds == 1 and load_run(second.config_file).spec.ppo.rounds == 2
    assert "generate-r2-a1" not in job_logs(first) and "ppo-generate-r1-a1" in job_logs(second)
    # The first run's update used its own batch of 4 responses (the second's rounds have 2).
    assert first_store.read_json(RunPaths("default", "demo").policy_metrics(1))["mean_reward"] is not None
    assert len(read_gate(first_store, RunPaths("default", "demo"), 1).rewards) == 4


def test_progress_lines_are_not_wrapped_when_output_is_not_a_terminal(tmp_path, local_store, capsys):
    """A file or CI log gets each message on one line, however long its paths."""
    deep = tmp_path / ("a-very-long-folder-name-" * 6) / "store"
    from therapy_rlhf.store.backends import LocalStore

    store = LocalStore(deep)
    runner = LocalRunner(
        manifest(tmp_path, sft={"enabled": False}, evaluation={"enabled": False}, ppo={"rounds": 1}), store,
        scoring="auto", job_command=STANDIN_WARM, preload=("standin_jobs",),
    )
    assert runner.run() == EXIT_SUCCEEDED
    err = capsys.readouterr().err
    assert len(str(deep)) > 150
    succeeded = [ln for ln in err.splitlines() if "run succeeded" in ln]
    assert len(succeeded) == 1 and f"--store {store.uri}`" in succeeded[0]
    assert any(ln.endswith(f"run default/demo in {store.uri}") for ln in err.splitlines())


def test_job_failing_past_backoff_limit_fails_the_run(tmp_path, local_store, monkeypatch, capsys):
    monkeypatch.setenv("STANDIN_FAIL", "ppo-generate:1=99")
    m = manifest(tmp_path, backoffLimit=1)
    runner = make_runner(m, local_store)
    runner.console = Console(file=sys.stderr, width=200)
    assert runner.run() == EXIT_FAILED
    err = capsys.readouterr().err
    assert "ppo-generate (round 1) job failed 2 time(s), backoffLimit is 1" in err
    assert "failed on purpose" in err
    assert not local_store.exists(RunPaths("default", "demo").policy_metrics(1))


def test_job_exiting_zero_without_marker_counts_as_failure(tmp_path, local_store, monkeypatch):
    monkeypatch.setenv("STANDIN_SKIP_MARKER", "sft:0")
    assert make_runner(manifest(tmp_path, backoffLimit=0), local_store).run() == EXIT_FAILED


def test_suspend_starts_no_job_and_resume_continues(tmp_path, local_store):
    suspended = manifest(tmp_path, suspend=True)
    assert make_runner(suspended, local_store).run() == EXIT_SUSPENDED
    assert local_store.list("default/demo/sft") == []
    # suspend is the one field that may change on a frozen run
    assert make_runner(manifest(tmp_path), local_store).run() == EXIT_SUCCEEDED


def test_changed_spec_is_refused(tmp_path, local_store):
    assert make_runner(manifest(tmp_path, ppo={"rounds": 1}), local_store).run() == EXIT_SUCCEEDED
    with pytest.raises(FrozenSpecMismatch, match="spec.ppo"):
        make_runner(manifest(tmp_path, ppo={"rounds": 2, "clipRange": 0.3}), local_store).run()


class Crash(BaseException):
    """Stands for the process dying: not caught by the runner."""


def test_survives_a_crash_between_any_two_steps(tmp_path, monkeypatch):
    """Crash after each of the N actions in turn; a restart must finish with nothing redone or lost."""
    from therapy_rlhf.store.backends import LocalStore

    m = manifest(tmp_path, ppo={"rounds": 2})
    reference = LocalStore(tmp_path / "reference")
    assert make_runner(m, reference).run() == EXIT_SUCCEEDED
    expected = set(reference.list(""))
    real_plan = runner_mod.plan
    total = 0

    def counting(spec, observed):
        nonlocal total
        total += 1
        return real_plan(spec, observed)

    monkeypatch.setattr(runner_mod, "plan", counting)
    make_runner(m, LocalStore(tmp_path / "count")).run()
    monkeypatch.setattr(runner_mod, "plan", real_plan)
    assert total > 8

    for crash_at in range(1, total):
        store = LocalStore(tmp_path / f"crash-{crash_at}")
        calls = 0

        def crashing(spec, observed):
            nonlocal calls
            calls += 1
            if calls == crash_at:
                raise Crash()
            return real_plan(spec, observed)

        monkeypatch.setattr(runner_mod, "plan", crashing)
        with pytest.raises(Crash):
            make_runner(m, store).run()
        before = snapshot(store)
        monkeypatch.setattr(runner_mod, "plan", real_plan)
        assert make_runner(m, store).run() == EXIT_SUCCEEDED, f"crash at step {crash_at}"
        after = snapshot(store)
        assert set(after) == expected, f"crash at step {crash_at}"
        # nothing already stored was changed (but the run's lease, which each runner takes and releases)
        lease_key = RunPaths(m.namespace, m.name).lease()
        assert {k: after[k] for k in before if k != lease_key} == {k: v for k, v in before.items() if k != lease_key}, (
            f"crash at step {crash_at}"
        )


@pytest.mark.slow
def test_sigkill_during_jobs_then_resume(tmp_path, monkeypatch):
    """Kill the real CLI with SIGKILL at several moments, then finish the run.

    Each restart waits until everything the killed runner started is gone (its
    worker stops the job when the runner's socket closes): a job left running
    would race the restarted attempt, which is what made this test flaky.
    """
    import uuid

    import yaml
    from tests.support.processes import MARK_ENV, kill_marked, marked_processes, wait_until

    from therapy_rlhf.contracts.records import parse_batch
    from therapy_rlhf.store.backends import LocalStore

    store_dir = tmp_path / "store"
    run_file = tmp_path / "run.yaml"
    m = manifest(tmp_path, ppo={"rounds": 2})
    run_file.write_text(yaml.safe_dump(m.model_dump(mode="json", by_alias=True, exclude_none=True)))
    mark = uuid.uuid4().hex
    env = {
        **os.environ,
        "THERAPY_RLHF_JOB_COMMAND": " ".join(STANDIN),
        "STANDIN_SLEEP": "0.4",
        MARK_ENV: mark,
    }
    cmd = [sys.executable, "-m", "therapy_rlhf.cli", "run", str(run_file), "--scoring", "auto", "--poll-interval", "0.05"]
    try:
        for delay in (1.0, 2.5, 4.0):
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(delay)
            proc.kill()
            proc.wait()
            wait_until(lambda: not marked_processes(mark), budget(2), "the killed runner's job and worker to stop")
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=budget(30))
    finally:
        kill_marked(mark)
    assert done.returncode == 0, done.stderr
    assert "run succeeded" in done.stderr
    store = LocalStore(store_dir)
    keys = store.list("")  # what readers see (a write cut short leaves only an unlisted temp file)
    assert sum(k.endswith("batch.jsonl") for k in keys) == 2
    assert sum(k.endswith("gate.json") for k in keys) == 2
    for key in keys:  # every visible object is whole
        if key.endswith(".json"):
            store.read_json(key)
        elif key.endswith(".jsonl"):
            assert parse_batch(store.read_text(key))[1] == []


def test_tui_mode_continues_when_the_rater_completes_the_round(tmp_path, local_store, monkeypatch):
    """--scoring tui: the runner opens the app at each gate and goes on once the round is rated."""
    m = manifest(tmp_path, sft={"enabled": False}, evaluation={"enabled": False}, ppo={"rounds": 2})
    paths = RunPaths("default", "demo")
    opened = []

    def psychologist_rates_everything(store_uri, rater, run, round_no):
        opened.append((store_uri, rater, run, round_no))
        rate_round(local_store, paths, m, round_no, raters=[rater])
        return 0

    app = psychologist_rates_everything
    assert make_runner(m, local_store, scoring="tui", rater_id="alice", scoring_app=app).run() == EXIT_SUCCEEDED
    assert opened == [(local_store.uri, "alice", ("default", "demo"), 1), (local_store.uri, "alice", ("default", "demo"), 2)]


def test_tui_mode_stops_when_the_rater_quits_early(tmp_path, local_store, monkeypatch):
    from therapy_rlhf.execution.runner import EXIT_PAUSED

    m = manifest(tmp_path, sft={"enabled": False}, evaluation={"enabled": False}, ppo={"rounds": 1})
    quits = lambda *a: 0  # noqa: E731  (quits without rating)
    assert make_runner(m, local_store, scoring="tui", rater_id="alice", scoring_app=quits).run() == EXIT_PAUSED
    assert not local_store.exists(RunPaths("default", "demo").gate(1))
    refuses = lambda *a: 2  # noqa: E731  (the app refused to start: bad rater id, ...)
    assert make_runner(m, local_store, scoring="tui", rater_id="alice", scoring_app=refuses).run() == EXIT_FAILED


def test_gate_polls_are_frequent_on_a_local_store_and_cheaper_on_s3(tmp_path, local_store, s3_store):
    """A local listing costs nothing, so the next round starts within half a second of the last
    rating; on S3 each poll is a LIST request."""
    m = manifest(tmp_path)
    assert LocalRunner(m, local_store).poll_interval == runner_mod.POLL_SECONDS_LOCAL == 0.5
    assert LocalRunner(m, s3_store).poll_interval == runner_mod.POLL_SECONDS_S3 == 2.0
    assert LocalRunner(m, s3_store, poll_interval=0.1).poll_interval == 0.1
