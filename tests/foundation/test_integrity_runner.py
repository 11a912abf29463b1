"""Integrity that does not depend on the bucket policy, with the local runner as executor.

Each forgery is a plain write to the store, as anyone holding a rater's
credential could make if the bucket policy let them (tests/support/
standin_jobs.py's STANDIN_TAMPER makes it at the worst moment: just before the
job reads its inputs). The runner's record (state.json in its private work
folder) and the jobs' digest checks must keep every one of them out of training."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from pathlib import Path

import pytest
from rich.console import Console

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.rounds import load_round, read_gate
from therapy_rlhf.contracts.records import Gate, ResponseReward
from therapy_rlhf.execution.runner import EXIT_FAILED, EXIT_SUCCEEDED, EXIT_SUSPENDED, LocalRunner
from tests.support.manifests import run_manifest

PATHS = RunPaths("default", "demo")
STANDIN = [sys.executable, str(Path(__file__).resolve().parents[1] / "support" / "standin_jobs.py")]


def manifest(tmp_path: Path, **spec_overrides):
    spec = {
        "model": {"source": "tiny:mistral"},
        "storage": {"localPath": str(tmp_path / "store")},
        "sft": {"enabled": False},
        "ppo": {"rounds": 2, "samplesPerPrompt": 2, "prompts": [{"id": "p-depressed", "text": "I feel hopeless."}]},
    }
    for key, value in spec_overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return run_manifest(spec, "demo")


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("THERAPY_RLHF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("STANDIN_STATE_DIR", str(tmp_path / "standin"))


def runner(m, store, **kw):
    out = io.StringIO()
    kw.setdefault("scoring", "auto")
    kw.setdefault("poll_interval", 0.01)
    r = LocalRunner(m, store, job_command=STANDIN, console=Console(file=out, width=400), **kw)
    return r, out


def forged_gate(store, round_no: int) -> dict:
    """A schema-valid gate.json for a round, every response rewarded 1.0 by a made-up rater."""
    state = load_round(store, PATHS, round_no)
    rewards = {
        r.id: ResponseReward(reward=1.0, raters=["mallory"], ratings=[f"mallory/{r.id}/v1"]) for r in state.responses
    }
    return Gate(round=round_no, reason="complete", closed_by="operator", min_raters=1,
                responses_total=len(rewards), responses_rewarded=len(rewards), rewards=rewards,
                mean_reward=1.0, batch_sha256=state.batch_sha256).model_dump(mode="json")


def test_a_gate_nobody_closed_is_never_acted_on(tmp_path, store):
    m = manifest(tmp_path, sft={"enabled": False}, evaluation={"enabled": False}, ppo={"rounds": 1})
    planted = []

    def plant(action):
        if not planted:  # round 1 awaits ratings and nobody has rated: create its gate
            store.create_json(PATHS.gate(1), forged_gate(store, 1))
            planted.append(True)

    r, out = runner(m, store, scoring="none", on_wait=plant, max_polls=4)
    assert r.run() == EXIT_SUSPENDED  # still waiting for ratings after the forged gate appeared
    assert planted and not store.exists(PATHS.policy_metrics(1))
    assert "ignoring a gate.json this runner did not close" in out.getvalue()
    # Once the round is really rated, the runner closes it itself, over the forged one.
    r, out = runner(m, store)
    assert r.run() == EXIT_SUCCEEDED
    gate = read_gate(store, PATHS, 1)
    assert gate.closed_by == "local-runner" and all(rr.raters == ["sim-rater"] for rr in gate.rewards.values())
    assert "replaced a gate.json this runner had not closed" in out.getvalue()


SEPARATE = {"oneJobPerRound": False}  # a ppo Job and a generate Job per round


@pytest.mark.parametrize(
    "tamper, spec, needle",
    [
        ("ppo-generate:1=gate", {}, "rounds/0001/gate.json does not match the digest the executor recorded"),
        ("ppo-generate:1=batch", {}, "rounds/0001/batch.jsonl does not match the digest the executor recorded"),
        ("ppo:1=gate", {"ppo": SEPARATE}, "rounds/0001/gate.json does not match the digest the executor recorded"),
        ("ppo:1=batch", {"ppo": SEPARATE}, "rounds/0001/batch.jsonl does not match the digest the executor recorded"),
        ("generate:2=policy", {"ppo": SEPARATE}, "rounds/0001/policy/ does not match the digest the executor recorded"),
        ("ppo:2=policy", {}, "rounds/0001/policy/ does not match the digest the executor recorded"),
        ("generate:1=sft", {"sft": {"enabled": True}}, "sft/adapter/ does not match the digest the executor recorded"),
        ("ppo:2=sft", {"sft": {"enabled": True}}, "sft/adapter/ does not match the digest the executor recorded"),
        ("ppo-generate:1=sft", {"sft": {"enabled": True}}, "sft/adapter/ does not match the digest the executor recorded"),
    ],
    ids=["gate-overwritten", "batch-overwritten", "gate-overwritten-separate-jobs", "batch-overwritten-separate-jobs",
         "checkpoint-before-generate", "checkpoint-before-ppo", "sft-adapter", "kl-reference", "kl-reference-one-job"],
)
def test_jobs_refuse_inputs_overwritten_in_the_store(tmp_path, store, monkeypatch, tamper, spec, needle):
    monkeypatch.setenv("STANDIN_TAMPER", tamper)
    spec = dict(spec)  # the parameter is shared by the local and s3 runs
    ppo = {"rounds": 2, **spec.pop("ppo", {})}
    m = manifest(tmp_path, ppo=ppo, evaluation={"enabled": False}, backoffLimit=0, **spec)
    r, out = runner(m, store)
    assert r.run() == EXIT_FAILED
    text = out.getvalue()
    assert needle in text and "refusing to use" in text
    kind, _, rest = tamper.partition(":")
    round_no = int(rest.split("=")[0])
    # The refusing job wrote nothing: no policy of that round, no batch of that round (or the next).
    if kind in ("ppo", "ppo-generate"):
        assert not store.exists(PATHS.policy_metrics(round_no)) and not store.list(PATHS.policy_prefix(round_no) + "/")
        assert not store.exists(PATHS.batch(round_no + 1))
    else:
        assert not store.exists(PATHS.batch(round_no))


def test_a_one_job_round_that_dies_while_sampling_leaves_its_update_verifiable(tmp_path, store, monkeypatch):
    # The fused job reported round 1's update before it sampled; the generate job that
    # resumes round 2 is started with that digest, and verifies the checkpoint it reads.
    monkeypatch.setenv("STANDIN_DIE_AFTER_UPDATE", "1")
    m = manifest(tmp_path, ppo={"rounds": 2}, evaluation={"enabled": False})
    r, out = runner(m, store)
    assert r.run() == EXIT_SUCCEEDED
    text = out.getvalue()
    assert "dying after the update" in text and "generate job finished" in text
    assert "rounds/0001/policy/" in json.loads((r.work_dir / "state.json").read_text())["digests"]


def test_the_record_survives_the_runner_and_is_private(tmp_path, store):
    m = manifest(tmp_path, ppo={"rounds": 1}, evaluation={"enabled": False}, sft={"enabled": True})
    r, _ = runner(m, store)
    assert r.run() == EXIT_SUCCEEDED
    state = json.loads((r.work_dir / "state.json").read_text())["digests"]
    assert set(state) == {"sft/adapter/", "rounds/0001/batch.jsonl", "rounds/0001/gate.json",
                          "rounds/0001/policy/", "rounds/0001/optimizer.pt"}
    assert not str(r.work_dir).startswith(str(tmp_path / "store"))  # not in the store
    # What the record says of the gate is the gate as stored.
    assert state["rounds/0001/gate.json"] == hashlib.sha256(store.read_bytes(PATHS.gate(1))).hexdigest()
    assert os.path.exists(r.work_dir / "run.json")


def test_a_planted_evaluation_result_is_not_a_finished_run(tmp_path, store):
    """eval/results.json counts only with the digest the evaluate job reported (issue 18): a file planted before
    the evaluation neither finishes the run nor survives it."""
    m = manifest(tmp_path, ppo={"rounds": 1}, evaluation={"enabled": True})
    store.write_json(PATHS.eval_results(), {"models": {"base": {"rouge1": 0.99}}, "planted": True})
    r, out = runner(m, store)
    assert r.run() == EXIT_SUCCEEDED, out.getvalue()
    assert "evaluate job finished" in out.getvalue()  # the evaluation really ran
    results = store.read_json(PATHS.eval_results())
    assert results.get("standin") is True and "planted" not in results
    name = "eval/results.json"
    assert r.digests[name] == hashlib.sha256(store.read_bytes(PATHS.eval_results())).hexdigest()
    # a run whose evaluation is recorded finishes without running it again
    r, out = runner(m, store)
    assert r.run() == EXIT_SUCCEEDED and "evaluate job" not in out.getvalue()
