"""The PPO pieces against values worked out by hand (numbers in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from therapy_rlhf.jobs import ppo_core as core


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


# ------------------------------------------------------------------ policy


def _policy_grad(ratio: float, advantage: float, eps: float = 0.2):
    old = torch.zeros(1, 1, dtype=torch.float64)
    logp = torch.full((1, 1), math.log(ratio), dtype=torch.float64, requires_grad=True)
    loss, clipfrac, ratio_mean = core.clipped_policy_loss(logp, old, t([advantage]), t([1.0]), eps)
    loss.backward()
    return float(loss.detach()), float(logp.grad), float(clipfrac), float(ratio_mean)


def test_positive_advantage_is_clipped_above_one_plus_eps():
    # A=+1, r=1.5: -min(1.5, 1.2) = -1.2, flat in r -> no gradient, counted as clipped
    loss, grad, clipfrac, ratio = _policy_grad(1.5, 1.0)
    assert loss == pytest.approx(-1.2)
    assert grad == 0.0
    assert clipfrac == 1.0
    assert ratio == pytest.approx(1.5)


def test_positive_advantage_below_one_minus_eps_is_not_clipped():
    # A=+1, r=0.5: -min(0.5, 0.8) = -0.5; d/dlogp (-r) = -r = -0.5
    loss, grad, clipfrac, _ = _policy_grad(0.5, 1.0)
    assert loss == pytest.approx(-0.5)
    assert grad == pytest.approx(-0.5)
    assert clipfrac == 0.0


def test_negative_advantage_is_clipped_below_one_minus_eps():
    # A=-1, r=0.5: -min(-0.5, -0.8) = 0.8, flat in r
    loss, grad, clipfrac, _ = _policy_grad(0.5, -1.0)
    assert loss == pytest.approx(0.8)
    assert grad == 0.0
    assert clipfrac == 1.0


def test_negative_advantage_above_one_plus_eps_is_not_clipped():
    # A=-1, r=1.5: -min(-1.5, -1.2) = 1.5; d/dlogp (r) = 1.5
    loss, grad, clipfrac, _ = _policy_grad(1.5, -1.0)
    assert loss == pytest.approx(1.5)
    assert grad == pytest.approx(1.5)
    assert clipfrac == 0.0


def test_inside_the_trust_region_the_surrogate_is_plain_ratio_times_advantage():
    # A=2, r=1.1: -2.2
    loss, grad, clipfrac, _ = _policy_grad(1.1, 2.0)
    assert loss == pytest.approx(-2.2)
    assert grad == pytest.approx(-2.2)
    assert clipfrac == 0.0


def test_policy_loss_ignores_padding():
    # row 0: two real tokens, r=1, A=[1, 3] -> mean(-1, -3) = -2; the padded
    # position holds an absurd advantage and ratio that must not count
    logp = t([0.0, 0.0, 5.0])
    old = t([0.0, 0.0, 0.0])
    adv = t([1.0, 3.0, 1000.0])
    mask = t([1.0, 1.0, 0.0])
    loss, clipfrac, ratio = core.clipped_policy_loss(logp, old, adv, mask, 0.2)
    assert float(loss) == pytest.approx(-2.0)
    assert float(clipfrac) == 0.0
    assert float(ratio) == pytest.approx(1.0)


# ------------------------------------------------------------------- value


def test_clipped_value_loss_by_hand():
    # token 0: V=1.0, V_old=0.5, R=0.0, clip 0.2 -> V_clip=0.7: max(1.0, 0.49)=1.0 (unclipped wins)
    # token 1: V=1.0, V_old=0.5, R=2.0 -> V_clip=0.7: max(1.0, 1.69)=1.69 (clipped wins)
    # token 2: padding. loss = 0.5 * mean(1.0, 1.69) = 0.6725, clip fraction 1/2
    values = t([1.0, 1.0, 9.0])
    old = t([0.5, 0.5, 0.0])
    returns = t([0.0, 2.0, -9.0])
    mask = t([1.0, 1.0, 0.0])
    loss, clipfrac = core.clipped_value_loss(values, old, returns, mask, 0.2)
    assert float(loss) == pytest.approx(0.6725)
    assert float(clipfrac) == pytest.approx(0.5)


def test_ppo_loss_combines_and_reports():
    logp = t([math.log(1.5), 0.0])
    old = t([0.0, 0.0])
    values, old_values, returns = t([1.0, 0.0]), t([1.0, 0.0]), t([0.0, 0.0])
    adv = t([1.0, 1.0])
    mask = t([1.0, 1.0])
    out = core.ppo_loss(logp, old, values, old_values, adv, returns, mask, 0.2, 0.2, 0.1)
    # policy: mean(-1.2, -1.0) = -1.1 ; value: 0.5 * mean(1, 0) = 0.25 ; total -1.1 + 0.025
    assert float(out.policy_loss) == pytest.approx(-1.1)
    assert float(out.value_loss) == pytest.approx(0.25)
    assert float(out.loss) == pytest.approx(-1.075)
    # approx KL = 0.5 * mean(log(1.5)^2, 0)
    assert float(out.approx_kl) == pytest.approx(0.5 * math.log(1.5) ** 2 / 2)
    assert float(out.policy_kl) == pytest.approx(-math.log(1.5) / 2)
    assert out.stats()["clip_fraction"] == pytest.approx(0.5)


# --------------------------------------------------------------------- GAE


def test_gae_on_a_known_sequence():
    # r = [0, 0, 1], V = [0.5, 0.6, 0.7], gamma 1, lambda 0.95
    # delta2 = 1 - 0.7 = 0.3                   A2 = 0.3
    # delta1 = 0 + 0.7 - 0.6 = 0.1             A1 = 0.1 + 0.95 * 0.3 = 0.385
    # delta0 = 0 + 0.6 - 0.5 = 0.1             A0 = 0.1 + 0.95 * 0.385 = 0.46575
    values = t([0.5, 0.6, 0.7])
    rewards = t([0.0, 0.0, 1.0])
    mask = t([1.0, 1.0, 1.0])
    adv, ret = core.gae(values, rewards, mask, gamma=1.0, lam=0.95, whiten=False)
    assert adv[0].tolist() == pytest.approx([0.46575, 0.385, 0.3])
    assert ret[0].tolist() == pytest.approx([0.96575, 0.985, 1.0])


def test_gae_with_discount():
    # gamma 0.5, lambda 1: delta1 = 1 - 0.2 = 0.8 ; delta0 = 0 + 0.5*0.2 - 0.1 = 0 ; A0 = 0 + 0.5*0.8 = 0.4
    adv, ret = core.gae(t([0.1, 0.2]), t([0.0, 1.0]), t([1.0, 1.0]), gamma=0.5, lam=1.0, whiten=False)
    assert adv[0].tolist() == pytest.approx([0.4, 0.8])
    assert ret[0].tolist() == pytest.approx([0.5, 1.0])


def test_gae_padding_neither_leaks_value_nor_reward():
    # Same sequence as above followed by two pads holding junk: the result on
    # the real tokens is unchanged and the pads are 0.
    values = t([0.5, 0.6, 0.7, 5.0, 5.0])
    rewards = t([0.0, 0.0, 1.0, 3.0, 3.0])
    mask = t([1.0, 1.0, 1.0, 0.0, 0.0])
    adv, ret = core.gae(values, rewards, mask, gamma=1.0, lam=0.95, whiten=False)
    assert adv[0].tolist() == pytest.approx([0.46575, 0.385, 0.3, 0.0, 0.0])
    assert ret[0].tolist() == pytest.approx([0.96575, 0.985, 1.0, 0.0, 0.0])


def test_gae_batch_rows_are_independent():
    values = t([0.5, 0.6, 0.7], [0.0, 0.0, 0.0])
    rewards = t([0.0, 0.0, 1.0], [2.0, 0.0, 0.0])
    mask = t([1.0, 1.0, 1.0], [1.0, 0.0, 0.0])
    adv, _ = core.gae(values, rewards, mask, gamma=1.0, lam=0.95, whiten=False)
    assert adv[0].tolist() == pytest.approx([0.46575, 0.385, 0.3])
    assert adv[1].tolist() == pytest.approx([2.0, 0.0, 0.0])


# -------------------------------------------------------------- whitening


def test_masked_whiten_by_hand():
    # real values [1, 2, 3]: mean 2, unbiased var 1 -> [-1, 0, 1]; pad -> 0
    x = t([1.0, 2.0, 3.0, 100.0])
    mask = t([1.0, 1.0, 1.0, 0.0])
    assert core.masked_whiten(x, mask)[0].tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    # without shifting the mean: [1, 2, 3]
    assert core.masked_whiten(x, mask, shift_mean=False)[0].tolist() == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-6)


def test_masked_mean_and_var():
    x = t([2.0, 4.0, 99.0], [6.0, 99.0, 99.0])
    mask = t([1.0, 1.0, 0.0], [1.0, 0.0, 0.0])
    assert float(core.masked_mean(x, mask)) == pytest.approx(4.0)
    assert core.masked_mean(x, mask, dim=1).tolist() == pytest.approx([3.0, 6.0])
    # values 2, 4, 6: biased var 8/3, unbiased 4
    assert float(core.masked_var(x, mask)) == pytest.approx(4.0)
    assert float(core.masked_var(x, mask, unbiased=False)) == pytest.approx(8 / 3)


# ------------------------------------------------------------- KL rewards


def test_kl_penalized_rewards_put_the_score_on_the_last_real_token():
    logp = t([-1.0, -1.0, -1.0, -1.0], [-2.0, -2.0, 0.0, 0.0])
    ref = t([-1.5, -0.5, -1.0, 0.0], [-1.0, -2.0, 7.0, 7.0])
    mask = t([1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0])
    rewards, kl = core.kl_penalized_rewards(torch.tensor([0.8, 0.3], dtype=torch.float64), logp, ref, mask, kl_coef=0.2)
    # row 0: kl = [0.5, -0.5, 0, pad]; rewards = [-0.1, 0.1, 0 + 0.8, 0]
    # row 1: kl = [-1, 0, pad, pad];   rewards = [0.2, 0 + 0.3, 0, 0]
    assert torch.allclose(kl, t([0.5, -0.5, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0]))
    assert torch.allclose(rewards, t([-0.1, 0.1, 0.8, 0.0], [0.2, 0.3, 0.0, 0.0]))


def test_kl_penalized_rewards_reject_empty_responses():
    with pytest.raises(ValueError, match="at least one token"):
        core.kl_penalized_rewards(torch.tensor([1.0]), t([0.0]), t([0.0]), t([0.0]), 0.2)


def test_logprobs_and_entropy_from_logits():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]], dtype=torch.float64))
    assert float(core.logprobs_from_logits(logits, torch.tensor([[1]]))) == pytest.approx(math.log(0.25))
    # H = -(0.5 ln 0.5 + 2 * 0.25 ln 0.25) = 1.5 ln 2
    assert float(core.entropy_from_logits(logits)) == pytest.approx(1.5 * math.log(2))


# ---------------------------------------------------------- KL controller


def test_adaptive_kl_controller_trl_semantics():
    ctl = core.make_kl_controller(0.2, adaptive=True, target=6.0, horizon=10000)
    # KL 9 vs target 6: error 0.5 clipped to 0.2 ; 0.2 * (1 + 0.2 * 100 / 10000) = 0.2004
    assert ctl.update(9.0, 100) == pytest.approx(0.2004)
    # KL 3: error -0.5 clipped to -0.2 ; 0.2004 * (1 - 0.2 * 100 / 10000) = 0.2004 * 0.998
    assert ctl.update(3.0, 100) == pytest.approx(0.2004 * 0.998)
    # KL 6.6: error 0.1 (not clipped) ; * (1 + 0.1 * 1000 / 10000) = * 1.01
    before = ctl.value
    assert ctl.update(6.6, 1000) == pytest.approx(before * 1.01)


def test_fixed_kl_controller_never_moves():
    ctl = core.make_kl_controller(0.05, adaptive=False, target=6.0, horizon=10)
    assert ctl.update(100.0, 1000) == 0.05
    assert ctl.value == 0.05
