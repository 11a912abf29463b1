"""The KL reference is the policy PPO started from: the frozen SFT adapter with SFT on, the base without."""

from __future__ import annotations

import pytest
import torch
from tests.support.sft_adapter import store_sft_adapter

from therapy_rlhf.jobs import models, ppo, ppo_trainer, reference
from therapy_rlhf.jobs.common import JobContext
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.contracts.records import parse_batch
from tests.support.job_steps import rated_round, run_job  # tests/support
from tests.support.manifests import run_manifest

PROMPTS = [
    {"id": "paper-depressed-hopeless", "text": "I'm feeling depressed and hopeless. Can you help me?"},
    {"id": "grief", "text": "My father died last month and I can't accept it."},
]


def manifest(store_dir, sft: bool, name="ref-test"):
    return run_manifest({
                "model": {"source": "tiny:mistral", "maxLength": 128},
                "storage": {"localPath": str(store_dir)},
                "sft": {"enabled": sft},
                "ppo": {
                    "rounds": 2,
                    "prompts": PROMPTS,
                    "samplesPerPrompt": 3,
                    "generation": {"maxNewTokens": 8, "batchSize": 2, "temperature": 0.7},
                    "learningRate": 1e-2,
                    "epochs": 2,
                    "miniBatchSize": 3,
                },
                "evaluation": {"enabled": False, "checkpoints": ["base"]},
            }, name, "default")






def batch_logprobs(m, store, paths, adapter_key, round_no):
    """Log-probs of round ``round_no``'s responses under base + the adapter at ``adapter_key`` (None: base)."""
    ctx = JobContext(kind="check", manifest=m, round=round_no, store=store)
    policy, tokenizer, _ = models.load_policy(ctx, adapter_key, trainable=False)
    responses, _ = parse_batch(store.read_text(paths.batch(round_no)))
    samples = [ppo_trainer.Sample(r.prompt_token_ids, r.response_token_ids, 0.0) for r in responses]
    width = max(len(s.response_ids) for s in samples)
    with torch.no_grad():
        fwd = ppo_trainer.forward_responses(policy, None, samples, width, tokenizer.pad_token_id, "cpu",
                                            temperature=responses[0].generation.temperature)
    ctx.close()
    return fwd.logprobs


def test_kl_before_the_first_update_is_exactly_zero_with_sft(local_store, tmp_path):
    m = manifest(tmp_path, sft=True)
    paths = store_sft_adapter(m, local_store)
    rated_round(m, local_store, 1)
    run_job(ppo, "ppo", m, local_store, 1)
    metrics = local_store.read_json(paths.policy_metrics(1))
    assert metrics["kl"] == 0.0
    assert metrics["started_from"] == metrics["reference"] == paths.sft_adapter()
    assert metrics["kl_negative"] is False and metrics["warnings"] == []
    # the base is far from the SFT policy: a base reference (the old behaviour) would not be 0
    sft_lp = batch_logprobs(m, local_store, paths, paths.sft_adapter(), 1)
    base_lp = batch_logprobs(m, local_store, paths, None, 1)
    assert float((sft_lp - base_lp).sum(1).mean()) > 0.01
    # only the trained adapter is stored: no copy of the reference under rounds/1/policy
    stored = local_store.list(paths.policy_prefix(1))
    assert not any("/reference/" in k for k in stored)
    assert paths.policy_prefix(1) + "/adapter_model.safetensors" in stored


def test_kl_before_the_first_update_is_exactly_zero_without_sft(local_store, tmp_path):
    m = manifest(tmp_path, sft=False)
    paths = RunPaths("default", m.name)
    rated_round(m, local_store, 1)
    run_job(ppo, "ppo", m, local_store, 1)
    metrics = local_store.read_json(paths.policy_metrics(1))
    assert metrics["reference"] == reference.BASE and metrics["kl"] == 0.0


@pytest.mark.slow
def test_round_two_measures_kl_against_the_sft_policy_not_the_base(local_store, tmp_path):
    m = manifest(tmp_path, sft=True)
    paths = store_sft_adapter(m, local_store)
    rated_round(m, local_store, 1)
    run_job(ppo, "ppo", m, local_store, 1)
    rated_round(m, local_store, 2)
    run_job(ppo, "ppo", m, local_store, 2)
    metrics = local_store.read_json(paths.policy_metrics(2))
    policy_lp = batch_logprobs(m, local_store, paths, paths.policy_prefix(1), 2)
    sft_lp = batch_logprobs(m, local_store, paths, paths.sft_adapter(), 2)
    base_lp = batch_logprobs(m, local_store, paths, None, 2)
    against_sft = float((policy_lp - sft_lp).sum(1).mean())
    against_base = float((policy_lp - base_lp).sum(1).mean())
    assert metrics["kl"] == pytest.approx(against_sft, abs=1e-4)
    assert abs(metrics["kl"] - against_base) > 0.01
    assert metrics["started_from"] == paths.policy_prefix(1) and metrics["reference"] == paths.sft_adapter()
    # the optimizer state still covers only the trained adapter and the value head (the checkpoint contract)
    assert metrics["optimizer_resumed"] is True and metrics["optimizer_steps_total"] == 2 * metrics["optimizer_steps"]


def test_the_reference_adapter_stays_frozen_and_out_of_the_optimizer(tmp_path):
    m = manifest(tmp_path / "unused", sft=True)
    base, _ = models.load_base_model(m.spec.model, "cpu")
    torch.manual_seed(0)
    policy = models.attach_adapter(base, m.spec.model, None, trainable=True)
    trainable_before = [n for n, p in policy.named_parameters() if p.requires_grad]
    out = tmp_path / "ref"
    policy.save_pretrained(str(out))
    reference.attach(policy, out)
    assert [n for n, p in policy.named_parameters() if p.requires_grad] == trainable_before
    with reference.active(policy, reference.REFERENCE_ADAPTER):
        assert policy.active_adapter == reference.REFERENCE_ADAPTER
    assert policy.active_adapter == reference.POLICY_ADAPTER
    assert [n for n, p in policy.named_parameters() if p.requires_grad] == trainable_before
