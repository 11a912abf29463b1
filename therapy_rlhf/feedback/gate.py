"""The gate: what a round's rating set rewards, frozen once in gate.json, closed one way.

A round's gate closes when every response has ``feedback.minRaters``
distinct raters (or on an override / deadline); closing writes ``gate.json``
with a conditional create, freezing exactly the ratings the update uses.

``close_gate`` is the only way a gate is closed: by both executors (with
their digests), and by the learning check, the benchmarks and the tests
(with digests, or none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

from therapy_rlhf.store import integrity
from therapy_rlhf.feedback import predictions as sealed
from therapy_rlhf.feedback import selection as selecting
from therapy_rlhf.feedback.judgement import recent_checks
from therapy_rlhf.feedback.rewards import RatingError, effective_reward
from therapy_rlhf.feedback.rounds import RoundState, load_round, usable_latest
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.contracts.records import Gate, Predictions, Rating, ResponseReward, Selection, parse_record
from therapy_rlhf.contracts.spec import FeedbackSpec
from therapy_rlhf.store.backends import AlreadyExists, NotFound, Store, dump_json, parse_json


@dataclass(frozen=True)
class Coverage:
    total: int
    complete: int
    min_raters: int
    ratings: int

    @property
    def is_complete(self) -> bool:
        return self.total > 0 and self.complete == self.total

    def describe(self) -> str:
        return f"{self.complete}/{self.total} responses have >= {self.min_raters} rater{'s' if self.min_raters > 1 else ''}"


def coverage(state: RoundState, min_raters: int) -> Coverage:
    by_resp = state.raters_by_response()
    done = sum(1 for raters in by_resp.values() if len(raters) >= min_raters)
    return Coverage(len(by_resp), done, min_raters, len(state.latest()))


def aggregate(state: RoundState, feedback: FeedbackSpec) -> dict[str, ResponseReward]:
    """Reward per rated response: mean over distinct raters of their latest rating."""
    per_resp: dict[str, list[Rating]] = {}
    for (resp, _rater), rating in sorted(usable_latest(state, feedback).items()):
        per_resp.setdefault(resp, []).append(rating)
    out: dict[str, ResponseReward] = {}
    for resp, ratings in per_resp.items():
        values = [effective_reward(r, feedback) for r in ratings]
        out[resp] = ResponseReward(
            reward=round(sum(v for v, _ in values) / len(values), 6),
            raters=[r.rater for r in ratings],
            ratings=[r.id for r in ratings],
            penalized=any(p for _, p in values),
        )
    return out


# Agreement over fewer shared responses than this says nothing (with one shared
# response alpha is 0 whatever the scores): it is reported as undefined.
AGREEMENT_MIN_OVERLAP = 3


def overlap(state: RoundState) -> int:
    """Responses scored by two or more raters (what agreement can be measured on)."""
    return sum(1 for raters in state.raters_by_response().values() if len(raters) >= 2)


def agreement(state: RoundState, feedback: FeedbackSpec) -> float | None:
    """Krippendorff's alpha (interval) over rewards, once enough responses are shared (else None)."""
    latest = usable_latest(state, feedback)
    raters = sorted({rater for _, rater in latest})
    if len(raters) < 2:
        return None
    responses = sorted({resp for resp, _ in latest})
    matrix = [
        [effective_reward(latest[(resp, rater)], feedback)[0] if (resp, rater) in latest else math.nan for resp in responses]
        for rater in raters
    ]
    overlapping = sum(1 for j in range(len(responses)) if sum(not math.isnan(row[j]) for row in matrix) >= 2)
    values = {v for row in matrix for v in row if not math.isnan(v)}
    if overlapping < AGREEMENT_MIN_OVERLAP or len(values) < 2:
        return None
    import krippendorff

    alpha = krippendorff.alpha(reliability_data=matrix, level_of_measurement="interval")
    return None if math.isnan(alpha) else round(float(alpha), 4)


def build_gate(
    state: RoundState, feedback: FeedbackSpec, reason: str, closed_by: str, selection: Selection | None = None,
    predictions: Predictions | None = None, earlier: list | None = None,
) -> Gate:
    rewards = aggregate(state, feedback)
    if not rewards:
        raise RatingError(f"round {state.round} has no ratings: a gate cannot close on nothing")
    if reason == "complete" and not coverage(state, feedback.min_raters).is_complete:
        raise RatingError(f"round {state.round} is not fully rated: {coverage(state, feedback.min_raters).describe()}")
    values = [r.reward for r in rewards.values()]
    extras = selecting.gate_extras(
        selection, predictions, feedback, {rid: r.reward for rid, r in rewards.items()}, [r.id for r in state.not_sent],
        earlier,
    )
    return Gate(
        round=state.round,
        reason=reason,  # type: ignore[arg-type]
        closed_by=closed_by,
        min_raters=feedback.min_raters,
        responses_total=len(state.responses),
        responses_rewarded=len(rewards),
        rewards=rewards,
        mean_reward=round(sum(values) / len(values), 6),
        agreement=agreement(state, feedback),
        batch_sha256=state.batch_sha256,
        considered=sorted(r.id for r in state.ratings),
        **extras,
    )


@dataclass(frozen=True)
class ClosedGate:
    gate: Gate
    digest: str  # SHA-256 of the gate.json bytes: what the closer records
    replaced: bool  # a gate.json the closer had not recorded was written over


def close_gate(
    store: Store,
    paths: RunPaths,
    round_no: int,
    feedback: FeedbackSpec,
    reason: str = "complete",
    closed_by: str = "unknown",
    *,
    digests: Mapping[str, str] | None = None,
    keep: Callable[[str, str], None] | None = None,
    previous: RoundState | None = None,
    vault: sealed.PredictionsVault | None = None,
) -> ClosedGate:
    """Close a round's gate: freeze its verified ratings into gate.json, once.

    ``digests`` are the closer's own (an executor's: of its gates and its jobs'
    outputs, kept where raters cannot write). Exactly once across a crash at any
    point: ``keep(name, digest)`` stores the new gate's digest with the closer's
    digests *before* the object is written, so a gate.json whose digest it holds
    is its own -- closed now, or by an incarnation that died right after writing
    it -- and is returned as it is. One it does not hold (planted by someone
    else) is not a gate: the rating set is frozen afresh and written over it. A
    crash between keeping the digest and the write leaves no object: the round
    is closed again. The round's
    selection.json is used only when its recorded digest matches.

    With no digests (a closer that keeps none), the stored gate.json is the
    closed gate, and so is the gate another closer created first in a race.

    The rating set is listed afresh either way; ``previous`` (the caller's last
    load of the round) only spares re-reading the objects it already holds.

    ``vault``: where the job sealed the model's predictions (``feedback.predictions``; default the
    store's own key). They must match the selection's commitment; a private vault's copy is published
    into the store once the gate is written.
    """
    key = paths.gate(round_no)
    name = integrity.gate_name(paths, round_no)
    existing = _stored_bytes(store, key)
    if existing is not None and (digests is None or digests.get(name) == integrity.sha256(existing)):
        return ClosedGate(_parse_gate(store, key, existing), integrity.sha256(existing), False)
    state = load_round(store, paths, round_no, previous=previous, feedback=feedback, gate=None)
    selection = _stored_selection(store, paths, round_no) if digests is None else _recorded_selection(store, paths, round_no, digests)
    vault = vault or sealed.StoreVault(store, paths)
    predictions = sealed.unseal(vault, selection)
    earlier = recent_checks(store, paths, round_no, feedback.selection.judge_rounds) if predictions else []
    gate = build_gate(state, feedback, reason, closed_by, selection, predictions, earlier)
    data = dump_json(gate.model_dump(mode="json"))
    if digests is not None and keep is not None:
        keep(name, integrity.sha256(data))
    closed = _write_gate(store, key, existing, gate, data, digests is None)
    sealed.publish(store, paths, vault, round_no)  # the gate is closed: the predictions may be seen now
    return closed


def _write_gate(store: Store, key: str, existing: bytes | None, gate: Gate, data: bytes, first_wins: bool) -> ClosedGate:
    if existing is not None:
        store.write_bytes(key, data)
        return ClosedGate(gate, integrity.sha256(data), True)
    try:
        store.create_bytes(key, data)
    except AlreadyExists:
        if first_wins:  # another closer won the race; theirs is the frozen set
            theirs = store.read_bytes(key)
            return ClosedGate(_parse_gate(store, key, theirs), integrity.sha256(theirs), False)
        store.write_bytes(key, data)  # appeared meanwhile, and it is not ours either
        return ClosedGate(gate, integrity.sha256(data), True)
    return ClosedGate(gate, integrity.sha256(data), False)


def _stored_bytes(store: Store, key: str) -> bytes | None:
    try:
        return store.read_bytes(key)
    except NotFound:
        return None


def _parse_gate(store: Store, key: str, data: bytes) -> Gate:
    return parse_record(Gate, parse_json(data, store.describe(key)), store.describe(key))


def _stored_selection(store: Store, paths: RunPaths, round_no: int) -> Selection | None:
    return selecting.read_selection(store, paths, round_no)


def _recorded_selection(store: Store, paths: RunPaths, round_no: int, digests: Mapping[str, str]) -> Selection | None:
    """The round's selection.json, if its job reported it; one whose digest differs from the executor's is refused."""
    key = paths.selection(round_no)
    want = digests.get(integrity.relative(paths, key))
    if want is None:
        return None  # no selection (feedback.selection 'all'), or one no job of this executor reported
    try:
        data = store.read_bytes(key)
    except NotFound:
        raise integrity.IntegrityError(
            f"{store.describe(key)} is recorded but missing: refusing to close round {round_no}'s gate"
        ) from None
    if integrity.sha256(data) != want:
        raise integrity.IntegrityError(
            f"{store.describe(key)} does not match the digest its job reported: refusing to close round {round_no}'s gate"
        )
    return parse_record(Selection, parse_json(data, store.describe(key)), store.describe(key))
