"""Integrity with the operator as executor (kopf against kmock's emulator, moto's S3).

The forgeries are plain writes to the bucket, as a holder of a rater's
credential could make them if the bucket policy were too broad; the stand-in
jobs' STANDIN_TAMPER makes one at the worst moment (just before a Job reads
its inputs). The operator's record (status.digests) and the Jobs' checks must
keep each of them out of training, with Warning Events."""

from __future__ import annotations

import hashlib

import pytest

from therapy_rlhf.contracts import phases
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.rounds import load_round, read_gate
from therapy_rlhf.contracts.records import Gate, ResponseReward
from therapy_rlhf.store.runs import read_frozen_run
from therapy_rlhf.feedback.simrater import rate_round

from tests.support.budget import budget

pytestmark = pytest.mark.timeout(budget(25))
PATHS = RunPaths("default", "demo")


def condition(run: dict, ctype: str) -> dict:
    return next(c for c in run["status"]["conditions"] if c["type"] == ctype)


def forged_gate(store, round_no: int) -> dict:
    state = load_round(store, PATHS, round_no)
    rewards = {r.id: ResponseReward(reward=1.0, raters=["mallory"], ratings=[f"mallory/{r.id}/v1"]) for r in state.responses}
    return Gate(round=round_no, reason="complete", closed_by="operator", min_raters=1, responses_total=len(rewards),
                responses_rewarded=len(rewards), rewards=rewards, mean_reward=1.0,
                batch_sha256=state.batch_sha256).model_dump(mode="json")


async def test_a_gate_nobody_closed_never_starts_ppo_and_is_replaced(cluster, run_spec, run_store):
    await cluster.start_operator()
    await cluster.create_run("demo", run_spec())
    await cluster.wait_phase("demo", phases.AWAITING_RATINGS, round_no=1)
    run_store.create_json(PATHS.gate(1), forged_gate(run_store, 1))  # a round nobody rated
    await cluster.settle(8)
    run = await cluster.run("demo")
    assert run["status"]["phase"] == phases.AWAITING_RATINGS and run["status"]["round"] == 1
    assert not [j for j in await cluster.jobs() if "-ppo-" in j["metadata"]["name"]]
    assert "rounds/0001/gate.json" not in run["status"]["digests"]
    # Rated for real: the operator closes the round itself, over the forged gate.
    rate_round(run_store, PATHS, read_frozen_run(run_store, PATHS), 1)
    run = await cluster.wait_phase("demo", phases.AWAITING_RATINGS, round_no=2)
    gate = read_gate(run_store, PATHS, 1)
    assert gate.closed_by == "operator" and all(r.raters == ["sim-rater"] for r in gate.rewards.values())
    assert run["status"]["digests"]["rounds/0001/gate.json"] == hashlib.sha256(run_store.read_bytes(PATHS.gate(1))).hexdigest()
    replaced = [e for e in await cluster.events() if e["reason"] == phases.R_GATE_REPLACED]
    assert len(replaced) == 1 and replaced[0]["type"] == "Warning"


@pytest.mark.parametrize(
    "tamper, one_job, needle",
    [
        ("ppo-generate:1=gate", True, "rounds/0001/gate.json does not match the digest the executor recorded"),
        ("ppo:1=gate", False, "rounds/0001/gate.json does not match the digest the executor recorded"),
        ("generate:2=policy", False, "rounds/0001/policy/ does not match the digest the executor recorded"),
    ],
    ids=["closed-gate-overwritten", "closed-gate-overwritten-separate-jobs", "checkpoint-overwritten"],
)
async def test_jobs_refuse_overwritten_inputs_with_warning_events(cluster, run_spec, run_store, tamper, one_job, needle):
    cluster.job_env["STANDIN_TAMPER"] = tamper
    await cluster.start_operator()
    await cluster.create_run("demo", run_spec(backoffLimit=1, ppo={**run_spec()["ppo"], "oneJobPerRound": one_job}))
    await cluster.wait_phase("demo", phases.AWAITING_RATINGS, round_no=1)
    rate_round(run_store, PATHS, read_frozen_run(run_store, PATHS), 1)
    run = await cluster.wait_phase("demo", phases.FAILED)
    failed = condition(run, "Failed")
    assert failed["reason"] == phases.R_JOB_FAILED and needle in failed["message"]
    events = await cluster.events()
    retry = [e for e in events if e["reason"] == phases.R_JOB_RETRYING]
    assert retry and all(e["type"] == "Warning" for e in retry) and needle in retry[0]["message"]
    assert [e["type"] for e in events if e["reason"] == phases.R_JOB_FAILED] == ["Warning"]
    kind = tamper.split(":")[0]
    if kind in ("ppo", "ppo-generate"):
        assert not run_store.exists(PATHS.policy_metrics(1))
    assert not run_store.exists(PATHS.batch(2))


async def test_the_record_holds_every_output_and_gate(cluster, run_spec, run_store):
    await cluster.start_operator()
    await cluster.create_run("demo", run_spec(ppo={**run_spec()["ppo"], "rounds": 1}))
    await cluster.wait_phase("demo", phases.AWAITING_RATINGS, round_no=1)
    rate_round(run_store, PATHS, read_frozen_run(run_store, PATHS), 1)
    run = await cluster.wait_phase("demo", phases.SUCCEEDED)
    digests = run["status"]["digests"]
    assert set(digests) == {"sft/adapter/", "rounds/0001/batch.jsonl", "rounds/0001/gate.json",
                            "rounds/0001/policy/", "rounds/0001/optimizer.pt", "eval/results.json"}
    assert digests["rounds/0001/batch.jsonl"] == hashlib.sha256(run_store.read_bytes(PATHS.batch(1))).hexdigest()
    # The PPO Job was started with them.
    (ppo,) = [j for j in await cluster.jobs() if "-ppo-" in j["metadata"]["name"]]
    command = ppo["spec"]["template"]["spec"]["containers"][0]["command"]
    assert f"rounds/0001/gate.json={digests['rounds/0001/gate.json']}" in command
    assert f"rounds/0001/batch.jsonl={digests['rounds/0001/batch.jsonl']}" in command
    assert any(a.startswith("run-config=") for a in command)


async def test_a_planted_evaluation_result_does_not_finish_the_run(cluster, run_spec, run_store):
    """eval/results.json counts only with the digest the evaluate Job reported (issue 18)."""
    await cluster.start_operator()
    await cluster.create_run("demo", run_spec(ppo={**run_spec()["ppo"], "rounds": 1}))
    await cluster.wait_phase("demo", phases.AWAITING_RATINGS, round_no=1)
    run_store.write_json(PATHS.eval_results(), {"models": {"base": {"rouge1": 0.99}}, "planted": True})
    rate_round(run_store, PATHS, read_frozen_run(run_store, PATHS), 1)
    run = await cluster.wait_phase("demo", phases.SUCCEEDED)
    assert [j for j in await cluster.jobs() if "-evaluate-" in j["metadata"]["name"]]  # the evaluation really ran
    results = run_store.read_json(PATHS.eval_results())
    assert results.get("standin") is True and "planted" not in results
    assert run["status"]["digests"]["eval/results.json"] == hashlib.sha256(run_store.read_bytes(PATHS.eval_results())).hexdigest()


async def test_an_edited_run_config_map_is_restored_before_the_job_runs(cluster, run_spec):
    cluster.paused = True
    await cluster.start_operator()
    await cluster.create_run("demo", run_spec())
    run = await cluster.wait_phase("demo", phases.SFT)
    cm_path = "/api/v1/namespaces/default/configmaps/demo-run-config"
    original = (await cluster.api("GET", cm_path))["data"]
    # The Job is pending; someone edits the run config it will mount.
    edited = {"run.json": original["run.json"].replace('"learningRate": 0.0002', '"learningRate": 0.5')}
    assert edited != original
    await cluster.api("PATCH", cm_path, {"data": edited})

    async def restored():
        return (await cluster.api("GET", cm_path))["data"] == original

    await cluster.wait_for(restored, what="the ConfigMap to be restored")
    events = [e for e in await cluster.events() if e["reason"] == phases.R_RUN_CONFIG_RESTORED]
    assert events and events[0]["type"] == "Warning"
    cluster.release(run["status"]["activeJob"]["name"])
    await cluster.wait_phase("demo", phases.GENERATING, round_no=1)
