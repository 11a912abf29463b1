"""Same spec, same seed, same results on CPU: the SFT adapter, the batch sampled from it, its rewards."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from therapy_rlhf.feedback import simrater
from therapy_rlhf.jobs import generate, sft
from therapy_rlhf.jobs.common import JobContext
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.gate import close_gate
from therapy_rlhf.contracts.spec import load_run
from therapy_rlhf.store.backends import LocalStore

PATHS = RunPaths("default", "tiny-test")


def run_once(manifest, store):
    for kind, module, round_no in (("sft", sft, 0), ("generate", generate, 1)):
        ctx = JobContext(kind=kind, manifest=manifest, round=round_no, store=store)
        try:
            module.main(ctx)
        finally:
            ctx.close()
    simrater.rate_round(store, PATHS, manifest, 1)
    gate = close_gate(store, PATHS, 1, manifest.spec.feedback, closed_by="test").gate
    weights = load_file(str(store.root / PATHS.sft_adapter() / "adapter_model.safetensors"))
    return weights, store.read_json(PATHS.sft_metrics()), store.read_bytes(PATHS.batch(1)), gate


@pytest.mark.slow
def test_two_runs_of_one_spec_give_the_same_adapter_batch_and_rewards(make_run, tmp_path):
    manifest = load_run(make_run({"sft": {"maxSteps": 6, "evalSteps": 3, "seed": 0}}))
    w1, m1, batch1, gate1 = run_once(manifest, LocalStore(tmp_path / "a"))
    w2, m2, batch2, gate2 = run_once(manifest, LocalStore(tmp_path / "b"))
    assert w1.keys() == w2.keys() and all(bool((w1[k] == w2[k]).all()) for k in w1)
    assert m1["eval_history"] == m2["eval_history"] and m1["train_loss"] == m2["train_loss"]
    # ids, tokens and text are equal; only created_at may differ between the two runs
    strip = lambda b: [line.split(b'"id"', 1)[1] for line in b.splitlines()]  # noqa: E731
    assert strip(batch1) == strip(batch2)
    assert {k: v.reward for k, v in gate1.rewards.items()} == {k: v.reward for k, v in gate2.rewards.items()}
    # and a different seed is a different adapter
    other = load_run(make_run({"sft": {"maxSteps": 6, "evalSteps": 3, "seed": 1}}, name="tiny-test"))
    w3, *_ = run_once(other, LocalStore(tmp_path / "c"))
    assert any(not bool((w1[k] == w3[k]).all()) for k in w1)


@pytest.mark.slow
def test_building_a_tiny_model_leaves_the_global_generator_alone(tmp_path):
    """A job that builds the tiny model on first use draws the same fresh LoRA as one that finds it cached."""
    import torch

    from therapy_rlhf.jobs import tiny

    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    tiny.build_tiny("mistral", tmp_path / "m")
    assert torch.equal(torch.random.get_rng_state(), before)
