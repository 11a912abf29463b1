"""The ppo job end to end on the tiny Mistral, the trainer's plumbing, and bad inputs."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
import yaml
from tests.support.recording_store import RecordingStore, snapshot

from therapy_rlhf.feedback import simrater
from therapy_rlhf.jobs import generate, models, ppo, ppo_trainer
from therapy_rlhf.jobs.__main__ import run as job_main
from therapy_rlhf.jobs.common import JobError
from therapy_rlhf.jobs.value_head import FILENAME as VALUE_HEAD, ValueHead
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.gate import close_gate
from therapy_rlhf.feedback.rounds import load_round, read_gate
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.contracts.records import Rating, dump_batch, parse_batch
from therapy_rlhf.store.backends import LocalStore
from tests.support.job_steps import rated_round, run_job  # tests/support
from tests.support.manifests import run_manifest

PROMPTS = [
    {"id": "paper-depressed-hopeless", "text": "I'm feeling depressed and hopeless. Can you help me?"},
    {"id": "grief", "text": "My father died last month and I can't accept it."},
]


def manifest(store_dir, name="ppo-test"):
    return run_manifest({
                "model": {"source": "tiny:mistral", "maxLength": 128},
                "storage": {"localPath": str(store_dir)},
                "sft": {"enabled": False},
                "ppo": {
                    "rounds": 3,
                    "prompts": PROMPTS,
                    "samplesPerPrompt": 2,
                    "generation": {"maxNewTokens": 8, "batchSize": 2},
                    "learningRate": 1e-3,
                    "epochs": 2,
                    "miniBatchSize": 2,
                    "gradientAccumulationSteps": 2,
                },
                "evaluation": {"enabled": False, "checkpoints": ["base"]},
            }, name, "default")






# ------------------------------------------------------------ end to end


def test_update_writes_adapter_value_head_and_metrics_last(store, tmp_path):
    m = manifest(tmp_path)
    paths = RunPaths("default", m.name)
    gate = rated_round(m, store)
    run_job(ppo, "ppo", m, store, 1)

    stored = store.list(paths.policy_prefix(1) + "/")
    names = {k.rsplit("/", 1)[1] for k in stored}
    assert {"adapter_config.json", "adapter_model.safetensors", VALUE_HEAD, "metrics.json"} <= names
    metrics = store.read_json(paths.policy_metrics(1))
    assert metrics["responses"] == 4
    assert metrics["mean_reward"] == pytest.approx(gate.mean_reward)
    assert metrics["kl_coef"] == 0.2  # the spec's initial value in round 1
    assert metrics["kl"] == 0.0  # a fresh adapter IS the reference
    assert metrics["started_from"] == "base"
    # 4 responses, steps of miniBatchSize 2 x accumulation 2: one step per epoch
    assert metrics["optimizer_steps"] == 2 and metrics["minibatches"] == 4
    assert 0.0 <= metrics["clip_fraction"] <= 1.0 and metrics["entropy"] > 0
    for key in ("policy_loss", "value_loss", "approx_kl", "startup_seconds", "work_seconds", "train_tokens_per_second"):
        assert math.isfinite(metrics[key]), key
    assert metrics["kl_coef_next"] == pytest.approx(0.2 * (1 - 0.2 * 4 / 10000))  # KL 0: error -1 clipped to -0.2


def test_metrics_object_is_written_last(tmp_path):
    store = RecordingStore(tmp_path / "store")
    m = manifest(tmp_path)
    rated_round(m, store)
    store.writes.clear()
    run_job(ppo, "ppo", m, store, 1)
    paths = RunPaths("default", m.name)
    assert store.writes[-1] == paths.policy_metrics(1)
    assert paths.optimizer_state(1) in store.writes
    assert all(k.startswith(paths.policy_prefix(1) + "/") for k in store.writes if k != paths.optimizer_state(1))
    assert len(store.writes) >= 5


def test_the_saved_adapter_is_trained_and_round_two_continues_from_it(local_store, tmp_path):
    from safetensors.torch import load_file

    m = manifest(tmp_path)
    paths = RunPaths("default", m.name)
    rated_round(m, local_store)
    run_job(ppo, "ppo", m, local_store, 1)
    weights = load_file(str(local_store.root / paths.policy_prefix(1) / "adapter_model.safetensors"))
    lora_b = [w for k, w in weights.items() if "lora_B" in k]
    assert lora_b and any(float(w.abs().max()) > 0 for w in lora_b)  # B starts at 0
    first = local_store.read_json(paths.policy_metrics(1))

    batch2 = rated_round(m, local_store, 2)
    assert batch2.round == 2
    run_job(ppo, "ppo", m, local_store, 2)
    second = local_store.read_json(paths.policy_metrics(2))
    assert second["started_from"] == paths.policy_prefix(1)
    assert second["kl_coef"] == pytest.approx(first["kl_coef_next"])  # the controller carries over
    # the policy has moved away from the reference: every log-ratio is exactly 0 while they are one policy;
    # the sign of the sampled mean is not guaranteed that close to it (it changed with the prompts' system line)
    assert abs(second["kl"]) > 1e-4
    # Adam's state carries over: round 2 continues round 1's step count.
    assert first["optimizer_resumed"] is False and second["optimizer_resumed"] is True
    assert first["optimizer_steps_total"] == first["optimizer_steps"] == 2
    assert second["optimizer_steps_total"] == first["optimizer_steps"] + second["optimizer_steps"]


def test_round_two_resumes_adam_from_round_one(local_store, tmp_path):
    m = manifest(tmp_path)
    paths = RunPaths("default", m.name)
    rated_round(m, local_store)
    run_job(ppo, "ppo", m, local_store, 1)
    saved = ppo.read_optimizer_state(local_store, paths, 2)
    assert saved is not None and all(int(s["step"]) == 2 for s in saved["state"].values())
    moments = {i: s["exp_avg_sq"].clone() for i, s in saved["state"].items()}
    assert any(float(v.abs().sum()) > 0 for v in moments.values())
    rated_round(m, local_store, 2)
    run_job(ppo, "ppo", m, local_store, 2)
    after = torch.load(local_store.root / paths.optimizer_state(2), weights_only=True)
    assert all(int(s["step"]) == 4 for s in after["state"].values())


def test_a_round_without_a_saved_optimizer_starts_a_fresh_one(local_store, tmp_path):
    m = manifest(tmp_path)
    paths = RunPaths("default", m.name)
    rated_round(m, local_store)
    run_job(ppo, "ppo", m, local_store, 1)
    (local_store.root / paths.optimizer_state(1)).unlink()  # as written before optimizer states were kept
    rated_round(m, local_store, 2)
    run_job(ppo, "ppo", m, local_store, 2)
    second = local_store.read_json(paths.policy_metrics(2))
    assert second["optimizer_resumed"] is False and second["optimizer_steps_total"] == second["optimizer_steps"]


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda p: p.write_bytes(b"not a torch file"), "is not a saved optimizer state"),
        (lambda p: torch.save({"state": {}, "param_groups": [{"params": [0, 1]}]}, p), "does not fit this policy: it holds 2 parameters"),
    ],
)
def test_a_bad_optimizer_state_is_refused_and_nothing_is_written(local_store, tmp_path, damage, needle):
    m = manifest(tmp_path)
    paths = RunPaths("default", m.name)
    rated_round(m, local_store)
    run_job(ppo, "ppo", m, local_store, 1)
    damage(local_store.root / paths.optimizer_state(1))
    rated_round(m, local_store, 2)
    before = snapshot(local_store)
    with pytest.raises(JobError, match=needle):
        run_job(ppo, "ppo", m, local_store, 2)
    assert snapshot(local_store) == before


def test_a_ppo_checkpoint_without_its_value_head_is_refused(local_store, tmp_path):
    m = manifest(tmp_path)
    paths = RunPaths("default", m.name)
    rated_round(m, local_store)
    run_job(ppo, "ppo", m, local_store, 1)
    (local_store.root / paths.policy_prefix(1) / VALUE_HEAD).unlink()
    rated_round(m, local_store, 2)
    with pytest.raises(JobError, match="has no value head"):
        run_job(ppo, "ppo", m, local_store, 2)
    assert not local_store.exists(paths.policy_metrics(2))


def test_the_gate_reward_is_used_as_is(local_store, tmp_path):
    """The safety penalty is applied once, by the rating rules; ppo must not subtract it again."""
    m = manifest(tmp_path)
    paths = RunPaths("default", m.name)
    run_job(generate, "generate", m, local_store, 1)
    state = load_round(local_store, paths, 1)
    feedback = m.spec.feedback
    for i, response in enumerate(state.responses):
        criteria = {c.name: 0.75 for c in feedback.rubric}
        flags = ["harmful"] if i == 0 else []
        submit_rating(local_store, paths, state, Rating(response_id=response.id, rater="dr-lee", criteria=criteria, flags=flags), feedback)
    gate = close_gate(local_store, paths, 1, feedback).gate
    first = state.responses[0].id
    assert gate.rewards[first].penalized and gate.rewards[first].reward == pytest.approx(0.25)
    inputs = ppo.read_inputs(local_store, paths, 1, False, 0.2)
    assert inputs.rewards == pytest.approx([0.25, 0.75, 0.75, 0.75])
    run_job(ppo, "ppo", m, local_store, 1)
    assert local_store.read_json(paths.policy_metrics(1))["mean_reward"] == pytest.approx(0.625)


def test_a_finished_round_is_not_redone(local_store, tmp_path):
    m = manifest(tmp_path)
    paths = RunPaths("default", m.name)
    rated_round(m, local_store)
    local_store.write_json(paths.policy_metrics(1), {"done": True})
    before = snapshot(local_store)
    run_job(ppo, "ppo", m, local_store, 1)
    assert snapshot(local_store) == before


# -------------------------------------------------------------- bad input


@pytest.fixture
def gated(tmp_path):
    """A run with round 1 generated, rated and gated, and its manifest file."""
    store = LocalStore(tmp_path / "store")
    m = manifest(tmp_path / "store")
    rated_round(m, store)
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump(m.model_dump(mode="json", by_alias=True, exclude_none=True)))
    return store, RunPaths("default", m.name), run_file


def fails_cleanly(capsys, store, run_file, needle, round_no=1):
    before = snapshot(store)
    rc = job_main(["ppo", "--run-config", str(run_file), "--round", str(round_no), "--store", str(store.root)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert needle in err[0], err[0]
    assert snapshot(store) == before  # nothing written, nothing lost


def edit_gate(store, paths, change):
    gate = store.read_json(paths.gate(1))
    change(gate)
    store.write_json(paths.gate(1), gate)


def test_gate_not_closed(gated, capsys):
    store, paths, run_file = gated
    (store.root / paths.gate(1)).unlink()
    fails_cleanly(capsys, store, run_file, "round 1's gate is not closed")


def test_reward_out_of_range(gated, capsys):
    store, paths, run_file = gated
    rid = next(iter(store.read_json(paths.gate(1))["rewards"]))
    edit_gate(store, paths, lambda g: g["rewards"][rid].update(reward=1.5))
    fails_cleanly(capsys, store, run_file, f"rewards.{rid}.reward: Input should be less than or equal to 1")


def test_reward_missing(gated, capsys):
    store, paths, run_file = gated
    rid = next(iter(store.read_json(paths.gate(1))["rewards"]))
    edit_gate(store, paths, lambda g: g["rewards"][rid].pop("reward"))
    fails_cleanly(capsys, store, run_file, f"rewards.{rid}.reward: required field is missing")


def test_gate_without_rewards(gated, capsys):
    store, paths, run_file = gated
    edit_gate(store, paths, lambda g: g.update(rewards={}, responses_rewarded=0))
    fails_cleanly(capsys, store, run_file, "rewards no response")


def test_gate_rewarding_an_unknown_response(gated, capsys):
    store, paths, run_file = gated

    def change(g):
        g["rewards"]["r0001-ghost-s00"] = next(iter(g["rewards"].values()))
        g["responses_rewarded"] += 1

    edit_gate(store, paths, change)
    fails_cleanly(capsys, store, run_file, "rewards 'r0001-ghost-s00', which is not in the batch")


def test_gate_that_does_not_match_the_batch(gated, capsys):
    store, paths, run_file = gated
    responses, _ = parse_batch(store.read_text(paths.batch(1)))
    responses[0] = responses[0].model_copy(update={"response": "edited after rating"})
    store.write_bytes(paths.batch(1), dump_batch(responses))
    fails_cleanly(capsys, store, run_file, "gate.json does not match the batch")


def test_truncated_jsonl_line(gated, capsys):
    store, paths, run_file = gated
    data = store.read_bytes(paths.batch(1))
    store.write_bytes(paths.batch(1), data[: len(data) - 40])
    fails_cleanly(capsys, store, run_file, "batch.jsonl line 4: not valid JSON (corrupt or truncated line)")


def test_batch_from_another_policy(gated, capsys):
    store, paths, run_file = gated
    responses, _ = parse_batch(store.read_text(paths.batch(1)))
    changed = [r.model_copy(update={"policy": "default/other/sft/adapter"}) for r in responses]
    data = dump_batch(changed)
    store.write_bytes(paths.batch(1), data)
    edit_gate(store, paths, lambda g: g.update(batch_sha256=hashlib.sha256(data).hexdigest()))
    fails_cleanly(capsys, store, run_file, "was sampled from 'default/other/sft/adapter' but round 1 updates 'base'")


def test_token_ids_outside_the_vocabulary(gated, capsys):
    store, paths, run_file = gated
    responses, _ = parse_batch(store.read_text(paths.batch(1)))
    responses[0] = responses[0].model_copy(update={"response_token_ids": [5, 999999]})
    data = dump_batch(responses)
    store.write_bytes(paths.batch(1), data)
    edit_gate(store, paths, lambda g: g.update(batch_sha256=hashlib.sha256(data).hexdigest()))
    fails_cleanly(capsys, store, run_file, "token id 999999 outside this model's vocabulary")


def test_checkpoint_missing_from_the_store(gated, capsys):
    """Round 2's batch says it came from round 1's policy, which is not stored."""
    store, paths, run_file = gated
    m = manifest(store.root)
    responses, _ = parse_batch(store.read_text(paths.batch(1)))
    moved = [
        r.model_copy(update={"id": r.id.replace("r0001-", "r0002-"), "round": 2, "policy": paths.policy_prefix(1)})
        for r in responses
    ]
    store.write_bytes(paths.batch(2), dump_batch(moved))
    simrater.rate_round(store, paths, m, 2)
    close_gate(store, paths, 2, m.spec.feedback)
    fails_cleanly(capsys, store, run_file, "checkpoint missing from the store", round_no=2)


# -------------------------------------------------------- trainer plumbing


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    m = manifest(tmp_path_factory.mktemp("unused"))
    base, tokenizer = models.load_base_model(m.spec.model, "cpu")
    torch.manual_seed(0)
    policy = models.attach_adapter(base, m.spec.model, None, trainable=True)
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.2)  # a policy that differs from the reference
    return m, policy, tokenizer


def _samples(tokenizer):
    prompts = ["[INST] I feel so alone. [/INST]", "[INST] Can you help me? I am sad [/INST]"]
    enc = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    return [
        ppo_trainer.Sample(enc[0], [300, 301, 302, 303, 304], 1.0),
        ppo_trainer.Sample(enc[1], [400, 401], 0.0),
    ]


def test_batched_forward_equals_one_by_one(tiny_policy):
    """Right padding of prompts and responses must not change any real token's numbers."""
    _, policy, tokenizer = tiny_policy
    samples = _samples(tokenizer)
    head = ValueHead(64).reset(0)
    policy.eval()
    with torch.no_grad():
        both = ppo_trainer.forward_responses(policy, head, samples, 5, tokenizer.pad_token_id, "cpu", with_entropy=True)
        for i, s in enumerate(samples):
            one = ppo_trainer.forward_responses(policy, head, [s], 5, tokenizer.pad_token_id, "cpu", with_entropy=True)
            n = len(s.response_ids)
            assert torch.allclose(both.logprobs[i, :n], one.logprobs[0, :n], atol=1e-5)
            assert torch.allclose(both.values[i, :n], one.values[0, :n], atol=1e-5)
            assert torch.allclose(both.entropy[i, :n], one.entropy[0, :n], atol=1e-5)
            assert float(both.logprobs[i, n:].abs().sum()) == 0.0  # padding is zeroed


def test_forward_scores_each_response_token_with_the_previous_position(tiny_policy):
    _, policy, tokenizer = tiny_policy
    s = _samples(tokenizer)[0]
    with torch.no_grad():
        fwd = ppo_trainer.forward_responses(policy, None, [s], 5, tokenizer.pad_token_id, "cpu")
        logits = policy(input_ids=torch.tensor([s.prompt_ids + s.response_ids])).logits[0]
    start = len(s.prompt_ids)
    expected = [torch.log_softmax(logits[start - 1 + t], -1)[tok] for t, tok in enumerate(s.response_ids)]
    assert torch.allclose(fwd.logprobs[0], torch.stack(expected), atol=1e-5)


def test_update_moves_probability_towards_the_rewarded_response(tiny_policy):
    m, policy, tokenizer = tiny_policy
    samples = _samples(tokenizer)
    ppo_spec = m.spec.ppo.model_copy(update={"epochs": 4, "learning_rate": 5e-3, "mini_batch_size": 2, "gradient_accumulation_steps": 1})
    head = ValueHead(64).reset(0)
    with torch.no_grad():
        before = ppo_trainer.forward_responses(policy, None, samples, 5, tokenizer.pad_token_id, "cpu").logprobs.sum(1)
    stats = ppo_trainer.ppo_update(policy, head, samples, ppo_spec, 0.0, pad_id=tokenizer.pad_token_id, device="cpu", seed=0)
    with torch.no_grad():
        after = ppo_trainer.forward_responses(policy, None, samples, 5, tokenizer.pad_token_id, "cpu").logprobs.sum(1)
    assert after[0] > before[0]  # reward 1: more likely
    assert after[1] < before[1]  # reward 0: less likely
    assert stats["optimizer_steps"] == 4 and stats["kl_coef_next"] == 0.0


def test_dropout_is_off_so_the_first_ratio_is_one(tiny_policy):
    _, policy, tokenizer = tiny_policy
    samples = _samples(tokenizer)
    ppo_trainer.disable_dropout(policy)
    with torch.no_grad():
        policy.eval()
        a = ppo_trainer.forward_responses(policy, None, samples, 5, tokenizer.pad_token_id, "cpu").logprobs
        policy.train()
        b = ppo_trainer.forward_responses(policy, None, samples, 5, tokenizer.pad_token_id, "cpu").logprobs
    policy.eval()
    assert torch.equal(a, b)


def test_value_head_round_trip_and_mismatch(tmp_path):
    head = ValueHead(64).reset(3)
    head.save(tmp_path)
    loaded = ValueHead.load(tmp_path, 64)
    assert torch.equal(loaded.summary.weight, head.summary.weight)
    with pytest.raises(ValueError, match="saved for hidden size 64, the model has 32"):
        ValueHead.load(tmp_path, 32)
    assert torch.equal(ValueHead(64).reset(3).summary.weight, head.summary.weight)  # seeded init


def test_ppo_checks_the_gates_frozen_content(local_store, tmp_path):
    """An in-place edit after the gate closed is reported and changes no reward; a gate whose rewards
    name a rating without its frozen content is refused."""
    import json

    m = manifest(tmp_path)
    paths = RunPaths("default", m.name)
    rated_round(m, local_store)
    gate = read_gate(local_store, paths, 1)
    rid = sorted(gate.frozen)[0]
    rater, response, _ = rid.rsplit("/", 2)
    key = paths.rating(1, rater, response, 1)
    edited = json.loads(local_store.read_bytes(key))
    edited["criteria"] = {name: 1.0 for name in edited["criteria"]}
    local_store.write_bytes(key, json.dumps(edited).encode())  # edited in place after the gate closed
    inputs = ppo.read_inputs(local_store, paths, 1, False, 0.2)
    assert inputs.changed_ratings == [rid] and inputs.rewards == [gate.rewards[r.id].reward for r in inputs.responses]
    doc = json.loads(local_store.read_bytes(paths.gate(1)))
    del doc["frozen"][rid]
    local_store.write_bytes(paths.gate(1), json.dumps(doc).encode())
    with pytest.raises(JobError, match="without its frozen content"):
        ppo.read_inputs(local_store, paths, 1, False, 0.2)


def test_the_report_uses_the_frozen_content_and_says_when_the_store_changed(local_store, tmp_path):
    import json

    from therapy_rlhf.jobs import report

    m = manifest(tmp_path)
    paths = RunPaths("default", m.name)
    rated_round(m, local_store)
    assert report.reward_curve(local_store, paths, 1)[0]["changed_after_gate"] == 0
    rid = sorted(read_gate(local_store, paths, 1).frozen)[0]
    rater, response, _ = rid.rsplit("/", 2)
    key = paths.rating(1, rater, response, 1)
    edited = {**json.loads(local_store.read_bytes(key)), "client": "someone-else"}
    local_store.write_bytes(key, json.dumps(edited).encode())
    curve = report.reward_curve(local_store, paths, 1)
    assert curve[0]["changed_after_gate"] == 1
    assert report.rating_source(local_store, paths, 1) == "simulated"  # the frozen copy, not the edit
    assert "ratings changed in the store after their gate closed (round 1: 1)" in report.render_markdown({"reward_curve": curve})
