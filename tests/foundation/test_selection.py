"""feedback.selection: who sees what, what the gate freezes, and what every reader says about it.

Safety-flagged responses always reach the experts and the budget holds; responses not sent are
never rateable; the gate keeps model scores apart from expert rewards (and export, status and the
report never present them as ratings); the model's error on fresh ratings is checked and a drift
sends the next round to the experts whole."""

from __future__ import annotations

import random

import pytest

from tests.support.selection_rounds import (
    PATHS, PROMPTS, closed_round_with_model, manifest, predictions_of, rate_all, responses, sample_round,
)

from therapy_rlhf.store import integrity
from therapy_rlhf.feedback import selection
from therapy_rlhf.commands.export import export_rows
from therapy_rlhf.jobs import report
from therapy_rlhf.planning.observe import observe_store
from therapy_rlhf.feedback.rewards import RatingError
from therapy_rlhf.feedback.gate import close_gate
from therapy_rlhf.feedback.rounds import load_round, read_gate
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.contracts.records import Rating
from therapy_rlhf.store.runs import freeze_spec
from therapy_rlhf.feedback.summary import summarize_round
from therapy_rlhf.contracts.status import RoundStatus

# -------------------------------------------------------------- choose


def test_safety_flagged_responses_always_go_outside_the_budget():
    batch = responses(1, flagged=3)
    picked, safety = selection.choose(batch, 8, None, random.Random(0))
    assert set(safety) == {r.id for r in batch[:3]} and set(safety) <= set(picked)
    assert len(picked) == 3 + 8  # the budget is for learning: safety review does not use it up
    # More flagged than the budget: every flagged one goes, and the budget still buys 8 more.
    many = responses(1, flagged=12)
    picked, safety = selection.choose(many, 8, None, random.Random(0))
    assert safety == [r.id for r in many[:12]] and len(picked) == 12 + 8


def test_picks_spread_across_prompts_and_active_takes_the_least_certain():
    batch = responses(1)
    uncertainty = {r.id: (1.0 if r.id.endswith("-3") else 0.1) + i * 1e-3 for i, r in enumerate(batch)}
    picked, _ = selection.choose(batch, 8, uncertainty, random.Random(0))
    assert len(picked) == 8
    per_prompt = {p: sum(1 for rid in picked if f"-{p}-" in rid) for p in PROMPTS}
    assert set(per_prompt.values()) == {2}
    assert {rid for rid in picked if rid.endswith("-3")} == {f"r0001-{p}-3" for p in PROMPTS}
    uniform_a, _ = selection.choose(batch, 8, None, random.Random(1))
    uniform_b, _ = selection.choose(batch, 8, None, random.Random(1))
    assert uniform_a == uniform_b and set(uniform_a) != set(picked)


# -------------------------------------------------------------- select over rounds


def test_cold_start_then_probation_then_the_model_decides(local_store):
    m = manifest()
    freeze_spec(local_store, m)
    first = sample_round(local_store, m, 1)
    assert first.mode == "uniform" and "needs minRatings 16" in first.fallback and first.predictions_sha256 is None
    assert first.decision == "ColdStart" and not first.model_decides
    assert len(first.selected) == 8
    rate_all(local_store, m, 1)
    close_gate(local_store, PATHS, 1, m.spec.feedback)
    rate_more = sample_round(local_store, m, 2)  # 8 ratings so far: still cold
    assert rate_more.mode == "uniform"
    rate_all(local_store, m, 2)
    gate2 = close_gate(local_store, PATHS, 2, m.spec.feedback).gate
    assert gate2.reward_model is None and not gate2.model_scored  # nothing was predicted yet
    # Fitted, never judged: random picks, nothing model-scored; its gate judges the model on them.
    third = sample_round(local_store, m, 3)
    assert third.mode == "uniform" and third.decision == "ModelOnProbation" and not third.model_decides
    assert third.trained_on == 16 and third.trained_rounds == [1, 2] and len(predictions_of(local_store, 3)) == 32
    assert third.feature_set == "hashed" and set(third.feature_skill) == {"hashed"}  # no tokenizer or encoder here
    assert len(third.selected) == 8 and third.model_sha256
    rate_all(local_store, m, 3)
    gate3 = close_gate(local_store, PATHS, 3, m.spec.feedback).gate
    assert gate3.model_scored == {} and gate3.reward_model.judged and gate3.reward_model.skill_lower > 0
    fourth = sample_round(local_store, m, 4)
    assert fourth.mode == "active" and fourth.decision == "ModelSkilled" and fourth.model_decides


def test_responses_not_sent_are_hidden_and_refused(local_store):
    m = manifest()
    freeze_spec(local_store, m)
    chosen = sample_round(local_store, m, 1)
    state = load_round(local_store, PATHS, 1, feedback=m.spec.feedback)
    assert state.response_ids == chosen.selected and len(state.not_sent) == 24
    hidden = state.not_sent[0].id
    with pytest.raises(RatingError):
        submit_rating(local_store, PATHS, state, Rating(response_id=hidden, rater="dr-kim", criteria={"empathy": 1.0}, reward=1.0), m.spec.feedback)
    # Planted straight into the store, it is garbage, not a rating.
    local_store.write_json(PATHS.rating(1, "dr-kim", hidden), Rating(response_id=hidden, rater="dr-kim", criteria={"empathy": 1.0}, reward=1.0).model_dump(mode="json"))
    state = load_round(local_store, PATHS, 1, feedback=m.spec.feedback)
    assert any("not sent to the experts" in g for g in state.garbage)
    observed, _ = observe_store(local_store, PATHS, m.spec)
    assert observed.rounds[1].total == 8  # the gate waits for the selected set only


def test_model_scores_stay_apart_from_expert_rewards_everywhere(local_store):
    m = manifest()
    gate = closed_round_with_model(local_store, m)
    assert len(gate.rewards) == 8 and len(gate.model_scored) == 24
    assert not set(gate.rewards) & set(gate.model_scored)
    predictions = predictions_of(local_store, 4)
    for rid, score in gate.model_scored.items():
        predicted, spread = predictions[rid]
        assert score.reward == pytest.approx(max(0.0, min(1.0, predicted - spread)), abs=1e-6)
    assert gate.mean_reward == pytest.approx(sum(r.reward for r in gate.rewards.values()) / 8, abs=1e-6)
    # export: no model score unless asked for, and then never with a rater
    rows = export_rows(local_store, PATHS)
    assert {r["scored_by"] for r in rows} == {"experts"} and len([r for r in rows if r["round"] == 4]) == 8
    with_model = [r for r in export_rows(local_store, PATHS, include_model_scored=True) if r["scored_by"] == "reward-model"]
    assert len(with_model) == 24 and all(r["raters"] == [] and r["criteria"] == {} for r in with_model)
    # status and the report
    summary = summarize_round(local_store, PATHS, m, 4)
    assert (summary.responses, summary.not_sent, summary.model_scored) == (8, 24, 24)
    curve = report.reward_curve(local_store, PATHS, 4)
    assert curve[-1]["n"] == 8 and curve[-1]["model_scored"] == 24
    text = report.render_markdown({"systems": [], "reward_curve": curve})
    assert "The reward model's part" in text and "| 4 | 24 |" in text


def test_omit_leaves_unselected_out_and_all_writes_nothing(local_store):
    m = manifest(unselected="omit")
    gate = closed_round_with_model(local_store, m)
    assert gate.model_scored == {} and gate.reward_model is not None  # still checked
    plain = manifest(mode="all")
    chosen, predictions = selection.select(local_store, PATHS, plain.spec.feedback, 1, responses(1))
    assert chosen.selected == [r.id for r in responses(1)] and predictions is None


def test_a_skilled_model_keeps_deciding(local_store):
    m = manifest(budget=24)
    fine = closed_round_with_model(local_store, m)
    check = fine.reward_model
    assert check.responses >= 24 and check.trained_on >= 48 and check.judged and not check.drifted
    assert check.skill > 0.5 and check.skill_lower > 0 and check.confidence == 0.8 and check.rank_correlation > 0.5
    assert sample_round(local_store, m, 5).mode == "active"


def test_drift_falls_back_and_says_why(local_store):
    m = manifest()
    drifted = closed_round_with_model(local_store, m, noise=0.5)  # the experts' scale moved: the model is off
    assert drifted.reward_model.drifted and drifted.reward_model.skill_lower <= 0
    nxt = sample_round(local_store, m, 5)
    assert nxt.mode == "uniform" and nxt.decision == "RewardModelDrift" and not nxt.model_decides
    assert nxt.drift is not None and nxt.drift.round == 4 and len(nxt.selected) == 8
    assert nxt.drift.skill == pytest.approx(drifted.reward_model.skill) and nxt.fallback.startswith("reward model drift")
    assert "round 4" in nxt.fallback and predictions_of(local_store, 5)  # still predicts, so round 5 judges it again
    summary = summarize_round(local_store, PATHS, m, 4)
    assert summary.reward_model_drifted and summary.reward_model_error == drifted.reward_model.mae
    assert summary.reward_model_skill == drifted.reward_model.skill and summary.reward_model_skill_lower <= 0
    assert (summary.selection_mode, summary.selection_decision) == ("active", "ModelSkilled")
    waiting = summarize_round(local_store, PATHS, m, 5)  # the round that fell back, in status.rounds[]
    assert (waiting.selection_mode, waiting.selection_decision) == ("uniform", "RewardModelDrift")
    row = RoundStatus.model_validate(waiting.to_dict())
    assert row.selection_decision == "RewardModelDrift" and row.reward_model_skill is None
    # fallback: all sends the whole batch instead.
    assert sample_round(local_store, manifest(fallback="all"), 5).mode == "all"


def test_training_data_is_only_what_gates_froze(local_store):
    m = manifest()
    closed_round_with_model(local_store, m)
    examples, rounds = selection.training_examples(local_store, PATHS, m.spec.feedback, 5)
    assert rounds == [1, 2, 3, 4] and len(examples) == 32  # 8 expert ratings per round, no model score
    # A rating stored after round 1's gate closed (late) is not learned from.
    state = load_round(local_store, PATHS, 1, feedback=m.spec.feedback)
    late = Rating(response_id=state.responses[0].id, rater="dr-lee", criteria={"empathy": 0.0}, reward=0.0, version=1)
    local_store.create_json(PATHS.rating(1, "dr-lee", late.response_id), late.model_dump(mode="json"))
    assert len(selection.training_examples(local_store, PATHS, m.spec.feedback, 5)[0]) == 32


def test_the_executor_refuses_a_selection_that_is_not_the_one_its_job_reported(local_store):
    m = manifest()
    freeze_spec(local_store, m)
    sample_round(local_store, m, 1)
    rate_all(local_store, m, 1)
    key = PATHS.selection(1)
    good = integrity.sha256(local_store.read_bytes(key))
    record = {integrity.relative(PATHS, key): good}
    doc = local_store.read_json(key)
    doc["selected"] = doc["selected"][:1]
    local_store.write_json(key, doc)
    with pytest.raises(integrity.IntegrityError, match="does not match the digest its job reported"):
        close_gate(local_store, PATHS, 1, m.spec.feedback, "complete", "test", digests=record, keep=record.__setitem__)
    assert read_gate(local_store, PATHS, 1) is None


def test_selecting_jobs_read_and_report_what_they_should():
    m = manifest()
    names = integrity.job_inputs("generate", 3, m.spec, PATHS)
    assert {integrity.relative(PATHS, PATHS.gate(q)) for q in (1, 2)} <= set(names)
    assert {integrity.relative(PATHS, PATHS.batch(q)) for q in (1, 2)} <= set(names)
    fused = integrity.job_inputs("ppo-generate", 3, m.spec, PATHS)
    assert integrity.relative(PATHS, PATHS.gate(2)) in fused and len(fused) == len(set(fused))
    selection_4 = integrity.relative(PATHS, PATHS.selection(4))
    assert selection_4 in integrity.job_outputs("ppo-generate", 3, PATHS, selecting=True)
    assert selection_4 not in integrity.job_outputs("ppo-generate", 3, PATHS)  # a run that sends everything writes none
    # The operator looks for a selecting run's selection digests where it looks for its batches'.
    from therapy_rlhf.operator.digests import missing
    from therapy_rlhf.planning.planner import Observed, RoundObservation

    observed = Observed(sft_done=False, eval_done=False, rounds={1: RoundObservation(1, batch=True)})
    assert missing(observed, PATHS, {}, selecting=True) == {"rounds/0001/batch.jsonl", "rounds/0001/selection.json"}
    assert missing(observed, PATHS, {}) == {"rounds/0001/batch.jsonl"}
    assert integrity.job_inputs("generate", 3, manifest(mode="all").spec, PATHS) == ["rounds/0002/policy/"]


def test_a_model_that_decides_nothing_never_sends_a_round_back(local_store):
    # uniform picks with unselected responses left out: the model is fitted and checked (reported), but it
    # neither picks nor rewards anything, so its error is no reason to spend the experts' whole time.
    m = manifest(mode="uniform", unselected="omit")
    drifted = closed_round_with_model(local_store, m, noise=0.5)
    assert drifted.reward_model.drifted and not selection.uses_model(m.spec.feedback.selection)
    nxt = sample_round(local_store, m, 5)
    assert nxt.mode == "uniform" and nxt.fallback is None and len(nxt.selected) == 8


def test_a_selection_stored_before_the_drift_field_still_says_drift():
    """selection.json written when drift was only a sentence in ``fallback`` reads with its structured drift."""
    from therapy_rlhf.contracts.records import Selection

    old = {"round": 4, "mode": "all", "requested_mode": "active", "budget": 8, "selected": ["a"],
           "fallback": "reward model drift: its error on round 3's expert ratings was 0.234 > driftBound 0.15; "
                       "every response goes to the experts"}
    read = Selection.model_validate(old)
    assert (read.drift.round, read.drift.mae, read.drift.bound) == (3, 0.234, 0.15)
    assert Selection.model_validate({**old, "fallback": "the reward model has 3 expert ratings, needs minRatings 16"}).drift is None
