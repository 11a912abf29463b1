"""The PPO arithmetic, pure torch and no I/O, so each piece is unit-tested by hand.

All per-token tensors are shaped ``[batch, response_len]`` and aligned on the
*response* tokens: position ``t`` holds the log-prob of response token ``t``,
the value of the state just before it, and so on. Responses are right-padded;
``mask`` is 1 on real response tokens and 0 on padding, and every reduction
here is masked so padding never moves a loss, a statistic or an advantage.

The semantics follow TRL 0.11's PPOTrainer (the last TRL release with a PPO
trainer that takes external scores), which follows Ziegler et al. (2019):

* reward per token = -kl_coef * (logp - logp_ref), plus the scalar score at
  the last real response token;
* the adaptive KL controller multiplies the coefficient by
  ``1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon``;
* GAE over the response, advantages whitened over the batch's real tokens;
* clipped surrogate policy loss, clipped value loss (0.5 * max of squared
  errors), approximate KL ``0.5 * E[(logp - logp_old)^2]``, clip fractions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

WHITEN_EPS = 1e-8


# ------------------------------------------------------------ masked stats


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over the positions where mask is 1 (over everything, or along ``dim``)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the masked positions (Bessel-corrected when more than one)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    count = mask.sum()
    if unbiased and count > 1:
        var = var * count / (count - 1)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over masked positions; padding comes out as 0."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


# ----------------------------------------------------------- from logits


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) per position; logits [B, T, V], labels [B, T] -> [B, T]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, 2, labels.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution per position; [B, T, V] -> [B, T]."""
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


# ------------------------------------------------------------ KL control


class FixedKLController:
    """A constant KL coefficient."""

    adaptive = False

    def __init__(self, value: float):
        self.value = float(value)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


class AdaptiveKLController:
    """Ziegler et al.'s proportional controller (TRL 0.11 ``AdaptiveKLController``).

    ``current_kl`` is the batch mean of the per-sequence KL sum; ``n_steps``
    the number of sequences in the batch.
    """

    adaptive = True
    MAX_ERROR = 0.2

    def __init__(self, init_value: float, target: float, horizon: int):
        self.value = float(init_value)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -self.MAX_ERROR), self.MAX_ERROR)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


def make_kl_controller(
    init_value: float, adaptive: bool, target: float, horizon: int
) -> FixedKLController | AdaptiveKLController:
    if adaptive:
        return AdaptiveKLController(init_value, target, horizon)
    return FixedKLController(init_value)


# ---------------------------------------------------------- rewards, GAE


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token per row (rows must have at least one)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values


def kl_penalized_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards and per-token KL (both zero on padding).

    rewards[t] = -kl_coef * (logp[t] - logp_ref[t]), plus ``scores[b]`` at the
    last real response token of row b.
    """
    if bool((mask.sum(dim=1) == 0).any()):
        raise ValueError("every response needs at least one token")
    maskf = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * maskf
    rewards = -kl_coef * kl
    last = last_token_index(mask)
    rewards[torch.arange(rewards.shape[0]), last] += scores.to(rewards.dtype)
    return rewards * maskf, kl


def gae(
    values: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
    whiten: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation; returns (advantages, returns).

    delta_t = r_t + gamma * V_{t+1} - V_t with V past the last real token = 0,
    A_t = delta_t + gamma * lam * A_{t+1}; returns = A + V (before whitening).
    Advantages are then whitened over the real tokens of the whole batch.
    """
    maskf = mask.to(values.dtype)
    values = values * maskf
    rewards = rewards * maskf
    steps = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(steps)):
        next_mask = maskf[:, t + 1] if t + 1 < steps else torch.zeros_like(running)
        next_value = values[:, t + 1] * next_mask if t + 1 < steps else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running * next_mask) * maskf[:, t]
        advantages[:, t] = running
    returns = (advantages + values) * maskf
    if whiten:
        advantages = masked_whiten(advantages, mask)
    return advantages.detach(), returns.detach()


# ----------------------------------------------------------------- losses


@dataclass
class PPOLoss:
    loss: torch.Tensor  # what backward() is called on
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    approx_kl: torch.Tensor
    policy_kl: torch.Tensor
    clip_fraction: torch.Tensor
    value_clip_fraction: torch.Tensor
    ratio_mean: torch.Tensor

    def stats(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in self.__dict__.items()}


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-min(r A, clip(r, 1-eps, 1+eps) A), masked mean; also (clip fraction, mean ratio).

    As in Figure 1 of the PPO paper: with A > 0 the objective stops rewarding
    r above 1+eps, with A < 0 it stops rewarding r below 1-eps; on the other
    side the unclipped term wins and the gradient flows.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).to(ratio.dtype), mask)
    return loss, clip_fraction.detach(), masked_mean(ratio, mask).detach()


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 * masked mean of max((V - R)^2, (clip(V, V_old +- c) - R)^2); also the clip fraction."""
    clipped_values = torch.clamp(values, old_values - clip_range_value, old_values + clip_range_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    clip_fraction = masked_mean((loss_clipped > loss_unclipped).to(values.dtype), mask)
    return loss, clip_fraction.detach()


def ppo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    clip_range_value: float,
    value_coef: float,
) -> PPOLoss:
    """Policy loss + value_coef * value loss, with the statistics TRL logs."""
    policy_loss, clip_fraction, ratio_mean = clipped_policy_loss(
        logprobs, old_logprobs, advantages, mask, clip_range
    )
    value_loss, value_clip_fraction = clipped_value_loss(values, old_values, returns, mask, clip_range_value)
    diff = (logprobs - old_logprobs).detach()
    return PPOLoss(
        loss=policy_loss + value_coef * value_loss,
        policy_loss=policy_loss,
        value_loss=value_loss,
        approx_kl=0.5 * masked_mean(diff**2, mask),
        policy_kl=masked_mean(-diff, mask),
        clip_fraction=clip_fraction,
        value_clip_fraction=value_clip_fraction,
        ratio_mean=ratio_mean,
    )
