"""The real operator (kopf over HTTP) against kmock's Kubernetes emulator and moto's S3.

Jobs are executed by the harness in conftest.py (stand-in jobs: same CLI,
instant artifacts), so each scenario runs in seconds.
"""

from __future__ import annotations

from collections import Counter

import pytest
from tests.support.budget import budget

from therapy_rlhf.contracts import phases
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.rounds import read_gate
from therapy_rlhf.store.runs import read_frozen_run
from therapy_rlhf.feedback.simrater import rate_round

from therapy_rlhf.operator import builders

from tests.support.budget import budget


# A scenario: a handful of phases (Cluster.PHASE_SECONDS each on a quiet machine).
pytestmark = pytest.mark.timeout(budget(40))


def condition(run: dict, ctype: str) -> dict:
    return next(c for c in run["status"]["conditions"] if c["type"] == ctype)


async def rate_when_awaiting(cluster, store, name: str, round_no: int, timeout: float | None = None) -> dict:
    run = await cluster.wait_phase(name, phases.AWAITING_RATINGS, round_no=round_no, timeout=timeout)
    paths = RunPaths("default", name)
    assert rate_round(store, paths, read_frozen_run(store, paths), round_no) > 0
    return run


def job_names(jobs: list[dict]) -> list[str]:
    return sorted(j["metadata"]["name"] for j in jobs)


@pytest.mark.slow
async def test_full_run_to_succeeded(cluster, run_spec, run_store):
    await cluster.start_operator()
    await cluster.create_run("demo", run_spec())
    run = await rate_when_awaiting(cluster, run_store, "demo", 1)
    assert run["status"]["rated"] == "0/2"
    cond = condition(run, "AwaitingRatings")
    assert cond["status"] == "True" and "0/2" in cond["message"]
    await rate_when_awaiting(cluster, run_store, "demo", 2)
    run = await cluster.wait_phase("demo", phases.SUCCEEDED)

    status = run["status"]
    assert [r["round"] for r in status["rounds"]] == [1, 2]
    assert all(r["gateClosed"] and r["updated"] for r in status["rounds"])
    assert status["rounds"][1]["checkpoint"].endswith("rounds/0002/policy")
    assert status["reward"] == status["rounds"][1]["meanReward"] is not None
    assert status["rated"] == "2/2"
    assert status["evaluation"]["summary"]["models"]["base"]["rouge1"] == 0.1
    assert condition(run, "Ready")["status"] == "True"
    assert condition(run, "Failed")["status"] == "False"
    assert "activeJob" not in status or status["activeJob"] is None

    jobs = await cluster.jobs()
    # One Job per round after the first: round 1's update and round 2's batch are one Job.
    assert job_names(jobs) == sorted(
        ["demo-sft-r0-a1", "demo-generate-r1-a1", "demo-ppo-generate-r1-a1", "demo-ppo-r2-a1", "demo-evaluate-r0-a1"]
    )
    for job in jobs:
        assert job["metadata"]["ownerReferences"][0]["uid"] == run["metadata"]["uid"]
    # Gates were closed by the operator from the simulated ratings.
    paths = RunPaths("default", "demo")
    assert read_gate(run_store, paths, 1).closed_by == "operator"
    reasons = Counter(e["reason"] for e in await cluster.events())
    assert reasons["JobCreated"] == 5 and reasons[phases.R_GATE_CLOSED] == 2 and reasons[phases.R_SUCCEEDED] == 1


# Restarts in every phase (and at every boundary between writes): test_kill_points_cluster.py.


async def test_failed_job_is_retried_then_succeeds(cluster, run_spec):
    cluster.job_env["STANDIN_FAIL"] = "generate:1=1"
    await cluster.start_operator()
    await cluster.create_run("demo", run_spec(backoffLimit=1))
    run = await cluster.wait_phase("demo", phases.AWAITING_RATINGS, round_no=1)
    names = job_names(await cluster.jobs())
    assert "demo-generate-r1-a1" in names and "demo-generate-r1-a2" in names
    assert condition(run, "Failed")["status"] == "False"
    events = await cluster.events()
    retry = [e for e in events if e["reason"] == phases.R_JOB_RETRYING]
    assert retry and "failed on purpose" in retry[0]["message"]


async def test_job_failing_past_backoff_limit_fails_the_run(cluster, run_spec):
    cluster.job_env["STANDIN_FAIL"] = "sft:0=9"
    await cluster.start_operator()
    await cluster.create_run("demo", run_spec(backoffLimit=1))
    run = await cluster.wait_phase("demo", phases.FAILED)
    failed = condition(run, "Failed")
    assert failed["status"] == "True" and failed["reason"] == phases.R_JOB_FAILED
    assert "failed on purpose" in failed["message"]
    assert condition(run, "Ready")["status"] == "False"
    await cluster.settle()
    # backoffLimit 1 = two attempts, and nothing after the run failed.
    assert job_names(await cluster.jobs()) == ["demo-sft-r0-a1", "demo-sft-r0-a2"]
    warnings = [e for e in await cluster.events() if e["type"] == "Warning" and e["reason"] == phases.R_JOB_FAILED]
    assert len(warnings) == 1


@pytest.mark.slow
async def test_suspend_and_resume(cluster, run_spec):
    await cluster.start_operator()
    await cluster.create_run("demo", run_spec(suspend=True))
    run = await cluster.wait_phase("demo", phases.SUSPENDED)
    assert condition(run, "Suspended")["status"] == "True"
    await cluster.settle()
    assert await cluster.jobs() == []
    # Suspending while a Job runs lets it finish and starts nothing after it.
    cluster.paused = True
    await cluster.patch_run("demo", {"spec": {"suspend": False}})
    await cluster.wait_phase("demo", phases.SFT)
    await cluster.patch_run("demo", {"spec": {"suspend": True}})
    await cluster.settle()
    assert (await cluster.run("demo"))["status"]["phase"] == phases.SFT  # the running Job is not killed
    cluster.paused = False
    run = await cluster.wait_phase("demo", phases.SUSPENDED)
    assert "before generate" in condition(run, "Suspended")["message"]
    assert job_names(await cluster.jobs()) == ["demo-sft-r0-a1"]
    await cluster.patch_run("demo", {"spec": {"suspend": False}})
    run = await cluster.wait_phase("demo", phases.AWAITING_RATINGS, round_no=1)
    assert condition(run, "Suspended")["status"] == "False"


@pytest.mark.slow
async def test_close_gate_annotation_closes_with_the_ratings_present(cluster, run_spec, run_store):
    from therapy_rlhf.feedback.rounds import load_round
    from therapy_rlhf.feedback.submit import submit_rating
    from therapy_rlhf.feedback.simrater import judge

    await cluster.start_operator()
    await cluster.create_run("demo", run_spec())
    await cluster.wait_phase("demo", phases.AWAITING_RATINGS, round_no=1)
    annotate = {"metadata": {"annotations": {builders.ANNOTATION_CLOSE_GATE: "true"}}}
    # Nothing rated yet: the override waits (the planner never closes on nothing).
    await cluster.patch_run("demo", annotate)

    async def override_seen():
        status = (await cluster.run("demo")).get("status") or {}
        return "nothing is rated yet" in (status.get("message") or "") and status

    status = await cluster.wait_for(override_seen, what="the override to be seen with nothing rated")
    assert status["phase"] == phases.AWAITING_RATINGS
    paths = RunPaths("default", "demo")
    manifest = read_frozen_run(run_store, paths)
    state = load_round(run_store, paths, 1)
    submit_rating(run_store, paths, state, judge(state.responses[0], manifest.spec.feedback), manifest.spec.feedback)
    await cluster.wait_phase("demo", phases.UPDATING, round_no=1, timeout=budget(3))
    gate = read_gate(run_store, paths, 1)
    assert gate.reason == "override" and gate.responses_rewarded == 1 and gate.responses_total == 2
    run = await cluster.run("demo")
    assert builders.ANNOTATION_CLOSE_GATE not in (run["metadata"].get("annotations") or {})
    assert any(e["reason"] == phases.R_GATE_OVERRIDDEN for e in await cluster.events())
    # The annotation was consumed: round 2 waits for full coverage again.
    run = await cluster.wait_phase("demo", phases.AWAITING_RATINGS, round_no=2)
    state = load_round(run_store, paths, 2)
    submit_rating(run_store, paths, state, judge(state.responses[0], manifest.spec.feedback), manifest.spec.feedback)

    async def one_rated():
        status = (await cluster.run("demo")).get("status") or {}
        return status.get("rated") == "1/2" and status

    status = await cluster.wait_for(one_rated, what="round 2's first rating to be counted")
    await cluster.settle()  # and the gate stays open
    run = await cluster.run("demo")
    assert run["status"]["phase"] == phases.AWAITING_RATINGS and run["status"]["rated"] == "1/2"


async def test_deleting_the_run_collects_its_children_and_keeps_the_store(cluster, run_spec, run_store):
    await cluster.start_operator()
    run = await cluster.create_run("demo", run_spec())
    await cluster.wait_phase("demo", phases.AWAITING_RATINGS, round_no=1)
    cms = await cluster.list("/api/v1/namespaces/default/configmaps")
    assert [c["metadata"]["name"] for c in cms] == ["demo-run-config"]
    for obj in cms + await cluster.jobs():
        ref = obj["metadata"]["ownerReferences"][0]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("TherapyRLHFRun", "demo", run["metadata"]["uid"], True)
    await cluster.delete(f"/apis/rlhf.therapy.dev/v1alpha1/namespaces/default/therapyrlhfruns/demo")

    async def gone():
        return not await cluster.jobs() and not await cluster.list("/api/v1/namespaces/default/configmaps")

    await cluster.wait_for(gone, budget(4), "children to be garbage-collected")
    assert run_store.exists(RunPaths("default", "demo").batch(1))  # nothing stored is lost


async def test_deleting_a_run_mid_tick_releases_it_within_seconds(cluster, run_spec, monkeypatch):
    """kopf removes its finalizer only once the run's timer has stopped; a tick
    running at the moment of deletion must not hold the run for kopf's default
    60 s re-check."""
    import threading
    import time as clock

    from therapy_rlhf.operator import reconcile

    slow = threading.Event()
    observe = reconcile._observe

    def slow_observe(*args, **kwargs):
        if slow.is_set():
            clock.sleep(1.0)  # a slow store: a tick is in flight nearly all the time
        return observe(*args, **kwargs)

    monkeypatch.setattr(reconcile, "_observe", slow_observe)
    await cluster.start_operator()
    await cluster.create_run("demo", run_spec())
    await cluster.wait_phase("demo", phases.AWAITING_RATINGS, round_no=1)
    slow.set()
    await cluster.settle(2)
    runs = "/apis/rlhf.therapy.dev/v1alpha1/namespaces/default/therapyrlhfruns"
    await cluster.delete(f"{runs}/demo")

    async def released():
        return not await cluster.list(runs)

    await cluster.wait_for(released, budget(2), "the run's finalizer to be removed")


async def test_invalid_spec_fails_with_the_message_and_creates_nothing(cluster, run_spec):
    await cluster.start_operator()
    spec = run_spec()
    spec["ppo"]["clipRange"] = 7
    spec["bogusField"] = 1
    await cluster.create_run("bad", spec)
    run = await cluster.wait_phase("bad", phases.FAILED)
    failed = condition(run, "Failed")
    assert failed["reason"] == phases.R_INVALID_SPEC
    assert "spec.ppo.clipRange" in failed["message"] and "spec.bogusField: unknown field" in failed["message"]
    await cluster.settle()
    assert await cluster.jobs() == [] and await cluster.list("/api/v1/namespaces/default/configmaps") == []
    events = [e for e in await cluster.events() if e["reason"] == phases.R_INVALID_SPEC]
    assert len(events) == 1 and events[0]["type"] == "Warning"  # one Event, not one per tick


async def test_missing_secret_blocks_until_it_exists(cluster, run_spec):
    await cluster.start_operator()
    spec = run_spec()
    spec["storage"]["credentialsSecret"] = {"name": "later-creds"}
    await cluster.create_run("demo", spec)

    async def blocked():
        run = await cluster.run("demo")
        ready = [c for c in (run.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"]
        return run if ready and ready[0]["reason"] == phases.R_SECRET_MISSING else None

    run = await cluster.wait_for(blocked, budget(2), "SecretMissing")
    assert condition(run, "Ready")["status"] == "False" and "later-creds" in condition(run, "Ready")["message"]
    assert condition(run, "Failed")["status"] == "False"  # blocked, not failed
    await cluster.settle()
    assert await cluster.jobs() == []
    await cluster.create_secret("later-creds", {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    await cluster.wait_phase("demo", phases.AWAITING_RATINGS, round_no=1)


async def test_unreachable_store_is_a_condition_not_a_crash(cluster, run_spec):
    await cluster.start_operator()
    spec = run_spec()
    spec["storage"]["endpoint"] = "http://127.0.0.1:9"  # nothing listens on the discard port
    await cluster.create_run("demo", spec)

    run = await cluster.wait_reason("demo", phases.R_STORE_UNAVAILABLE, budget(3))
    assert "127.0.0.1:9" in condition(run, "Ready")["message"]
    assert await cluster.jobs() == []


async def test_job_deleted_by_hand_is_recreated(cluster, run_spec):
    cluster.paused = True
    await cluster.start_operator()
    await cluster.create_run("demo", run_spec())
    await cluster.wait_phase("demo", phases.SFT)
    await cluster.wait_for(cluster.jobs, budget(1), "the SFT Job")
    await cluster.delete("/apis/batch/v1/namespaces/default/jobs/demo-sft-r0-a1")

    async def recreated():
        events = [e for e in await cluster.events() if e["reason"] == "JobMissing"]
        return events and job_names(await cluster.jobs()) == ["demo-sft-r0-a1"]

    await cluster.wait_for(recreated, budget(2), "the Job to be re-created")
    cluster.paused = False
    await cluster.wait_phase("demo", phases.AWAITING_RATINGS, round_no=1)


async def test_garbage_in_the_ratings_prefix_is_reported_and_ignored(cluster, run_spec, run_store):
    await cluster.start_operator()
    await cluster.create_run("demo", run_spec())
    await cluster.wait_phase("demo", phases.AWAITING_RATINGS, round_no=1)
    paths = RunPaths("default", "demo")
    run_store.write_bytes(paths.ratings_prefix(1) + "sim-rater/not-json.json", b"{oops")
    run_store.write_bytes(paths.ratings_prefix(1) + "README.txt", b"hello")

    async def reported():
        return [e for e in await cluster.events() if e["reason"] == "GarbageRatings"]

    events = await cluster.wait_for(reported, budget(2), "a GarbageRatings Event")
    assert "2 object(s)" in events[-1]["message"]
    rate_round(run_store, paths, read_frozen_run(run_store, paths), 1)
    await cluster.wait_phase("demo", phases.AWAITING_RATINGS, round_no=2)
    assert run_store.exists(paths.ratings_prefix(1) + "README.txt")  # reported, never deleted


@pytest.mark.slow
@pytest.mark.timeout(budget(100))
async def test_real_tiny_jobs_run_to_succeeded(cluster, run_spec, run_store):
    """The real `python -m therapy_rlhf.jobs` (tiny Mistral built on the fly), not the stand-ins:
    sft, generate, ppo-generate (round 1's update and round 2's batch), ppo, evaluate."""
    cluster.standin = False
    spec = run_spec(
        model={"source": "tiny:mistral", "maxLength": 128, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        sft={"maxSteps": 2, "batchSize": 2, "evalSteps": 2, "validationFraction": 0.15},
        evaluation={"checkpoints": ["base", "sft", "final"], "maxExamples": 2, "maxNewTokens": 4,
                    "metrics": ["f1", "rouge1"]},
    )
    spec["ppo"].update(rounds=2, samplesPerPrompt=2, epochs=1, miniBatchSize=2,
                       generation={"maxNewTokens": 6, "temperature": 1.0, "topP": 1.0, "batchSize": 2})
    await cluster.start_operator()
    await cluster.create_run("tiny", spec)
    # Quiet machine: building the tiny model, then SFT and generate, each a new interpreter
    # importing torch (5 s), about 25 s; under load imports slow down more than anything else.
    run = await cluster.wait_phase("tiny", phases.AWAITING_RATINGS, round_no=1, timeout=budget(40))
    paths = RunPaths("default", "tiny")
    rate_round(run_store, paths, read_frozen_run(run_store, paths), 1)
    await rate_when_awaiting(cluster, run_store, "tiny", 2, timeout=budget(15))
    run = await cluster.wait_phase("tiny", phases.SUCCEEDED, timeout=budget(30))
    assert run_store.exists(paths.policy_metrics(2)) and run_store.exists(paths.eval_results())
    assert run_store.read_json(paths.policy_metrics(1))["kind"] == "ppo-generate"
    assert job_names(await cluster.jobs()) == sorted(
        ["tiny-sft-r0-a1", "tiny-generate-r1-a1", "tiny-ppo-generate-r1-a1", "tiny-ppo-r2-a1", "tiny-evaluate-r0-a1"]
    )
    systems = [s["name"] for s in run["status"]["evaluation"]["summary"]["systems"]]
    assert systems == ["base", "sft", "final"]
    assert run["status"]["rounds"][1]["checkpoint"].endswith("rounds/0002/policy")


async def test_no_permission_is_a_condition_not_a_crash(cluster, run_spec):
    """The API refuses to list Jobs (an operator without RBAC in this namespace)."""
    import kmock

    cluster.emulator[kmock.action.LIST, kmock.resource("batch/v1/jobs")] << 403
    await cluster.start_operator()
    await cluster.create_run("demo", run_spec())

    run = await cluster.wait_reason("demo", phases.R_FORBIDDEN, budget(2))
    assert "listing Jobs of default/demo: HTTP 403" in condition(run, "Ready")["message"]
    assert condition(run, "Failed")["status"] == "False"
    events = [e for e in await cluster.events() if e["reason"] == phases.R_FORBIDDEN]
    assert len(events) == 1 and events[0]["type"] == "Warning"
    assert await cluster.list("/api/v1/namespaces/default/configmaps")  # it got as far as it was allowed
