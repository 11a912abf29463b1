"""The sampler is the policy: tokens drawn by the generate job follow the PPO update's probabilities."""

from __future__ import annotations

import pytest
import torch

from therapy_rlhf.jobs import generate, models, sampler_agreement
from therapy_rlhf.jobs.common import JobError
from therapy_rlhf.contracts.spec import ModelSpec

PROMPT = "I'm feeling depressed and hopeless. Can you help me?"
SAMPLES = 1200


@pytest.fixture(scope="module")
def tiny(tiny_mistral_dir):
    return models.load_base_model(ModelSpec(source=str(tiny_mistral_dir)), "cpu")


@pytest.mark.slow
def test_sampled_tokens_follow_the_updates_probabilities(tiny):
    model, tok = tiny
    rollouts = sampler_agreement.draw(model, tok, PROMPT, SAMPLES, 0.5, 4, seed=0)
    agree = sampler_agreement.score(model, tok, rollouts, 0.5)
    assert agree.tokens > 3 * SAMPLES
    assert agree.ks_distance < agree.ks_critical_001, agree
    # most of the tiny policy's mass lies outside its top 50, and so do the samples
    assert agree.outside_top_expected > 0.5
    assert agree.outside_top_sampled == pytest.approx(agree.outside_top_expected, abs=0.03)
    # the check has power: the same tokens scored at temperature 1 (the update before) disagree
    wrong = sampler_agreement.score(model, tok, rollouts, 1.0)
    assert wrong.ks_distance > 2 * wrong.ks_critical_001, wrong


@pytest.mark.slow
def test_transformers_defaults_are_not_the_policy(tiny):
    """What generate() did with only temperature and top_p: its default top_k=50 truncates the sampler."""
    model, tok = tiny
    ids = tok(models.format_chat(tok, [{"role": "user", "content": PROMPT}]), add_special_tokens=False)["input_ids"]
    torch.manual_seed(0)
    out = model.generate(input_ids=torch.tensor([ids]), do_sample=True, temperature=1.0, top_p=1.0,
                         max_new_tokens=4, num_return_sequences=400, pad_token_id=tok.pad_token_id)
    rollouts = [generate.Rollout(None, k, ids, row[len(ids):].tolist(), "") for k, row in enumerate(out)]
    result = sampler_agreement.score(model, tok, rollouts, 1.0)
    assert result.outside_top_sampled == 0.0 and result.outside_top_expected > 0.5
    assert not result.agrees


def test_truncated_sampling_is_refused_for_rollouts(tiny):
    model, tok = tiny
    for kwargs in ({"top_p": 0.9}, {"top_k": 50}):
        with pytest.raises(JobError, match="PPO rollouts are sampled untruncated"):
            sampler_agreement.generate.sample_responses(
                model, tok, [], samples_per_prompt=1, temperature=1.0, max_new_tokens=2, batch_size=1,
                seed=0, round_no=1, device="cpu", max_length=64, **kwargs,
            )
