"""The ``ppo`` job: one PPO update of the policy from the round's gated expert rewards.

    python -m therapy_rlhf.jobs ppo --run-config examples/tiny-local.yaml --round 1 --store /tmp/store

Inputs, all checked before anything is loaded or written:

* ``rounds/{r}/batch.jsonl``: the responses and their exact token ids;
* ``rounds/{r}/gate.json``: the frozen per-response rewards. Its
  ``batch_sha256`` must be the digest of the batch (a batch changed after the
  gate closed is refused). The safety penalty is already in these rewards
  (``ratings.effective_reward``), so it is not applied again here;
* the gate's frozen content: every rating a reward names has its content
  digest and frozen copy in the gate (gates written before those existed
  aside); a stored rating that changed since is reported, never used;
* the checkpoint the batch was sampled from (``policy_for_round``): every
  response's ``policy`` must name it, so the update is on-policy;
* round r-1's ``metrics.json`` for the adaptive KL coefficient and round
  r-1's ``optimizer.pt`` (Adam's moments), which carry over rounds like
  TRL's controller and optimizer state within one training run.

The KL reference is the policy this run's PPO started from (``reference.py``):
with SFT on, ``sft/adapter/`` is loaded a second time as a frozen adapter in
every round (so the SFT adapter is an input of every round's update), and
round 1's KL before the update is exactly 0; without SFT it is the base. The
update scores tokens at the temperature the batch records it was sampled
at (``sampling.update_temperature``).

The update itself is ``ppo_trainer.ppo_update``. Outputs under
``rounds/{r}/policy/``: the LoRA adapter, ``value_head.safetensors`` and, LAST,
``metrics.json`` (the round's marker); ``rounds/{r}/optimizer.pt`` before it.
Any bad input ends the job with one ``error:`` line and nothing written.

With several GPUs the job runs under ``accelerate launch`` (one process per
GPU): the update is data parallel (``ppo_trainer.Shard``) and rank 0 writes.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from dataclasses import dataclass, field
from typing import Any

from therapy_rlhf.jobs import models
from therapy_rlhf.jobs.common import JobContext, JobError
from therapy_rlhf.jobs.generate import BASE_POLICY
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.contracts.records import Gate, PendingResponse, RecordError, parse_batch, parse_record
from therapy_rlhf.feedback.rounds import changed_after_gate
from therapy_rlhf.store.backends import NotFound, Store, StoreError


@dataclass
class Inputs:
    responses: list[PendingResponse]  # the rewarded ones (by experts, or model-scored), in batch order
    rewards: list[float]
    gate: Gate
    batch_sha256: str
    policy_key: str | None  # adapter prefix the batch was sampled from (None = base)
    kl_coef: float
    model_scored: int = 0  # of ``responses``, rewarded by the reward model (gate.model_scored), not experts
    # Frozen ratings whose stored object changed after the gate: the update uses the gate's rewards regardless.
    changed_ratings: list[str] = field(default_factory=list)


def _read(store: Store, key: str, what: str) -> bytes:
    try:
        return store.read_bytes(key)
    except NotFound:
        raise JobError(f"{what} missing: {store.describe(key)} does not exist") from None


def read_inputs(store: Store, paths: RunPaths, round_no: int, sft_enabled: bool, init_kl_coef: float) -> Inputs:
    """Read and cross-check the batch, the gate and the KL state (JobError on any problem)."""
    batch_key, gate_key = paths.batch(round_no), paths.gate(round_no)
    data = _read(store, batch_key, f"round {round_no}'s batch")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise JobError(f"{store.describe(batch_key)} is not UTF-8 text") from None
    responses, errors = parse_batch(text, store.describe(batch_key))
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise JobError(errors[0] + more)
    if not responses:
        raise JobError(f"{store.describe(batch_key)} holds no responses")
    try:
        gate = parse_record(Gate, store.read_json(_existing(store, gate_key, round_no)), store.describe(gate_key))
    except (RecordError, StoreError) as err:
        raise JobError(f"invalid gate: {err}") from None
    digest = hashlib.sha256(data).hexdigest()
    if gate.round != round_no:
        raise JobError(f"{store.describe(gate_key)} is for round {gate.round}, not round {round_no}")
    if gate.batch_sha256 != digest:
        raise JobError(
            f"{store.describe(gate_key)} does not match the batch: it froze sha256 {gate.batch_sha256[:12]}..., "
            f"batch.jsonl is {digest[:12]}..."
        )
    by_id = {r.id: r for r in responses}
    if not gate.rewards:
        raise JobError(f"{store.describe(gate_key)} rewards no response: there is nothing to learn from")
    for rid, reward in gate.rewards.items():
        if rid not in by_id:
            raise JobError(f"{store.describe(gate_key)} rewards {rid!r}, which is not in the batch")
        if not math.isfinite(reward.reward) or not 0.0 <= reward.reward <= 1.0:
            raise JobError(f"{store.describe(gate_key)}: reward of {rid!r} is {reward.reward}, outside 0..1")
        if not reward.ratings or not reward.raters:
            raise JobError(f"{store.describe(gate_key)}: reward of {rid!r} names no ratings")
    if gate.contents or gate.frozen:  # a gate that freezes content freezes all of it (older gates freeze names)
        for rid, reward in gate.rewards.items():
            bare = [i for i in reward.ratings if i not in gate.contents or i not in gate.frozen]
            if bare:
                raise JobError(f"{store.describe(gate_key)}: reward of {rid!r} names rating {bare[0]} without its frozen content")
    if gate.responses_rewarded != len(gate.rewards):
        raise JobError(
            f"{store.describe(gate_key)} says {gate.responses_rewarded} responses are rewarded but lists {len(gate.rewards)}"
        )
    for rid, score in gate.model_scored.items():
        if rid in gate.rewards:
            raise JobError(f"{store.describe(gate_key)}: {rid!r} is both expert-rated and model-scored")
        if rid not in by_id:
            raise JobError(f"{store.describe(gate_key)} model-scores {rid!r}, which is not in the batch")
        if by_id[rid].sent_to_experts:
            raise JobError(f"{store.describe(gate_key)} model-scores {rid!r}, which was sent to the experts")
    reward_of = {rid: r.reward for rid, r in gate.rewards.items()}
    reward_of.update({rid: s.reward for rid, s in gate.model_scored.items()})
    policy_key = paths.policy_for_round(round_no, sft_enabled)
    rewarded = [r for r in responses if r.id in reward_of]
    for r in rewarded:
        if r.round != round_no:
            raise JobError(f"response {r.id!r} belongs to round {r.round}, not round {round_no}")
        if (r.policy or BASE_POLICY) != (policy_key or BASE_POLICY):
            raise JobError(
                f"response {r.id!r} was sampled from {r.policy or BASE_POLICY!r} but round {round_no} "
                f"updates {policy_key or BASE_POLICY!r}"
            )
        if not r.prompt_token_ids or not r.response_token_ids:
            raise JobError(f"response {r.id!r} has no prompt or response token ids (not written by the generate job)")
    return Inputs(
        responses=rewarded,
        rewards=[reward_of[r.id] for r in rewarded],
        gate=gate,
        batch_sha256=digest,
        policy_key=policy_key,
        kl_coef=previous_kl_coef(store, paths, round_no, init_kl_coef),
        model_scored=len(gate.model_scored),
        changed_ratings=changed_after_gate(store, paths, round_no, gate),
    )


def _existing(store: Store, key: str, round_no: int) -> str:
    if not store.exists(key):
        raise JobError(f"round {round_no}'s gate is not closed: {store.describe(key)} does not exist")
    return key


def previous_kl_coef(store: Store, paths: RunPaths, round_no: int, init: float) -> float:
    """The KL coefficient round r-1's controller ended with (the spec's initial value in round 1)."""
    if round_no == 1:
        return init
    key = paths.policy_metrics(round_no - 1)
    try:
        value = store.read_json(key).get("kl_coef_next")
    except NotFound:
        raise JobError(f"checkpoint missing from the store: {store.describe(key)} does not exist") from None
    except (StoreError, AttributeError):
        raise JobError(f"{store.describe(key)} is not a metrics object") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise JobError(f"{store.describe(key)} has no valid kl_coef_next (got {value!r})")
    return float(value)


def check_token_ids(responses: list[PendingResponse], vocab_size: int) -> None:
    for r in responses:
        bad = [t for t in r.prompt_token_ids + r.response_token_ids if not 0 <= t < vocab_size]
        if bad:
            raise JobError(f"response {r.id!r} has token id {bad[0]} outside this model's vocabulary of {vocab_size}")


def read_optimizer_state(store: Store, paths: RunPaths, round_no: int) -> dict | None:
    """Round r-1's saved Adam state; None in round 1, or where round r-1 saved none
    (written before optimizer states were kept): the optimizer then starts fresh."""
    import torch

    if round_no == 1:
        return None
    key = paths.optimizer_state(round_no - 1)
    try:
        data = store.read_bytes(key)
    except NotFound:
        return None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a corrupt file
        raise JobError(f"{store.describe(key)} is not a saved optimizer state: {str(err).splitlines()[0][:200]}") from None


def join_process_group(device: str) -> bool:
    """Under accelerate launch/torchrun (WORLD_SIZE > 1), join the ranks' process group."""
    from therapy_rlhf.jobs import distributed

    return distributed.join(device)  # NCCL bound to this rank's GPU (device_id)


def main(ctx: JobContext) -> tuple[Any, Any] | None:
    """The update; returns the updated (policy, tokenizer) for ``ppo-generate``, None if the round was done."""
    import torch

    spec, paths, round_no = ctx.spec, ctx.paths, ctx.round
    if ctx.store.exists(paths.policy_metrics(round_no)):
        ctx.progress("%s already exists: round %d is updated", ctx.store.describe(paths.policy_metrics(round_no)), round_no)
        return None
    inputs = read_inputs(ctx.store, paths, round_no, spec.sft.enabled, spec.ppo.kl.init_coef)
    ctx.progress(
        "gate: %d rewarded responses of %d sent to the experts, %d model-scored; mean reward %.4f; KL coefficient %.4f",
        len(inputs.responses) - inputs.model_scored, inputs.gate.responses_total, inputs.model_scored,
        sum(inputs.rewards) / len(inputs.rewards), inputs.kl_coef,
    )
    if inputs.changed_ratings:
        ctx.progress(
            "warning: %d frozen rating(s) changed in the store after the gate closed (e.g. %s): "
            "the update uses the rewards the gate froze", len(inputs.changed_ratings), inputs.changed_ratings[0],
        )
    optimizer_state = read_optimizer_state(ctx.store, paths, round_no)
    joined = join_process_group(ctx.device)
    try:
        return _update(ctx, inputs, optimizer_state)
    finally:
        if joined:
            torch.distributed.destroy_process_group()


def _update(ctx: JobContext, inputs: Inputs, optimizer_state: dict | None) -> tuple[Any, Any]:
    import torch

    from therapy_rlhf.jobs import ppo_trainer
    from therapy_rlhf.jobs.value_head import load_or_init

    from therapy_rlhf.jobs import reference, sampling

    spec, paths, round_no = ctx.spec, ctx.paths, ctx.round
    temperature, sampler_warnings = sampling.update_temperature(inputs.responses)
    torch.manual_seed(spec.ppo.seed + round_no)
    policy, tokenizer, adapter_dir = models.load_policy(ctx, inputs.policy_key, trainable=True)
    check_token_ids(inputs.responses, policy.get_input_embeddings().num_embeddings)
    # The KL reference: the frozen SFT adapter when SFT ran (the policy PPO started from), else the base.
    reference_key = paths.sft_adapter() if spec.sft.enabled else None
    reference_adapter = None
    if reference_key:
        ref_dir = adapter_dir if inputs.policy_key == reference_key else ctx.fetch_prefix(reference_key, "reference (SFT) adapter")
        reference_adapter = reference.attach(policy, ref_dir)
    ctx.progress("KL reference: %s; scoring at temperature %g", reference_key or reference.BASE, temperature)
    for line in sampler_warnings:
        ctx.log.warning("[ppo r%d] warning: %s", round_no, line)
    # A PPO checkpoint carries its critic; the SFT adapter or the base start a fresh one.
    hidden = policy.config.hidden_size
    head_dir = adapter_dir if round_no > 1 else None
    try:
        value_head, loaded = load_or_init(head_dir, hidden, spec.ppo.seed + round_no)
    except ValueError as err:
        raise JobError(f"value head of {inputs.policy_key}: {err}") from None
    if round_no > 1 and not loaded:
        raise JobError(f"checkpoint {inputs.policy_key} has no value head (value_head.safetensors)")
    value_head.to(ctx.device)
    try:
        optimizer = ppo_trainer.make_optimizer(
            ppo_trainer.trainable_parameters(policy, value_head), spec.ppo.learning_rate, optimizer_state
        )
    except ValueError as err:
        raise JobError(f"{ctx.store.describe(paths.optimizer_state(round_no - 1))} does not fit this policy: {err}") from None
    shard = ppo_trainer.Shard.current()
    if optimizer_state:
        how = f"Adam resumed after {ppo_trainer.optimizer_steps(optimizer)} steps"
    elif round_no > 1:
        how = f"fresh Adam ({ctx.store.describe(paths.optimizer_state(round_no - 1))} does not exist)"
    else:
        how = "fresh Adam"
    ctx.progress("optimizer: %s; %d data-parallel rank(s)", how, shard.world)
    ctx.begin_work()

    samples = [
        ppo_trainer.Sample(r.prompt_token_ids, r.response_token_ids, reward)
        for r, reward in zip(inputs.responses, inputs.rewards)
    ]
    stats = ppo_trainer.ppo_update(
        policy,
        value_head,
        samples,
        spec.ppo,
        inputs.kl_coef,
        pad_id=tokenizer.pad_token_id,
        device=ctx.device,
        seed=spec.ppo.seed + round_no,
        log=ctx.progress,
        optimizer=optimizer,
        shard=shard,
        reference_adapter=reference_adapter,
        temperature=temperature,
    )
    for line in stats["warnings"]:
        ctx.log.warning("[ppo r%d] warning: %s", round_no, line)
    stats["warnings"] = sampler_warnings + stats["warnings"]
    ctx.progress(
        "update: policy loss %.4f, value loss %.4f, KL %.4f, clip fraction %.3f, %.1f tokens/s",
        stats["policy_loss"], stats["value_loss"], stats["kl"], stats["clip_fraction"], stats["train_tokens_per_second"],
    )
    out = ctx.scratch("policy")
    # Only the trained adapter (the reference is the SFT adapter, already stored); the base
    # weights are frozen: never copy an embedding or output layer into the adapter.
    policy.save_pretrained(str(out), save_embedding_layers=False, selected_adapters=[reference.POLICY_ADAPTER])
    value_head.save(out)
    ctx.upload_dir(out, paths.policy_prefix(round_no))
    if ctx.is_main_process:
        buffer = io.BytesIO()
        torch.save(optimizer.state_dict(), buffer)
        ctx.store.write_bytes(paths.optimizer_state(round_no), buffer.getvalue())
    ctx.write_metrics(
        paths.policy_metrics(round_no),
        {
            **stats,
            "started_from": inputs.policy_key or BASE_POLICY,
            "reference": reference_key or reference.BASE,
            "optimizer_resumed": optimizer_state is not None,
            "gate_sha256": inputs.batch_sha256,
            "gate_reason": inputs.gate.reason,
            "model_scored": inputs.model_scored,  # responses rewarded by the reward model, not by experts
            "learning_rate": spec.ppo.learning_rate,
            "epochs": spec.ppo.epochs,
            "clip_range": spec.ppo.clip_range,
            **models.count_parameters(policy),
        },
    )
    return policy, tokenizer
