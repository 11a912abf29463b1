"""Guards of the PPO update: a negative mean KL and out-of-band probability ratios are reported; skipping is optional."""

from __future__ import annotations

import torch

from therapy_rlhf.jobs import models, ppo_trainer, reference
from therapy_rlhf.jobs.value_head import ValueHead
from tests.support.manifests import run_manifest


def manifest(tmp_path, **ppo):
    return run_manifest({
                "model": {"source": "tiny:mistral", "maxLength": 128},
                "storage": {"localPath": str(tmp_path)},
                "sft": {"enabled": False},
                "ppo": {"learningRate": 5e-3, "epochs": 3, "miniBatchSize": 2, **ppo},
                "evaluation": {"enabled": False, "checkpoints": ["base"]},
            }, "guards", "default")


def make_policy(m, scale=0.2, seed=0):
    base, tokenizer = models.load_base_model(m.spec.model, "cpu")
    torch.manual_seed(seed)
    policy = models.attach_adapter(base, m.spec.model, None, trainable=True)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, scale)
    return policy, tokenizer


def samples(tokenizer):
    enc = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in ("[INST] I feel so alone. [/INST]", "[INST] Help me [/INST]")]
    return [ppo_trainer.Sample(enc[0], [300, 301, 302, 303], 1.0), ppo_trainer.Sample(enc[1], [400, 401, 402, 403], 0.0)]


def lora_state(policy):
    return {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}


def update(m, policy, tokenizer, **kwargs):
    head = ValueHead(64).reset(0)
    logs = []
    stats = ppo_trainer.ppo_update(
        policy, head, samples(tokenizer), m.spec.ppo, 0.1, pad_id=tokenizer.pad_token_id, device="cpu", seed=0,
        log=lambda fmt, *a: logs.append(fmt % a), **kwargs,
    )
    return stats, logs


def test_out_of_band_ratios_are_reported_and_optionally_skipped(tmp_path):
    # A band so narrow that only the first minibatch (ratio exactly 1) is inside it.
    warn_only = manifest(tmp_path, ratioThreshold=1.000001, miniBatchSize=2)
    policy, tok = make_policy(warn_only)
    stats, logs = update(warn_only, policy, tok)
    assert stats["minibatches"] == 3 and stats["minibatches_outside_ratio_band"] == 2
    assert stats["minibatches_skipped"] == 0 and stats["optimizer_steps"] == 3
    assert any("mean probability ratio outside" in w for w in stats["warnings"])
    assert any(line.startswith("warning: 2 minibatch(es) had a mean probability ratio outside") for line in logs)

    skipping = manifest(tmp_path, ratioThreshold=1.000001, skipRatioOutliers=True)
    policy, tok = make_policy(skipping)
    stats, _ = update(skipping, policy, tok)
    assert stats["minibatches_skipped"] == 2 and stats["optimizer_steps"] == 1
    assert "2 skipped (skipRatioOutliers)" in stats["warnings"][-1]
    # skipped minibatches change nothing: the weights are those of the one epoch that was used
    one_epoch = manifest(tmp_path, epochs=1)
    policy_one, tok = make_policy(one_epoch)
    update(one_epoch, policy_one, tok)
    after, expected = lora_state(policy), lora_state(policy_one)
    assert all(torch.equal(after[k], expected[k]) for k in expected)


def test_default_band_reports_nothing_on_a_healthy_update(tmp_path):
    m = manifest(tmp_path)
    policy, tok = make_policy(m)
    stats, logs = update(m, policy, tok)
    assert stats["warnings"] == [] and stats["minibatches_outside_ratio_band"] == 0
    assert 0.1 < stats["ratio_mean_min"] <= stats["ratio_mean_max"] < 10
    assert not any(line.startswith("warning") for line in logs)


def test_a_negative_mean_kl_is_reported(tmp_path):
    """Tokens the reference likes more than the policy (not the policy's own samples) make the estimate negative."""
    m = manifest(tmp_path, epochs=1)
    ref_policy, tok = make_policy(m, scale=1.0, seed=3)
    ref_dir = tmp_path / "reference"
    ref_policy.save_pretrained(str(ref_dir))
    policy, tok = make_policy(m, scale=0.0)  # a fresh LoRA: the base itself
    reference.attach(policy, ref_dir)
    prompt = tok("[INST] I feel so alone. [/INST]", add_special_tokens=True)["input_ids"]
    with torch.no_grad(), reference.active(policy, reference.REFERENCE_ADAPTER):
        greedy = policy.generate(input_ids=torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                                 pad_token_id=tok.pad_token_id)[0, len(prompt):].tolist()
    batch = [ppo_trainer.Sample(prompt, greedy, 1.0), ppo_trainer.Sample(prompt, greedy, 0.0)]
    logs = []
    stats = ppo_trainer.ppo_update(policy, ValueHead(64).reset(0), batch, m.spec.ppo, 0.1, pad_id=tok.pad_token_id,
                                   device="cpu", seed=0, log=lambda fmt, *a: logs.append(fmt % a),
                                   reference_adapter=reference.REFERENCE_ADAPTER)
    assert stats["kl"] < 0 and stats["kl_negative"] is True
    assert stats["warnings"][0].startswith(f"mean KL {stats['kl']:.6f} is negative")
    assert any(line.startswith("warning: mean KL") for line in logs)
    assert stats["reference"] == reference.REFERENCE_ADAPTER
