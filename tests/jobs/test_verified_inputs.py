"""The real jobs (`python -m therapy_rlhf.jobs`) check their inputs against the executor's digests.

With ``--expect`` a job refuses, with one ``error:`` line and nothing written, a
run config or a stored input whose digest is not the one its executor recorded,
and a stored input the executor never recorded; and it reports the digests of
its own outputs in ``--outputs-file``."""

from __future__ import annotations

import hashlib
import json

import pytest

from therapy_rlhf.store import integrity
from therapy_rlhf.feedback import simrater
from therapy_rlhf.feedback.gate import close_gate
from therapy_rlhf.jobs.__main__ import run as job_main
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.store.backends import LocalStore
from tests.support.manifests import run_manifest


def manifest(store_dir, sft: bool = False):
    return run_manifest({
            "model": {"source": "tiny:mistral", "maxLength": 96, "lora": {"r": 2, "alpha": 4, "dropout": 0.0}},
            "storage": {"localPath": str(store_dir)},
            "sft": {"enabled": sft},
            "ppo": {"rounds": 2, "samplesPerPrompt": 2, "epochs": 1, "miniBatchSize": 2,
                    "prompts": [{"id": "hopeless", "text": "I'm feeling depressed and hopeless."}],
                    "generation": {"maxNewTokens": 4, "batchSize": 2}},
            "evaluation": {"enabled": False, "checkpoints": ["base"]},
        }, "verify", "default")


@pytest.fixture
def gated(tmp_path):
    """Round 1 generated (through the job CLI, outputs reported), rated and gated by 'the executor'."""
    store = LocalStore(tmp_path / "store")
    m = manifest(tmp_path / "store")
    paths = RunPaths("default", m.name)
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps(m.model_dump(mode="json", by_alias=True, exclude_none=True)))
    outputs = tmp_path / "generate-outputs.json"
    config_sha = hashlib.sha256(run_file.read_bytes()).hexdigest()
    rc = job_main(["generate", "--run-config", str(run_file), "--round", "1", "--store", str(store.root),
                   "--expect", f"run-config={config_sha}", "--outputs-file", str(outputs)])
    assert rc == 0
    record = integrity.parse_outputs(outputs.read_text(), integrity.job_outputs("generate", 1, paths))
    assert record == {"rounds/0001/batch.jsonl": hashlib.sha256(store.read_bytes(paths.batch(1))).hexdigest()}
    simrater.rate_round(store, paths, m, 1)
    close_gate(store, paths, 1, m.spec.feedback, "complete", "test", digests=record, keep=record.__setitem__)
    return store, paths, m, run_file, record


def snapshot(store):
    return {k: store.read_bytes(k) for k in store.list("")}


def ppo(capsys, store, paths, m, run_file, record, round_no=1, outputs=None):
    args = ["ppo", "--run-config", str(run_file), "--round", str(round_no), "--store", str(store.root)]
    args += integrity.expect_args("ppo", round_no, m.spec, paths, record, hashlib.sha256(run_file.read_bytes()).hexdigest())
    if outputs:
        args += ["--outputs-file", str(outputs)]
    rc = job_main(args)
    return rc, capsys.readouterr().err.strip().splitlines()


def refused(capsys, gated, needle, record=None):
    store, paths, m, run_file, rec = gated
    before = snapshot(store)
    rc, err = ppo(capsys, store, paths, m, run_file, rec if record is None else record)
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: "), err
    assert needle in err[0], err[0]
    assert snapshot(store) == before  # nothing written


def test_a_closed_gate_overwritten_with_a_plain_put_is_refused(gated, capsys):
    store, paths, *_ = gated
    forged = store.read_json(paths.gate(1))
    for reward in forged["rewards"].values():
        reward["reward"] = 1.0  # same batch digest, forged rewards: what the old check let through
    store.write_json(paths.gate(1), forged)
    refused(capsys, gated, "rounds/0001/gate.json does not match the digest the executor recorded")


def test_a_batch_overwritten_after_generation_is_refused(gated, capsys):
    store, paths, *_ = gated
    store.write_bytes(paths.batch(1), store.read_bytes(paths.batch(1)) + b"\n")
    refused(capsys, gated, "rounds/0001/batch.jsonl does not match the digest the executor recorded")


def test_a_gate_the_executor_never_recorded_is_refused(gated, capsys):
    _, _, _, _, record = gated
    unrecorded = {k: v for k, v in record.items() if not k.endswith("gate.json")}
    refused(capsys, gated, "the executor never recorded its digest", record=unrecorded)


def test_an_edited_run_config_is_refused(gated, capsys, tmp_path):
    store, paths, m, run_file, record = gated
    sha = hashlib.sha256(run_file.read_bytes()).hexdigest()
    doc = json.loads(run_file.read_text())
    doc["spec"]["ppo"]["learningRate"] = 0.5  # edited after the executor wrote it
    run_file.write_text(json.dumps(doc))
    before = snapshot(store)
    rc = job_main(["ppo", "--run-config", str(run_file), "--round", "1", "--store", str(store.root),
                   "--expect", f"run-config={sha}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "is not the frozen spec the executor wrote" in err[0]
    assert snapshot(store) == before


@pytest.mark.slow
def test_ppo_reports_its_checkpoint_and_round_two_verifies_it(gated, capsys, tmp_path):
    store, paths, m, run_file, record = gated
    outputs = tmp_path / "ppo-outputs.json"
    rc, err = ppo(capsys, store, paths, m, run_file, record, outputs=outputs)
    assert rc == 0, err
    reported = integrity.parse_outputs(outputs.read_text(), integrity.job_outputs("ppo", 1, paths))
    files = {k[len(paths.policy_prefix(1)) + 1:]: hashlib.sha256(store.read_bytes(k)).hexdigest()
             for k in store.list(paths.policy_prefix(1) + "/")}
    assert reported["rounds/0001/policy/"] == integrity.tree_digest(files)
    assert reported["rounds/0001/optimizer.pt"] == hashlib.sha256(store.read_bytes(paths.optimizer_state(1))).hexdigest()
    record.update(reported)
    # A checkpoint file overwritten afterwards: round 2's generate refuses it.
    key = paths.policy_prefix(1) + "/adapter_config.json"
    config = store.read_json(key)
    config["r"] = 64
    store.write_json(key, config)
    before = snapshot(store)
    sha = hashlib.sha256(run_file.read_bytes()).hexdigest()
    rc = job_main(["generate", "--run-config", str(run_file), "--round", "2", "--store", str(store.root),
                   *integrity.expect_args("generate", 2, m.spec, paths, record, sha)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "rounds/0001/policy/ does not match the digest" in err[0], err
    assert snapshot(store) == before
