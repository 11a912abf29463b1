"""Which of a round's responses go to the experts (``feedback.selection``), and what the rest contribute.

One place for the rules, used by the job that samples a batch (``select`` ->
``rounds/r/selection.json`` and the sealed predictions, written before
``batch.jsonl``) and by whoever closes the gate (``gate_extras`` -> the gate
record):

* **Safety first, outside the budget.** Every response whose prompt has a
  crisis cue or whose text the safety screen flagged goes to the experts, and
  none of them counts toward ``budget`` (issue 21: safety review is not the
  learning budget). More of them than ``safetyCap`` marks the selection
  (``safety_cap_exceeded``): a warning that crises dominate the batch.
* **Budget.** ``uniform`` and ``active`` add ``budget`` more (a count, or a
  share of the batch: "25%") one prompt at a time, always from the prompt
  with the fewest picks so far (diversity across prompts): uniform at random,
  active by the reward model's uncertainty (highest first).
* **Cold start.** Until the run has ``minRatings`` gated expert ratings the
  model is not fitted: active picks as uniform does and nothing is
  model-scored.
* **Skill decides** (``judgement``): the fitted model decides (active picks,
  model scores) only after a gate judged it better than the mean; before
  that (probation) and after a gate judged it no better (drift) the round
  picks at random (or, with ``fallback: all``, sends everything), and the
  model's predictions of those random picks judge it again.
* **Predictions out of sight** (``predictions``): every response's predicted
  reward is sealed where only the executor reads until the gate closes; the
  selection commits to its digest.
* **Training data**: only what gates froze (expert ratings a closed gate
  counted: allowed raters, not late, latest version), never a model score.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Callable, Iterable

from therapy_rlhf.contracts import phases
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.contracts.records import Gate, ModelScore, PendingResponse, Predictions, Selection, parse_record
from therapy_rlhf.contracts.spec import FeedbackSpec, SelectionSpec, responses_of
from therapy_rlhf.feedback.judgement import decide, judge, uses_model  # noqa: F401  (uses_model: public here)
from therapy_rlhf.feedback.rewards import effective_reward
from therapy_rlhf.feedback.rounds import load_round, read_gate, usable_latest
from therapy_rlhf.store.backends import NotFound, Store


def safety_flagged(response: PendingResponse) -> bool:
    s = response.safety
    return bool(s.crisis_cues or s.risky_content or s.missing_crisis_resources or s.unverified_resources or s.no_verified_resource)


def training_examples(store: Store, paths: RunPaths, feedback: FeedbackSpec, before_round: int) -> tuple[list, list[int]]:
    """Every gated expert rating of rounds 1..before_round-1 (``reward_model.Example``: per rater, effective
    reward), and those rounds."""
    from therapy_rlhf.feedback import reward_model  # numpy: only where a batch is selected

    examples: list[reward_model.Example] = []
    rounds: list[int] = []
    for q in range(1, before_round):
        gate = read_gate(store, paths, q)
        if gate is None:
            continue
        state = load_round(store, paths, q, feedback=feedback, gate=gate)
        if state.gate is None:  # not this round's gate (load_round said why): nothing from it is trusted
            continue
        texts = {r.id: r.response for r in state.responses}
        for (resp, rater), rating in sorted(usable_latest(state, feedback).items()):
            if resp in gate.rewards and resp in texts:
                examples.append(reward_model.Example(texts[resp], rater, effective_reward(rating, feedback)[0]))
        rounds.append(q)
    return examples, rounds


def _round_rng(spec: SelectionSpec, round_no: int) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(f"{spec.seed}/{round_no}".encode()).digest()[:8], "big"))


def choose(
    responses: list[PendingResponse], budget: int, uncertainty: dict[str, float] | None, rng: random.Random
) -> tuple[list[str], list[str]]:
    """(selected ids in batch order, the safety-flagged ones among them): every safety-flagged response, plus
    ``budget`` others (``uncertainty`` None picks at random)."""
    safety = [r.id for r in responses if safety_flagged(r)]
    chosen = set(safety)
    by_prompt: dict[str, list[PendingResponse]] = {}
    for r in responses:
        if r.id not in chosen:
            by_prompt.setdefault(r.prompt_id, []).append(r)
    # Safety picks count toward a prompt's share (so the budget goes where the experts see least), not the budget.
    picks = {p: sum(1 for r in responses if r.id in chosen and r.prompt_id == p) for p in by_prompt}
    for queue in by_prompt.values():
        if uncertainty is None:
            rng.shuffle(queue)
        else:
            queue.sort(key=lambda r: (-uncertainty.get(r.id, 0.0), r.id))
    tiebreak = {p: rng.random() for p in by_prompt}
    taken = 0
    while taken < budget and any(by_prompt.values()):
        open_prompts = [p for p, q in by_prompt.items() if q]

        def rank(p: str) -> tuple:
            head = by_prompt[p][0]
            return (picks[p], -(uncertainty or {}).get(head.id, 0.0), tiebreak[p])

        prompt = min(open_prompts, key=rank)
        chosen.add(by_prompt[prompt].pop(0).id)
        picks[prompt] += 1
        taken += 1
    return [r.id for r in responses if r.id in chosen], [r.id for r in responses if r.id in safety]


def _fit(store, paths, feedback, round_no, features) -> tuple[Any, list[int], int]:
    """(the fitted model or None, the rounds it learned from, how many ratings there were)."""
    from therapy_rlhf.feedback import reward_model

    spec = feedback.selection
    examples, rounds = training_examples(store, paths, feedback, round_no)
    if len(examples) < spec.min_ratings:
        return None, rounds, len(examples)
    source = features if features is not None else reward_model.TextFeatures(only=spec.features)
    ridges = tuple(sorted({*reward_model.RIDGES, spec.ridge}))
    return reward_model.fit(examples, members=spec.ensemble, ridge=ridges, seed=spec.seed + round_no, source=source), rounds, len(examples)


def select(
    store: Store, paths: RunPaths, feedback: FeedbackSpec, round_no: int, responses: list[PendingResponse],
    log: Callable[..., None] | None = None, features: Any = None,
) -> tuple[Selection, Predictions | None]:
    """The round's selection record and the model's predictions (to seal: ``predictions.seal``); marks
    ``responses`` (in place) with whether they go to the experts. ``features``: the reward model's
    ``FeatureSource`` (the job's: with the policy tokenizer and the sentence encoder); default the hashed text."""
    spec = feedback.selection
    say = log or (lambda *a: None)
    mode, fallback, drift, reason, decides = spec.mode, None, None, None, uses_model(spec)
    model, trained_rounds = None, []
    if spec.mode != "all":
        model, trained_rounds, rated = _fit(store, paths, feedback, round_no, features)
        if model is None:
            mode, reason, decides = "uniform", phases.R_SELECTION_COLD_START, False
            fallback = f"the reward model has {rated} expert ratings, needs minRatings {spec.min_ratings}"
        elif uses_model(spec):
            verdict = decide(store, paths, spec, round_no)
            reason, decides, drift = verdict.reason, verdict.model_decides, verdict.drift
            if not decides:
                mode = spec.fallback if verdict.reason == phases.R_REWARD_MODEL_DRIFT else "uniform"
                fallback = verdict.message
            elif verdict.reason == phases.R_REWARD_MODEL_RECOVERED:
                say("%s", verdict.message)
    predictions: Predictions | None = None
    if model is not None:
        mean, unc = model.predict([r.response for r in responses])
        predictions = Predictions(
            round=round_no, model_sha256=model.digest, feature_set=model.feature_set,
            predictions={r.id: [round(float(m), 6), round(float(u), 6)] for r, m, u in zip(responses, mean, unc)},
        )
    budget = responses_of(spec.budget, len(responses))
    rng = _round_rng(spec, round_no)
    if mode == "all":
        selected, safety = [r.id for r in responses], [r.id for r in responses if safety_flagged(r)]
        held_out = [rid for rid in selected if rid not in set(safety)]
    elif mode == "active" and predictions is not None:
        # A random part of the budget first (what the model is judged on), then the model's picks.
        held_out, safety = choose(responses, responses_of(spec.holdout, budget), None, rng)
        held_out = [rid for rid in held_out if rid not in set(safety)]
        rest = [r for r in responses if r.id not in set(held_out)]
        uncertainty = {rid: p[1] for rid, p in predictions.predictions.items()}
        picked, _ = choose(rest, budget - len(held_out), uncertainty, rng)
        selected = [r.id for r in responses if r.id in set(picked) | set(held_out)]
    else:
        selected, safety = choose(responses, budget, None, rng)
        held_out = [rid for rid in selected if rid not in set(safety)]
    cap = responses_of(spec.safety_cap, len(responses))
    chosen = set(selected)
    for r in responses:
        r.sent_to_experts = r.id in chosen
    if spec.mode != "all":
        say(
            "selection %s: %d of %d responses to the experts (%d safety-flagged, outside the budget of %d%s)%s; "
            "reward model %s",
            mode, len(selected), len(responses), len(safety), budget,
            f"; more than safetyCap {cap}: crises dominate this batch" if len(safety) > cap else "",
            f" [{fallback}]" if fallback else "",
            f"fitted to {model.trained_on} ratings of rounds {trained_rounds}, {model.feature_set} features "
            f"(cross-validated skill {model.cv_skill})" if model else "not fitted",
        )
    return Selection(
        round=round_no,
        mode=mode,  # type: ignore[arg-type]
        requested_mode=spec.mode,
        fallback=fallback,
        drift=drift,
        decision=reason,
        model_decides=decides and model is not None,
        budget=budget,
        selected=selected,
        safety_selected=safety,
        held_out=held_out if predictions is not None else [],
        safety_cap=cap,
        safety_cap_exceeded=len(safety) > cap,
        feature_set=model.feature_set if model else None,
        feature_skill={k: v.get("skill") for k, v in model.cv.items()} if model else {},
        trained_on=model.trained_on if model else 0,
        trained_rounds=trained_rounds,
        model_sha256=model.digest if model else None,
    ), predictions


def read_selection(store: Store, paths: RunPaths, round_no: int) -> Selection | None:
    try:
        data = store.read_json(paths.selection(round_no))
    except NotFound:
        return None
    return parse_record(Selection, data, store.describe(paths.selection(round_no)))


def model_scores(
    selection: Selection | None, predictions: Predictions | None, spec: SelectionSpec, not_sent: Iterable[str]
) -> dict[str, ModelScore]:
    """Rewards for the responses the experts did not see: ``unselected: model``, and only in a round where the
    model decides (judged skilled), never on probation or after a drift."""
    if selection is None or predictions is None or spec.unselected != "model" or not selection.model_decides:
        return {}
    out = {}
    for rid in not_sent:
        if rid in predictions.predictions:
            predicted, spread = predictions.predictions[rid]
            reward = min(1.0, max(0.0, predicted - spec.uncertainty_penalty * spread))
            out[rid] = ModelScore(reward=round(reward, 6), predicted=predicted, spread=spread)
    return out


def gate_extras(
    selection: Selection | None, predictions: Predictions | None, feedback: FeedbackSpec,
    expert_rewards: dict[str, float], not_sent: Iterable[str], earlier: list | None = None,
) -> dict:
    """The gate fields that come from the selection: model scores and the model's judgement (``earlier``:
    the checks of the closed rounds before, newest first, whose held-out ratings it may pool)."""
    held_out = selection.held_out if selection is not None else []
    if selection is not None and not selection.held_out and selection.predictions:
        held_out = list(selection.predictions)  # a selection written before issue 21: judged on every rating
    return {
        "model_scored": model_scores(selection, predictions, feedback.selection, not_sent),
        "reward_model": judge(
            predictions, feedback.selection, expert_rewards, held_out, earlier or [], selection.trained_on if selection else 0
        ),
    }


def describe_gate(gate: Gate) -> str:
    """One line on the model's part in a closed round ('' when it had none)."""
    parts = []
    if gate.model_scored:
        parts.append(f"{len(gate.model_scored)} model-scored (not seen by the experts)")
    m = gate.reward_model
    if m is not None and m.skill is not None:
        parts.append(
            f"reward model skill {m.skill:.3f} (lower bound {m.skill_lower if m.skill_lower is not None else float('nan'):.3f}) "
            f"on {m.responses} expert-rated" + (" (NO BETTER THAN THE MEAN)" if m.drifted else "")
        )
    elif m is not None and m.mae is not None:
        parts.append(f"reward model error {m.mae:.3f} on {m.responses} expert-rated" + (" (DRIFT)" if m.drifted else ""))
    return "; ".join(parts)
