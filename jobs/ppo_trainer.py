"""One PPO update of a LoRA policy with a value head, from externally scored rollouts.

TRL 1.x has no PPO trainer that takes scores from outside (its PPOTrainer
wants a reward model it can call), so this is the loop of TRL 0.11's
``PPOTrainer.step`` rebuilt on ``ppo_core``:

1. forward passes without gradients: the rollout policy's log-probs and
   values (``old``), and the reference log-probs, all on the response tokens
   only. The reference is the policy this run's PPO started from
   (``reference.py``): a frozen second adapter holding the SFT weights when
   SFT ran, the base model (adapter disabled) otherwise, so KL(policy ||
   reference) is exactly 0 before the first update;
2. per-token rewards: -kl_coef * KL, plus the expert's score at the last
   response token; GAE (gamma, lambda) and whitened advantages;
3. ``epochs`` passes over the batch in shuffled minibatches of
   ``miniBatchSize``; ``gradientAccumulationSteps`` minibatches make one
   optimizer step; clipped surrogate + clipped value loss; gradient norm
   clipped to ``maxGradNorm``;
4. the adaptive KL controller steps once per batch.

Every log-prob (policy, rollout, reference) is of ``log_softmax(logits /
temperature)``, the distribution the generate job sampled from (the batch
records its temperature; truncation is never used for rollouts), as in TRL's
later PPO trainer.

Guards: a negative mean KL (the estimator of a quantity that cannot be
negative: the samples are not the policy's, or the reference is wrong) and a
minibatch whose mean ratio leaves ``1/ratioThreshold..ratioThreshold`` are
reported in ``warnings`` (and logged); with ``skipRatioOutliers`` such a
minibatch contributes no gradient (TRL's ratio_threshold), counted in
``minibatches_skipped``.

The Adam state carries over rounds (``make_optimizer`` takes the state the
previous round saved), as it does over steps in one TRL training run: a fresh
Adam would make the first steps of every round sign-like steps of size lr.

Data parallel (``Shard``): under ``accelerate launch``/``torchrun`` every rank
holds the whole policy; the no-gradient forward of step 1 and the gradient
passes of step 3 are split between ranks by sample, and the gradients are
summed over ranks before each optimizer step, so every rank takes the same
step as one process would over the whole minibatch.

Sequences are prompt + response, right-padded (so position ids stay those of
generation); the logits at position p predict the token at p + 1, hence the
response token at ``start + t`` is scored by the logits and value at
``start + t - 1``. Dropout is switched off: the log-probs of the first step
then equal the rollout policy's exactly (ratio 1), as PPO assumes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from therapy_rlhf.jobs import ppo_core as core
from therapy_rlhf.jobs import reference
from therapy_rlhf.jobs.value_head import ValueHead
from therapy_rlhf.contracts.spec import PpoSpec


@dataclass
class Sample:
    """One rated rollout: the exact token ids the policy saw and produced, and its reward."""

    prompt_ids: list[int]
    response_ids: list[int]
    score: float


@dataclass
class Forward:
    logprobs: torch.Tensor  # [B, T]
    values: torch.Tensor | None  # [B, T]
    entropy: torch.Tensor | None  # [B, T]
    logits: torch.Tensor | None = None  # [B, T, V] at the temperature, only when asked (diagnostics)


@dataclass(frozen=True)
class Shard:
    """This process's part of a data-parallel update: rank ``rank`` of ``world``."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> "Shard":
        """The torch.distributed process group's rank and size (one process when there is none)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def mine(self, indices: list[int]) -> list[int]:
        return indices[self.rank :: self.world]

    def sum(self, tensors: list[torch.Tensor]) -> None:
        """Sum tensors over all ranks, in place (one collective per dtype)."""
        if self.world == 1 or not tensors:
            return
        import torch.distributed as dist

        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat)
            offset = 0
            for t in group:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()


def trainable_parameters(policy: nn.Module, value_head: ValueHead) -> list[nn.Parameter]:
    """The parameters PPO trains, in a fixed order (the optimizer state is saved by index)."""
    return [p for p in policy.parameters() if p.requires_grad] + list(value_head.parameters())


def make_optimizer(params: list[nn.Parameter], lr: float, state: dict | None = None) -> torch.optim.Adam:
    """Adam over ``params``, resuming ``state`` (a previous round's ``state_dict``) when given.

    Raises ValueError when the saved state does not fit these parameters.
    """
    optimizer = torch.optim.Adam(params, lr=lr)
    if state is None:
        return optimizer
    try:
        groups, saved = state["param_groups"], state["state"]
        n_saved = sum(len(g["params"]) for g in groups)
    except (KeyError, TypeError):
        raise ValueError("not an Adam state_dict (no param_groups/state)") from None
    if n_saved != len(params):
        raise ValueError(f"it holds {n_saved} parameters, this policy trains {len(params)}")
    for index, param_state in saved.items():
        shape = tuple(param_state["exp_avg"].shape)
        if shape != tuple(params[int(index)].shape):
            raise ValueError(f"parameter {index} has shape {shape} there, {tuple(params[int(index)].shape)} here")
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group["lr"] = lr  # the spec's, not whatever was saved
    return optimizer


def optimizer_steps(optimizer: torch.optim.Optimizer) -> int:
    """Optimizer steps taken so far, over all rounds (0 for a fresh optimizer)."""
    steps = [int(s["step"]) for s in optimizer.state.values() if "step" in s]
    return max(steps, default=0)


def disable_dropout(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def response_mask(samples: list[Sample], width: int, device: str) -> torch.Tensor:
    lengths = torch.tensor([len(s.response_ids) for s in samples], device=device)
    return (torch.arange(width, device=device)[None, :] < lengths[:, None]).float()


def forward_responses(
    policy: nn.Module,
    value_head: ValueHead | None,
    samples: list[Sample],
    width: int,
    pad_id: int,
    device: str,
    with_entropy: bool = False,
    temperature: float = 1.0,
    with_logits: bool = False,
) -> Forward:
    """Log-probs (and values, entropy) of each sample's response tokens, padded to ``width``.

    Log-probs and entropy are of ``softmax(logits / temperature)``, the sampler's distribution.
    """
    seqs = [s.prompt_ids + s.response_ids for s in samples]
    length = max(len(x) for x in seqs)
    input_ids = torch.full((len(seqs), length), pad_id, dtype=torch.long, device=device)
    attention = torch.zeros((len(seqs), length), dtype=torch.long, device=device)
    for i, seq in enumerate(seqs):
        input_ids[i, : len(seq)] = torch.tensor(seq, device=device)
        attention[i, : len(seq)] = 1
    out = policy(
        input_ids=input_ids,
        attention_mask=attention,
        output_hidden_states=value_head is not None,
        use_cache=False,
    )
    # Position of the logits/value that scores response token t of row i.
    starts = torch.tensor([len(s.prompt_ids) for s in samples], device=device)
    pos = (starts[:, None] - 1 + torch.arange(width, device=device)[None, :]).clamp(max=length - 2)
    labels = torch.gather(input_ids, 1, pos + 1)
    vocab = out.logits.shape[-1]
    logits = torch.gather(out.logits, 1, pos[:, :, None].expand(-1, -1, vocab))
    if temperature != 1.0:
        logits = logits.float() / temperature
    mask = response_mask(samples, width, device)
    logprobs = core.logprobs_from_logits(logits, labels) * mask
    values = None
    if value_head is not None:
        hidden = out.hidden_states[-1]
        hidden = torch.gather(hidden, 1, pos[:, :, None].expand(-1, -1, hidden.shape[-1]))
        values = value_head(hidden) * mask
    entropy = core.entropy_from_logits(logits.detach()) * mask if with_entropy else None
    return Forward(logprobs, values, entropy, logits.detach().float() if with_logits else None)


def _chunks(indices: list[int], size: int) -> list[list[int]]:
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def _minibatch_ratio_mean(shard: Shard, local_mean: torch.Tensor, local_mask: torch.Tensor) -> float:
    """The token-mean ratio of the whole minibatch (all ranks), so every rank makes the same skip decision."""
    if shard.world == 1:
        return float(local_mean)
    tokens = local_mask.sum()
    both = torch.stack([local_mean.detach() * tokens, tokens]).double()
    shard.sum([both])
    return float(both[0] / both[1].clamp(min=1.0))


def ppo_update(
    policy: nn.Module,
    value_head: ValueHead,
    samples: list[Sample],
    ppo: PpoSpec,
    kl_coef: float,
    *,
    pad_id: int,
    device: str,
    seed: int,
    log: Callable[..., None] = lambda *a: None,
    optimizer: torch.optim.Optimizer | None = None,
    shard: Shard | None = None,
    reference_adapter: str | None = None,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """Run one PPO update in place on ``policy`` (its trainable LoRA) and ``value_head``.

    ``optimizer`` must be over ``trainable_parameters(policy, value_head)``
    (``make_optimizer``; a fresh Adam when None); it is stepped in place, so
    the caller can save its state. ``shard`` is this process's part of a
    data-parallel update (default: the current process group, if any).
    ``reference_adapter`` names the frozen adapter the KL is measured
    against (``reference.attach``); None means the base model (adapter
    disabled), right only when the policy started from the base.
    ``temperature`` is the one the samples were drawn at.

    Returns the update's statistics, including ``kl_coef`` (used for this
    batch's rewards), ``kl_coef_next`` (after the controller's step) and
    ``warnings`` (guards that tripped, also logged).
    """
    if not samples:
        raise ValueError("a PPO update needs at least one rated response")
    if any(not s.response_ids for s in samples):
        raise ValueError("every response needs at least one token")
    disable_dropout(policy)
    value_head.to(device)
    n = len(samples)
    width = max(len(s.response_ids) for s in samples)
    mask = response_mask(samples, width, device)
    scores = torch.tensor([s.score for s in samples], dtype=torch.float32, device=device)
    tokens = int(mask.sum())
    timings: dict[str, float] = {}

    # 1. rollout and reference statistics, no gradients; each rank fills its
    #    samples' rows and the sum over ranks completes every tensor
    t0 = time.perf_counter()
    shard = shard or Shard.current()
    old_logprobs_t = torch.zeros((n, width), device=device)
    old_values_t = torch.zeros((n, width), device=device)
    ref_logprobs_t = torch.zeros((n, width), device=device)
    entropy_t = torch.zeros((n, width), device=device)
    policy.eval()
    mine = _chunks(shard.mine(list(range(n))), ppo.mini_batch_size)
    with torch.no_grad():
        for idx in mine:
            chunk = [samples[i] for i in idx]
            fwd = forward_responses(policy, value_head, chunk, width, pad_id, device, True, temperature)
            old_logprobs_t[idx] = fwd.logprobs.float()
            old_values_t[idx] = fwd.values.float()
            entropy_t[idx] = fwd.entropy.float()
        with reference.active(policy, reference_adapter):
            for idx in mine:
                chunk = [samples[i] for i in idx]
                ref = forward_responses(policy, None, chunk, width, pad_id, device, temperature=temperature)
                ref_logprobs_t[idx] = ref.logprobs.float()
    shard.sum([old_logprobs_t, old_values_t, ref_logprobs_t, entropy_t])
    timings["rollout_forward_seconds"] = time.perf_counter() - t0

    # 2. rewards, advantages
    rewards, kl = core.kl_penalized_rewards(scores, old_logprobs_t, ref_logprobs_t, mask, kl_coef)
    if ppo.whiten_rewards:
        rewards = core.masked_whiten(rewards, mask, shift_mean=False)
    advantages, returns = core.gae(old_values_t, rewards, mask, ppo.gamma, ppo.lam, whiten=True)
    mean_kl = float(kl.sum(dim=1).mean())
    warnings: list[str] = []
    if mean_kl < 0:
        warnings.append(
            f"mean KL {mean_kl:.6f} is negative: the samples were not drawn from the policy the update "
            "scores, or the reference is not the policy PPO started from; the penalty turns into a reward"
        )

    # 3. epochs over shuffled minibatches; each rank takes its share of every
    #    minibatch, and gradients are summed over ranks before each step
    t0 = time.perf_counter()
    params = trainable_parameters(policy, value_head)
    optimizer = optimizer or make_optimizer(params, ppo.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    step_size = ppo.mini_batch_size * ppo.gradient_accumulation_steps
    totals: dict[str, float] = {}
    n_mini = 0
    n_seen = 0
    grad_norms: list[float] = []
    band = (1.0 / ppo.ratio_threshold, ppo.ratio_threshold)
    ratio_means: list[float] = []
    outside: list[int] = []  # minibatch numbers whose mean ratio left the band
    skipped = 0
    policy.train()
    value_head.train()
    for epoch in range(ppo.epochs):
        order = torch.randperm(n, generator=generator).tolist()
        for step_idx in _chunks(order, step_size):
            optimizer.zero_grad(set_to_none=True)
            used = False  # did any minibatch of this step give a gradient (the same answer on every rank)
            for minibatch in _chunks(step_idx, ppo.mini_batch_size):
                n_mini += 1
                idx = shard.mine(minibatch)
                out = None
                local_ratio, local_mask = torch.zeros((), device=device), torch.zeros(1, device=device)
                if idx:  # a rank with no sample in this minibatch still joins the ratio sum
                    chunk = [samples[i] for i in idx]
                    fwd = forward_responses(policy, value_head, chunk, width, pad_id, device, temperature=temperature)
                    out = core.ppo_loss(
                        fwd.logprobs.float(),
                        old_logprobs_t[idx],
                        fwd.values.float(),
                        old_values_t[idx],
                        advantages[idx],
                        returns[idx],
                        mask[idx],
                        ppo.clip_range,
                        ppo.clip_range_value,
                        ppo.value_loss_coef,
                    )
                    local_ratio, local_mask = out.ratio_mean, mask[idx]
                ratio_mean = _minibatch_ratio_mean(shard, local_ratio, local_mask)
                ratio_means.append(ratio_mean)
                if not band[0] <= ratio_mean <= band[1]:
                    outside.append(n_mini)
                    if ppo.skip_ratio_outliers:
                        skipped += 1
                        continue  # TRL's ratio_threshold: this minibatch gives no gradient
                used = True
                if out is None:
                    continue
                (out.loss * len(idx) / len(step_idx)).backward()
                for key, value in out.stats().items():
                    totals[key] = totals.get(key, 0.0) + value * len(idx)
                n_seen += len(idx)
            if not used:
                continue  # every minibatch skipped: no step (Adam's momentum alone would still move the weights)
            for p in params:
                if p.grad is None:  # a rank with no sample in this step still joins the sum
                    p.grad = torch.zeros_like(p)
            shard.sum([p.grad for p in params])
            grad_norms.append(float(torch.nn.utils.clip_grad_norm_(params, ppo.max_grad_norm)))
            optimizer.step()
        log("epoch %d/%d: policy loss %.4f, value loss %.4f", epoch + 1, ppo.epochs,
            totals.get("policy_loss", 0.0) / max(n_seen, 1), totals.get("value_loss", 0.0) / max(n_seen, 1))
    policy.eval()
    value_head.eval()
    timings["train_seconds"] = time.perf_counter() - t0
    optimizer.zero_grad(set_to_none=True)
    # Loss statistics: sample-weighted means over every rank's minibatches.
    keys = sorted(totals)
    summed = torch.tensor([totals[k] for k in keys] + [float(n_seen)], dtype=torch.float64, device=device)
    shard.sum([summed])
    stats = {k: float(v) / max(float(summed[-1]), 1.0) for k, v in zip(keys, summed[:-1])}
    stats.pop("loss", None)

    # 4. KL controller (TRL steps it with the batch size)
    controller = core.make_kl_controller(kl_coef, ppo.kl.adaptive, ppo.kl.target, ppo.kl.horizon)
    kl_coef_next = controller.update(mean_kl, n)
    if outside:
        warnings.append(
            f"{len(outside)} minibatch(es) had a mean probability ratio outside "
            f"{band[0]:.3g}..{band[1]:.3g} (max {max(ratio_means):.3g}, min {min(ratio_means):.3g})"
            + (f"; {skipped} skipped (skipRatioOutliers)" if skipped else "")
        )
    for line in warnings:
        log("warning: %s", line)

    score_list = scores.tolist()
    mean_score = sum(score_list) / n
    return {
        "responses": n,
        "response_tokens": tokens,
        "mean_reward": mean_score,
        "reward_std": math.sqrt(sum((s - mean_score) ** 2 for s in score_list) / n),
        "kl": mean_kl,
        "kl_coef": kl_coef,
        "kl_coef_next": kl_coef_next,
        "non_score_reward": float((-kl_coef * kl).sum(dim=1).mean()),
        "entropy": float(core.masked_mean(entropy_t, mask)),
        "mean_value": float(core.masked_mean(old_values_t, mask)),
        "mean_return": float(core.masked_mean(returns, mask)),
        "grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else 0.0,
        "optimizer_steps": len(grad_norms),
        "optimizer_steps_total": optimizer_steps(optimizer),
        "data_parallel_ranks": shard.world,
        "local_sample_passes": n_seen,  # gradient passes over samples on this rank (rank 0 in metrics.json)
        "minibatches": n_mini,
        "minibatches_outside_ratio_band": len(outside),
        "minibatches_skipped": skipped,
        "ratio_mean_max": max(ratio_means, default=1.0),
        "ratio_mean_min": min(ratio_means, default=1.0),
        "kl_negative": mean_kl < 0,
        "temperature": temperature,
        "reference": reference_adapter or reference.BASE,
        "warnings": warnings,
        **stats,
        **{k: round(v, 3) for k, v in timings.items()},
        "train_tokens_per_second": round(tokens * ppo.epochs / max(timings["train_seconds"], 1e-9), 1),
    }
