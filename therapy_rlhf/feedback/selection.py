"""Which of a round's responses go to the experts (``feedback.selection``), and what the rest contribute.

One place for the rules, used by the job that samples a batch (``select`` ->
``rounds/r/selection.json``, written before ``batch.jsonl``) and by whoever
closes the gate (``model_scores`` and ``check`` -> the gate record):

* **Safety first.** Every response whose prompt has a crisis cue or whose text
  the safety screen flagged goes to the experts, counted in the budget (when
  there are more of them than the budget, all of them go and the budget is
  exceeded, never the other way round).
* **Budget.** ``uniform`` and ``active`` fill the rest of ``budget`` one prompt
  at a time, always from the prompt with the fewest picks so far (diversity
  across prompts): uniform at random, active by the reward model's
  uncertainty (highest first).
* **Cold start.** Until the run has ``minRatings`` gated expert ratings the
  model is not fitted: active picks as uniform does and nothing is
  model-scored.
* **Drift.** Where the model decides something (active picks, or model
  scores), when the last closed round's check says the model's error on
  the experts' fresh ratings passed ``driftBound``, this round sends every
  response to the experts (mode ``all``) and says why in ``fallback``; the
  model is still fitted and predicts every response, so that round's check
  tells whether the next round may go back to active.
* **Training data**: only what gates froze (expert ratings a closed gate
  counted: allowed raters, not late, latest version), never a model score.
"""

from __future__ import annotations

import hashlib
import random
from typing import Iterable

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.rewards import effective_reward
from therapy_rlhf.feedback.rounds import load_round, read_gate, usable_latest
from therapy_rlhf.contracts.records import Drift, Gate, ModelScore, PendingResponse, RewardModelCheck, Selection, parse_record
from therapy_rlhf.contracts.spec import FeedbackSpec, SelectionSpec
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
    """(selected ids in batch order, the safety-flagged ones among them); ``uncertainty`` None picks at random."""
    safety = [r.id for r in responses if safety_flagged(r)]
    chosen = set(safety)
    by_prompt: dict[str, list[PendingResponse]] = {}
    for r in responses:
        if r.id not in chosen:
            by_prompt.setdefault(r.prompt_id, []).append(r)
    picks = {p: sum(1 for r in responses if r.id in chosen and r.prompt_id == p) for p in by_prompt}
    for queue in by_prompt.values():
        if uncertainty is None:
            rng.shuffle(queue)
        else:
            queue.sort(key=lambda r: (-uncertainty.get(r.id, 0.0), r.id))
    tiebreak = {p: rng.random() for p in by_prompt}
    while len(chosen) < budget and any(by_prompt.values()):
        open_prompts = [p for p, q in by_prompt.items() if q]

        def rank(p: str) -> tuple:
            head = by_prompt[p][0]
            return (picks[p], -(uncertainty or {}).get(head.id, 0.0), tiebreak[p])

        prompt = min(open_prompts, key=rank)
        chosen.add(by_prompt[prompt].pop(0).id)
        picks[prompt] += 1
    return [r.id for r in responses if r.id in chosen], [r.id for r in responses if r.id in safety]


def uses_model(spec: SelectionSpec) -> bool:
    """Whether the reward model decides anything (what the experts see, or rewards); only then can it drift."""
    return spec.mode == "active" or (spec.mode != "all" and spec.unselected == "model")


def last_check(store: Store, paths: RunPaths, round_no: int) -> tuple[int, RewardModelCheck] | None:
    """The newest closed round before ``round_no`` whose gate checked the reward model."""
    for q in range(round_no - 1, 0, -1):
        gate = read_gate(store, paths, q)
        if gate is not None and gate.reward_model is not None:
            return q, gate.reward_model
    return None


def select(store: Store, paths: RunPaths, feedback: FeedbackSpec, round_no: int, responses: list[PendingResponse], log=None) -> Selection:
    """The round's selection record; marks ``responses`` (in place) with whether they go to the experts."""
    spec = feedback.selection
    say = log or (lambda *a: None)
    mode, fallback, drift = spec.mode, None, None
    model = None
    trained_rounds: list[int] = []
    if spec.mode != "all":
        from therapy_rlhf.feedback import reward_model

        examples, trained_rounds = training_examples(store, paths, feedback, round_no)
        if len(examples) >= spec.min_ratings:
            model = reward_model.fit(examples, members=spec.ensemble, ridge=spec.ridge, seed=spec.seed + round_no)
        elif spec.mode == "active":
            mode, fallback = "uniform", f"the reward model has {len(examples)} expert ratings, needs minRatings {spec.min_ratings}"
        checked = last_check(store, paths, round_no) if uses_model(spec) else None
        if checked is not None and checked[1].drifted:
            q, check = checked
            mode = "all"
            drift = Drift(round=q, mae=check.mae or 0.0, bound=check.bound)
            fallback = (
                f"reward model drift: its error on round {q}'s expert ratings was {check.mae:.3f} "
                f"> driftBound {check.bound:g}; every response goes to the experts"
            )
    predictions: dict[str, list[float]] = {}
    if model is not None:
        mean, unc = model.predict([r.response for r in responses])
        predictions = {r.id: [round(float(m), 6), round(float(u), 6)] for r, m, u in zip(responses, mean, unc)}
    if mode == "all":
        selected, safety = [r.id for r in responses], [r.id for r in responses if safety_flagged(r)]
    else:
        uncertainty = {rid: p[1] for rid, p in predictions.items()} if mode == "active" else None
        selected, safety = choose(responses, spec.budget, uncertainty, _round_rng(spec, round_no))
    chosen = set(selected)
    for r in responses:
        r.sent_to_experts = r.id in chosen
    if spec.mode != "all":
        say(
            "selection %s: %d of %d responses to the experts (%d safety-flagged)%s; reward model %s",
            mode, len(selected), len(responses), len(safety), f" [{fallback}]" if fallback else "",
            f"fitted to {model.trained_on} ratings of rounds {trained_rounds}" if model else "not fitted",
        )
    return Selection(
        round=round_no,
        mode=mode,  # type: ignore[arg-type]
        requested_mode=spec.mode,
        fallback=fallback,
        drift=drift,
        budget=spec.budget,
        selected=selected,
        safety_selected=safety,
        predictions=predictions,
        trained_on=model.trained_on if model else 0,
        trained_rounds=trained_rounds,
        model_sha256=model.digest if model else None,
    )


def read_selection(store: Store, paths: RunPaths, round_no: int) -> Selection | None:
    try:
        data = store.read_json(paths.selection(round_no))
    except NotFound:
        return None
    return parse_record(Selection, data, store.describe(paths.selection(round_no)))


def model_scores(selection: Selection | None, spec: SelectionSpec, not_sent: Iterable[str]) -> dict[str, ModelScore]:
    """Rewards for the responses the experts did not see (``unselected: model`` and a fitted model only)."""
    if selection is None or spec.unselected != "model" or not selection.predictions:
        return {}
    out = {}
    for rid in not_sent:
        if rid in selection.predictions:
            predicted, spread = selection.predictions[rid]
            reward = min(1.0, max(0.0, predicted - spec.uncertainty_penalty * spread))
            out[rid] = ModelScore(reward=round(reward, 6), predicted=predicted, spread=spread)
    return out


def check(selection: Selection | None, spec: SelectionSpec, rewards: dict[str, float]) -> RewardModelCheck | None:
    """The model's error on the experts' fresh rewards (predicted before they were given), or None."""
    if selection is None or not selection.predictions:
        return None
    errors = [abs(selection.predictions[rid][0] - value) for rid, value in rewards.items() if rid in selection.predictions]
    mae = round(sum(errors) / len(errors), 6) if errors else None
    return RewardModelCheck(
        responses=len(errors), mae=mae, bound=spec.drift_bound, drifted=mae is not None and mae > spec.drift_bound,
        trained_on=selection.trained_on,
    )


def gate_extras(selection: Selection | None, feedback: FeedbackSpec, expert_rewards: dict[str, float], not_sent: Iterable[str]) -> dict:
    """The gate fields that come from the selection: model scores and the model check."""
    return {
        "model_scored": model_scores(selection, feedback.selection, not_sent),
        "reward_model": check(selection, feedback.selection, expert_rewards),
    }


def describe_gate(gate: Gate) -> str:
    """One line on the model's part in a closed round ('' when it had none)."""
    parts = []
    if gate.model_scored:
        parts.append(f"{len(gate.model_scored)} model-scored (not seen by the experts)")
    if gate.reward_model is not None and gate.reward_model.mae is not None:
        m = gate.reward_model
        parts.append(f"reward model error {m.mae:.3f} on {m.responses} expert-rated" + (" (DRIFT)" if m.drifted else ""))
    return "; ".join(parts)
