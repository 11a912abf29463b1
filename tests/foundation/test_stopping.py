"""ppo.stopping (issue 21): the slope of the gates' mean rewards and its interval, on planted rewards, and the
observation that feeds the planner (the last window's gates, read from the store)."""

from __future__ import annotations

import pytest

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.contracts.records import Gate
from therapy_rlhf.planning import stopping
from therapy_rlhf.planning.observe import observe_store
from therapy_rlhf.planning.planner import plan
from therapy_rlhf.contracts.spec import RunSpec
from therapy_rlhf.store.backends import dump_json


def test_slope_interval_on_known_points():
    slope, low, high = stopping.slope_interval([0.1, 0.2, 0.3, 0.4])
    assert slope == pytest.approx(0.1) and low == pytest.approx(0.1) and high == pytest.approx(0.1)  # no scatter
    slope, low, high = stopping.slope_interval([0.50, 0.55, 0.48, 0.53, 0.51])
    assert low < 0 < high and abs(slope) < 0.02
    with pytest.raises(ValueError, match="at least 3 rounds"):
        stopping.slope_interval([0.1, 0.2])
    assert stopping.t95(3) == 2.353 and stopping.t95(22) == 1.725 and stopping.t95(500) == 1.645


def test_plateau_only_when_the_rise_is_inside_its_noise():
    rising = {1: 0.30, 2: 0.42, 3: 0.47, 4: 0.61, 5: 0.70}
    assert stopping.plateau(rising, 5, 4) is None
    noisy = {1: 0.30, 2: 0.62, 3: 0.41, 4: 0.66, 5: 0.45}  # rises on average, but no more than its scatter
    said = stopping.plateau(noisy, 5, 4)
    assert said and "rounds 2-5" in said and "inside its noise" in said
    assert stopping.plateau({1: 0.5, 2: 0.4, 3: 0.3}, 3, 3)  # falling is no rise either
    assert stopping.plateau(noisy, 3, 4) is None  # not enough rounds yet
    assert stopping.plateau({**noisy, 4: None}, 5, 4) is None  # a gate without a mean reward: no judgement
    assert stopping.plateau(noisy, 5, None) is None  # no stopping rule


def _gate(r: int, mean: float) -> bytes:
    return dump_json(Gate(round=r, reason="complete", min_raters=1, responses_total=1, responses_rewarded=1,
                          rewards={}, mean_reward=mean, batch_sha256="0" * 64).model_dump(mode="json"))


def test_the_planner_reads_the_last_windows_gates_and_pauses(store):
    paths = RunPaths("default", "flat")
    spec = RunSpec.model_validate({"model": {"source": "tiny:mistral"}, "storage": {"localPath": "/s"}, "sft": {"enabled": False},
                                   "evaluation": {"enabled": False}, "ppo": {"rounds": 8, "stopping": {"window": 3}}})
    for r, mean in enumerate([0.2, 0.5, 0.52, 0.49], start=1):
        store.write_bytes(paths.batch(r), b"")
        store.write_bytes(paths.gate(r), _gate(r, mean))
        store.write_json(paths.policy_metrics(r), {})
    observed, _ = observe_store(store, paths, spec)
    assert [observed.round(r).mean_reward for r in (1, 2, 3, 4)] == [None, 0.5, 0.52, 0.49]  # the window only
    decision = plan(spec, observed)
    assert decision.reason == "RewardPlateau" and decision.phase == "Suspended" and "rounds 2-4" in decision.message
    unwatched = spec.model_copy(update={"ppo": spec.ppo.model_copy(update={"stopping": spec.ppo.stopping.model_copy(update={"window": None})})})
    assert plan(unwatched, observe_store(store, paths, unwatched)[0]).reason != "RewardPlateau"
