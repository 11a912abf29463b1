"""feedback.selection on the cluster: the real jobs (tiny Mistral) under the real operator, against kmock's
emulator and moto's S3. The operator records each selection's digest from the Job that sampled the batch,
closes the gate from that verified selection, and shows the model's part in the run's status."""

from __future__ import annotations

import pytest
from tests.support.budget import budget

from therapy_rlhf.contracts import phases
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.rounds import read_gate
from therapy_rlhf.store.runs import read_frozen_run
from therapy_rlhf.feedback.simrater import rate_round

pytestmark = pytest.mark.timeout(budget(120))


async def test_a_selecting_run_on_real_jobs(cluster, run_spec, run_store):
    cluster.standin = False
    spec = run_spec(
        model={"source": "tiny:mistral", "maxLength": 128, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        sft={"enabled": False},
        evaluation={"enabled": False, "checkpoints": ["base"]},
        feedback={"selection": {"mode": "active", "budget": 2, "minRatings": 2, "unselected": "model", "probation": False}},
    )
    spec["ppo"].update(
        rounds=2, samplesPerPrompt=3, epochs=1, miniBatchSize=2,
        prompts=[{"id": "down", "text": "I've been feeling really down lately."},
                 {"id": "sleep", "text": "My thoughts race every night and I can't sleep."}],
        generation={"maxNewTokens": 6, "temperature": 1.0, "topP": 1.0, "batchSize": 2},
    )
    await cluster.start_operator()
    await cluster.create_run("sel", spec)
    paths = RunPaths("default", "sel")
    run = await cluster.wait_phase("sel", phases.AWAITING_RATINGS, round_no=1, timeout=budget(40))
    assert run["status"]["rated"] == "0/2"  # the gate waits for the two responses sent to the experts
    rate_round(run_store, paths, read_frozen_run(run_store, paths), 1)
    run = await cluster.wait_phase("sel", phases.AWAITING_RATINGS, round_no=2, timeout=budget(40))
    rate_round(run_store, paths, read_frozen_run(run_store, paths), 2)
    run = await cluster.wait_phase("sel", phases.SUCCEEDED, timeout=budget(30))
    gate = read_gate(run_store, paths, 2)
    assert len(gate.rewards) == 2 and len(gate.model_scored) == 4 and gate.reward_model.responses == 2
    assert run_store.read_json(paths.policy_metrics(2))["model_scored"] == 4
    digests = run["status"]["digests"]
    assert {"rounds/0001/selection.json", "rounds/0002/selection.json"} <= set(digests)
    second = run["status"]["rounds"][1]
    assert (second["notSentToExperts"], second["modelScored"]) == (4, 4)
    assert second["rewardModelError"] == gate.reward_model.mae and second["rewardModelDrifted"] is False
    closed = [e for e in await cluster.events() if e.get("reason") == phases.R_GATE_CLOSED]
    assert any("4 model-scored" in e.get("message", "") for e in closed)
