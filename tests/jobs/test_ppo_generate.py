"""The ppo-generate job (one Job per round): the same update and the same next batch as two
jobs, the update stored before anything is sampled, and a crash between the two halves."""

from __future__ import annotations

import pytest
import torch
import yaml
from tests.support.recording_store import RecordingStore, snapshot
from tests.support.sft_adapter import store_sft_adapter

from therapy_rlhf.jobs import generate, models, ppo, ppo_generate
from therapy_rlhf.jobs.__main__ import run as job_main
from therapy_rlhf.jobs.common import JobContext
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.planning.observe import observe_store
from therapy_rlhf.planning.planner import StartJob, plan
from therapy_rlhf.contracts.records import parse_batch
from therapy_rlhf.store.backends import LocalStore
from tests.support import job_steps
from tests.support.job_steps import run_job
from tests.support.manifests import run_manifest


def manifest(store_dir, sft: bool = False):
    return run_manifest({
                "model": {"source": "tiny:mistral", "maxLength": 128},
                "storage": {"localPath": str(store_dir)},
                "sft": {"enabled": sft},
                "ppo": {
                    "rounds": 3,
                    "prompts": [
                        {"id": "hopeless", "text": "I'm feeling depressed and hopeless. Can you help me?"},
                        {"id": "grief", "text": "My father died last month and I can't accept it."},
                    ],
                    "samplesPerPrompt": 2,
                    "generation": {"maxNewTokens": 8, "batchSize": 2},
                    "learningRate": 1e-2,
                    "epochs": 2,
                    "miniBatchSize": 2,
                },
                "evaluation": {"enabled": False, "checkpoints": ["base"]},
            }, "fused-test", "default")




def rated_round(m, store):
    """Round 1 generated (from a stored SFT adapter when SFT is on), scored by the simulated rater, gated."""
    if m.spec.sft.enabled:
        store_sft_adapter(m, store)
    job_steps.rated_round(m, store, 1)


def batch_tokens(store, paths, r):
    responses, errors = parse_batch(store.read_text(paths.batch(r)))
    assert errors == []
    return [(x.id, x.policy, x.prompt_token_ids, x.response_token_ids, x.response) for x in responses]


def adapter_bytes(store, paths, r):
    prefix = paths.policy_prefix(r) + "/"
    return {k: store.read_bytes(k) for k in store.list(prefix) if k.endswith(".safetensors")}


def tokens(batch):
    return [response_ids for _id, _policy, _prompt, response_ids, _text in batch]


def unupdated_batch(m, store, out_dir):
    """Round 2's batch as round 1's starting policy (SFT adapter, or the fresh LoRA) would sample it."""
    paths = RunPaths("default", m.name)
    ctx = JobContext(kind="generate", manifest=m, round=2, store=store)
    torch.manual_seed(m.spec.ppo.seed)  # the fresh LoRA as the generate job draws it
    policy, tokenizer, _ = models.load_policy(ctx, paths.policy_for_round(1, m.spec.sft.enabled))
    ctx.store = out = LocalStore(out_dir)
    try:
        generate.write_batch(ctx, policy, tokenizer, 2)
    finally:
        ctx.close()
    return batch_tokens(out, paths, 2)


@pytest.mark.parametrize("sft", [False, True], ids=["base-reference", "sft-reference"])
def test_one_job_equals_update_then_generate_and_stores_the_update_first(tmp_path, sft):
    """The same update (with SFT on: against the frozen SFT adapter as KL reference, which the
    fused Job keeps loaded beside the policy while it samples) and the same next batch as two jobs."""
    m = manifest(tmp_path, sft)
    paths = RunPaths("default", m.name)
    fused = RecordingStore(tmp_path / "fused")
    rated_round(m, fused)
    fused.writes.clear()
    run_job(ppo_generate, "ppo-generate", m, fused, 1)

    separate = LocalStore(tmp_path / "separate")
    rated_round(m, separate)
    run_job(ppo, "ppo", m, separate, 1)
    run_job(generate, "generate", m, separate, 2)

    # Same checkpoint, same next batch (sampled from the stored adapter in the two-job case).
    assert adapter_bytes(fused, paths, 1) == adapter_bytes(separate, paths, 1) != {}
    assert batch_tokens(fused, paths, 2) == batch_tokens(separate, paths, 2)
    # ...and that batch is the updated policy's: the policy round 1 started from (with SFT on,
    # also the KL reference the fused Job holds) samples other tokens with round 2's seeds.
    assert tokens(batch_tokens(fused, paths, 2)) != tokens(unupdated_batch(m, separate, tmp_path / "start"))
    assert {x[1] for x in batch_tokens(fused, paths, 2)} == {paths.policy_prefix(1)}
    # Round 1's marker is written before round 2's batch, and the batch is the last write.
    writes = fused.writes
    assert writes[-1] == paths.batch(2)
    assert writes.index(paths.policy_metrics(1)) < writes.index(paths.batch(2))
    metrics = fused.read_json(paths.policy_metrics(1))
    assert metrics["kind"] == "ppo-generate" and metrics["responses"] == 4
    expected_reference = paths.sft_adapter() if sft else "base"
    assert metrics["reference"] == separate.read_json(paths.policy_metrics(1))["reference"] == expected_reference
    assert metrics["kl"] == separate.read_json(paths.policy_metrics(1))["kl"]


def test_a_crash_between_update_and_generate_resumes_with_a_generate_job(tmp_path, monkeypatch, capsys):
    """The Job dies after storing round 1's update: the planner's next step is round 2's generate,
    which writes the batch the uncrashed Job would have written."""
    m = manifest(tmp_path / "store")
    paths = RunPaths("default", m.name)
    store = LocalStore(tmp_path / "store")
    rated_round(m, store)
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump(m.model_dump(mode="json", by_alias=True, exclude_none=True)))

    def dies(*args, **kwargs):
        raise RuntimeError("the node went away")

    monkeypatch.setattr(generate, "sample_responses", dies)
    rc = job_main(["ppo-generate", "--run-config", str(run_file), "--round", "1", "--store", str(store.root)])
    assert rc == 2 and "the node went away" in capsys.readouterr().err
    assert store.exists(paths.policy_metrics(1)) and not store.exists(paths.batch(2))
    monkeypatch.undo()

    observed, _ = observe_store(store, paths, m.spec)
    assert plan(m.spec, observed).action == StartJob("generate", 2, 1)
    before = snapshot(store)
    run_job(generate, "generate", m, store, 2)
    after = snapshot(store)
    assert {k: after[k] for k in before} == before  # the stored update is not redone

    reference = LocalStore(tmp_path / "reference")
    rated_round(m, reference)
    run_job(ppo_generate, "ppo-generate", m, reference, 1)
    assert batch_tokens(store, paths, 2) == batch_tokens(reference, paths, 2)


def test_retry_after_the_update_samples_from_the_stored_checkpoint(tmp_path):
    """Run by hand on a round whose update is stored: no second update, the batch from the checkpoint."""
    m = manifest(tmp_path)
    paths = RunPaths("default", m.name)
    store = LocalStore(tmp_path / "store")
    rated_round(m, store)
    run_job(ppo, "ppo", m, store, 1)
    before = snapshot(store)
    run_job(ppo_generate, "ppo-generate", m, store, 1)
    after = snapshot(store)
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before) == {paths.fluency(2), paths.batch(2)}  # the batch and its fluency


def test_the_last_round_is_refused_before_anything_is_loaded(tmp_path, capsys):
    m = manifest(tmp_path / "store")
    store = LocalStore(tmp_path / "store")
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump(m.model_dump(mode="json", by_alias=True, exclude_none=True)))
    rounds = m.spec.ppo.rounds
    rc = job_main(["ppo-generate", "--run-config", str(run_file), "--round", str(rounds), "--store", str(store.root)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert err[0] == (
        f"error: round {rounds} is the run's last (ppo.rounds is {rounds}): nothing to generate after it; use the ppo job"
    )
    assert not store.root.exists() or store.list("") == []  # nothing written


@pytest.mark.parametrize("round_no", ["0", "-1"])
def test_round_must_be_one_or_more(tmp_path, capsys, round_no):
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump(manifest(tmp_path).model_dump(mode="json", by_alias=True, exclude_none=True)))
    assert job_main(["ppo-generate", "--run-config", str(run_file), "--round", round_no]) == 64
    assert f"--round must be 1 or more for ppo-generate (got {round_no})" in capsys.readouterr().err
