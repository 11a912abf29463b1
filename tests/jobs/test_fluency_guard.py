"""The fluency guard on a real (tiny) run: a batch below spec.fluency's threshold pauses the run before
anyone rates it; the measure itself separates English from noise."""

from __future__ import annotations

import json

import pytest
from tests.support.local_run import run_auto

from therapy_rlhf.jobs import fluency
from therapy_rlhf.contracts.layout import RunPaths


def test_dictionary_share_separates_english_from_word_salad():
    english = ["I'm so sorry you're feeling this way. It sounds exhausting, and you deserve support."]
    salad = ["Hang claire loria's vies of a vagabid janibus, thrumbled quorpish."]
    assert fluency.dictionary_share(english) > 0.95
    assert fluency.dictionary_share(salad) < 0.6
    assert fluency.dictionary_share(["", "..."]) is None


@pytest.mark.slow
def test_a_gibberish_batch_pauses_the_run_before_rating(tmp_path, tiny_cache, make_run):
    """The tiny random model's answers are byte noise: with a threshold a real model meets, the run pauses."""
    manifest = make_run(
        {
            "sft": {"enabled": False},
            "ppo": {"rounds": 2, "prompts": [{"id": "p", "text": "I can't sleep."}], "samplesPerPrompt": 2},
            "fluency": {"minLogLikelihood": -4.0},
            "evaluation": {"enabled": False},
        },
        name="guarded",
    )
    store = tmp_path / "store"
    proc = run_auto(manifest, store, tmp_path, tiny_cache, 60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out[-3000:]  # EXIT_SUSPENDED
    assert "FluencyCollapse" in out and "fluency.minLogLikelihood -4" in out
    paths = RunPaths("default", "guarded")
    measured = json.loads((store / paths.fluency(1)).read_text())
    assert measured["mean_log_likelihood"] < -4.0 and measured["responses"] == 2
    assert (store / paths.batch(1)).is_file()
    assert not (store / paths.ratings_prefix(1)).exists() and not (store / paths.gate(1)).exists()


def test_log_likelihood_is_under_the_base_with_the_adapter_off(tiny_cache):
    """Batched with right padding, each response scored from its own prompt, the LoRA switched off."""
    import torch

    from therapy_rlhf.jobs import models
    from therapy_rlhf.contracts.spec import ModelSpec

    spec = ModelSpec(source="tiny:llama")
    base, tok = models.load_base_model(spec, "cpu")
    pairs = [([5, 6, 7, 8, 9], [10, 11, 12]), ([20, 21], [22, 23, 24, 25, 26, 27])]

    def direct(prompt, response):
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logp = torch.log_softmax(base(ids).logits[0, :-1].float(), -1)
        return float(logp[len(prompt) - 1 :].gather(-1, ids[0, len(prompt) :, None]).mean())

    expected = [direct(p, r) for p, r in pairs]
    policy = models.attach_adapter(base, spec, None, trainable=True)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.fill_(0.5)  # the policy now differs from the base
    got = fluency.response_log_likelihoods(policy, pairs, "cpu", tok.pad_token_id)
    assert got == pytest.approx(expected, abs=1e-4)
    # with the adapter on (peft injected it into the same modules), the same text scores differently
    assert direct(*pairs[0]) != pytest.approx(expected[0], abs=1e-3)
