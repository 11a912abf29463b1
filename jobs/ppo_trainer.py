"""One PPO update of a LoRA policy with a value head, from externally scored rollouts.

TRL 1.x has no PPO trainer that takes scores from outside (its PPOTrainer
wants a reward model it can call), so this is the loop of TRL 0.11's
``PPOTrainer.step`` rebuilt on ``ppo_core``:

1. forward passes without gradients: the rollout policy's log-probs and
   values (``old``), and the reference log-probs with the LoRA adapter
   disabled (the frozen base), all on the response tokens only;
2. per-token rewards: -kl_coef * KL, plus the expert's score at the last
   response token; GAE (gamma, lambda) and whitened advantages;
3. ``epochs`` passes over the batch in shuffled minibatches of
   ``miniBatchSize``; ``gradientAccumulationSteps`` minibatches make one
   optimizer step; clipped surrogate + clipped value loss; gradient norm
   clipped to ``maxGradNorm``;
4. the adaptive KL controller steps once per batch.

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
from therapy_rlhf.jobs.value_head import ValueHead
from therapy_rlhf.spec import PpoSpec


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
) -> Forward:
    """Log-probs (and values, entropy) of each sample's response tokens, padded to ``width``."""
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
    mask = response_mask(samples, width, device)
    logprobs = core.logprobs_from_logits(logits, labels) * mask
    values = None
    if value_head is not None:
        hidden = out.hidden_states[-1]
        hidden = torch.gather(hidden, 1, pos[:, :, None].expand(-1, -1, hidden.shape[-1]))
        values = value_head(hidden) * mask
    entropy = core.entropy_from_logits(logits.detach()) * mask if with_entropy else None
    return Forward(logprobs, values, entropy)


def _chunks(indices: list[int], size: int) -> list[list[int]]:
    return [indices[i : i + size] for i in range(0, len(indices), size)]


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
) -> dict[str, Any]:
    """Run one PPO update in place on ``policy`` (its trainable LoRA) and ``value_head``.

    Returns the update's statistics, including ``kl_coef`` (used for this
    batch's rewards) and ``kl_coef_next`` (after the controller's step).
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

    # 1. rollout and reference statistics, no gradients
    t0 = time.perf_counter()
    old_logprobs, old_values, ref_logprobs, entropy = [], [], [], []
    policy.eval()
    with torch.no_grad():
        for idx in _chunks(list(range(n)), ppo.mini_batch_size):
            chunk = [samples[i] for i in idx]
            fwd = forward_responses(policy, value_head, chunk, width, pad_id, device, with_entropy=True)
            old_logprobs.append(fwd.logprobs)
            old_values.append(fwd.values)
            entropy.append(fwd.entropy)
            with policy.disable_adapter():
                ref_logprobs.append(forward_responses(policy, None, chunk, width, pad_id, device).logprobs)
    old_logprobs_t = torch.cat(old_logprobs)
    old_values_t = torch.cat(old_values).float()
    ref_logprobs_t = torch.cat(ref_logprobs)
    entropy_t = torch.cat(entropy)
    timings["rollout_forward_seconds"] = time.perf_counter() - t0

    # 2. rewards, advantages
    rewards, kl = core.kl_penalized_rewards(scores, old_logprobs_t, ref_logprobs_t, mask, kl_coef)
    if ppo.whiten_rewards:
        rewards = core.masked_whiten(rewards, mask, shift_mean=False)
    advantages, returns = core.gae(old_values_t, rewards, mask, ppo.gamma, ppo.lam, whiten=True)
    mean_kl = float(kl.sum(dim=1).mean())

    # 3. epochs over shuffled minibatches
    t0 = time.perf_counter()
    params = [p for p in policy.parameters() if p.requires_grad] + list(value_head.parameters())
    optimizer = torch.optim.Adam(params, lr=ppo.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    step_size = ppo.mini_batch_size * ppo.gradient_accumulation_steps
    totals: dict[str, float] = {}
    n_mini = 0
    grad_norms: list[float] = []
    policy.train()
    value_head.train()
    for epoch in range(ppo.epochs):
        order = torch.randperm(n, generator=generator).tolist()
        for step_idx in _chunks(order, step_size):
            optimizer.zero_grad(set_to_none=True)
            for idx in _chunks(step_idx, ppo.mini_batch_size):
                chunk = [samples[i] for i in idx]
                fwd = forward_responses(policy, value_head, chunk, width, pad_id, device)
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
                (out.loss * len(idx) / len(step_idx)).backward()
                for key, value in out.stats().items():
                    totals[key] = totals.get(key, 0.0) + value
                n_mini += 1
            grad_norms.append(float(torch.nn.utils.clip_grad_norm_(params, ppo.max_grad_norm)))
            optimizer.step()
        log("epoch %d/%d: policy loss %.4f, value loss %.4f", epoch + 1, ppo.epochs,
            totals.get("policy_loss", 0.0) / max(n_mini, 1), totals.get("value_loss", 0.0) / max(n_mini, 1))
    policy.eval()
    value_head.eval()
    timings["train_seconds"] = time.perf_counter() - t0
    optimizer.zero_grad(set_to_none=True)

    # 4. KL controller (TRL steps it with the batch size)
    controller = core.make_kl_controller(kl_coef, ppo.kl.adaptive, ppo.kl.target, ppo.kl.horizon)
    kl_coef_next = controller.update(mean_kl, n)

    stats = {k: v / n_mini for k, v in totals.items()}
    stats.pop("loss", None)
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
        "grad_norm": sum(grad_norms) / len(grad_norms),
        "optimizer_steps": len(grad_norms),
        "minibatches": n_mini,
        **stats,
        **{k: round(v, 3) for k, v in timings.items()},
        "train_tokens_per_second": round(tokens * ppo.epochs / max(timings["train_seconds"], 1e-9), 1),
    }
