"""The rating rules and the gate: the one place that turns ratings into rewards.

* A rater's *latest* rating of a response counts (corrections supersede; a
  withdrawn rating removes the rater's judgement); nothing is ever deleted.
* A response's reward is the mean over distinct raters of their latest
  reward, each lowered by ``feedback.safetyPenalty`` when it carries a
  penalised flag (clamped to 0..1).
* A round's gate closes when every response has ``feedback.minRaters``
  distinct raters (or on an override / deadline); closing writes ``gate.json``
  with a conditional create, freezing exactly the ratings the update uses.
"""

from __future__ import annotations

import hashlib
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable

from therapy_rlhf import names
from therapy_rlhf.layout import RunPaths, parse_rating_key
from therapy_rlhf.records import (
    Gate,
    PendingResponse,
    Rating,
    RecordError,
    ResponseReward,
    parse_batch,
    parse_record,
    rating_id,
)
from therapy_rlhf.spec import FeedbackSpec
from therapy_rlhf.store import AlreadyExists, NotFound, Store, StoreError


class RatingError(ValueError):
    """A rating that may not be stored; the message is one line naming the problem."""


# ------------------------------------------------------------------ rewards


def level_value(level: int, feedback: FeedbackSpec) -> float:
    """Number key ``level`` (0..scaleLevels-1) as a 0..1 score."""
    top = feedback.scale_levels - 1
    if not 0 <= level <= top:
        raise RatingError(f"score level {level} is outside 0..{top}")
    return round(level / top, 6)


def compute_reward(criteria: dict[str, float], feedback: FeedbackSpec) -> float | None:
    """The reward the spec's rule gives for these criterion scores (None for 'direct')."""
    if feedback.reward_rule == "direct":
        return None
    scored = [(c, criteria[c.name]) for c in feedback.rubric if c.name in criteria]
    if len(scored) < len(feedback.rubric):
        return None
    if feedback.reward_rule == "minimum":
        return min(s for _, s in scored)
    total = sum(c.weight for c, _ in scored)
    return round(sum(c.weight * s for c, s in scored) / total, 6)


def effective_reward(rating: Rating, feedback: FeedbackSpec) -> tuple[float, bool]:
    """(reward after the safety penalty, whether the penalty applied)."""
    base = rating.reward if rating.reward is not None else compute_reward(rating.criteria, feedback)
    if base is None:
        raise RatingError(f"rating {rating.id} has no reward and incomplete criteria")
    penalized = any(f in feedback.penalized_flags for f in rating.flags)
    value = base - feedback.safety_penalty if penalized else base
    return min(1.0, max(0.0, value)), penalized


def validate_rating(rating: Rating, feedback: FeedbackSpec, response_ids: Iterable[str]) -> None:
    """Check a rating against the run's rubric, raters and batch (raises RatingError)."""
    if rating.response_id not in set(response_ids):
        raise RatingError(f"response {rating.response_id!r} does not exist in this round's batch")
    if feedback.allowed_raters and rating.rater not in feedback.allowed_raters:
        raise RatingError(
            f"rater {rating.rater!r} is not in feedback.allowedRaters {feedback.allowed_raters}"
        )
    if rating.withdrawn:
        return
    known = {c.name for c in feedback.rubric}
    unknown = sorted(set(rating.criteria) - known)
    if unknown:
        raise RatingError(f"unknown rubric criteria {unknown}; the rubric has {sorted(known)}")
    if feedback.reward_rule == "direct":
        if rating.reward is None:
            raise RatingError("this run's rewardRule is 'direct': the rating needs a reward in 0..1")
        return
    expected = compute_reward(rating.criteria, feedback)
    if expected is None:
        missing = sorted(known - set(rating.criteria))
        raise RatingError(f"criteria {missing} are not scored")
    if rating.reward is not None and abs(rating.reward - expected) > 1e-6:
        raise RatingError(
            f"reward {rating.reward} does not match the {feedback.reward_rule} of the criteria ({expected})"
        )


# -------------------------------------------------------------- round state


@dataclass
class RoundState:
    """Everything stored for one round, read once."""

    round: int
    responses: list[PendingResponse]
    batch_errors: list[str]
    ratings: list[Rating]
    garbage: list[str] = field(default_factory=list)
    batch_sha256: str = ""
    # Rating key -> its parsed record, or why it is garbage: what a later
    # load_round(previous=this) need not read again (stored objects never change).
    by_key: dict[str, Rating | str] = field(default_factory=dict, repr=False)

    @property
    def response_ids(self) -> list[str]:
        return [r.id for r in self.responses]

    def latest(self) -> dict[tuple[str, str], Rating]:
        """(response_id, rater) -> that rater's newest rating, withdrawn ones dropped."""
        newest: dict[tuple[str, str], Rating] = {}
        for r in self.ratings:
            key = (r.response_id, r.rater)
            if key not in newest or r.version > newest[key].version:
                newest[key] = r
        return {k: v for k, v in newest.items() if not v.withdrawn}

    def raters_by_response(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {rid: set() for rid in self.response_ids}
        for resp, rater in self.latest():
            if resp in out:
                out[resp].add(rater)
        return out

    def next_version(self, rater: str, response_id: str) -> int:
        versions = [r.version for r in self.ratings if r.rater == rater and r.response_id == response_id]
        return max(versions, default=0) + 1


def read_batch(store: Store, paths: RunPaths, round_no: int) -> tuple[list[PendingResponse], list[str], str]:
    data = store.read_bytes(paths.batch(round_no))
    responses, errors = parse_batch(data.decode("utf-8", errors="replace"), store.describe(paths.batch(round_no)))
    return responses, errors, hashlib.sha256(data).hexdigest()


# Rating objects are small and many (responses x raters x versions) and on S3
# each is one GET, so a round's ratings are fetched concurrently to keep a gate
# poll short (below botocore's default pool of 10 connections).
READ_WORKERS = 8


def _read_all(store: Store, keys: list[str]) -> list[tuple[str, object, StoreError | None]]:
    def fetch(key: str) -> tuple[str, object, StoreError | None]:
        try:
            return key, store.read_json(key), None
        except StoreError as err:
            return key, None, err

    if len(keys) < 2:
        return [fetch(k) for k in keys]
    with ThreadPoolExecutor(min(READ_WORKERS, len(keys))) as pool:
        return list(pool.map(fetch, keys))


def load_round(store: Store, paths: RunPaths, round_no: int, previous: RoundState | None = None) -> RoundState:
    """Read a round's batch and every rating object; garbage is reported, not trusted.

    With ``previous`` (an earlier load of the same round) only what is new is
    read: the batch and every rating object are written once and never
    changed, so a poll costs one LIST plus one GET per new rating.
    """
    if previous is not None and previous.round == round_no and previous.batch_sha256:
        responses, batch_errors, digest = previous.responses, previous.batch_errors, previous.batch_sha256
        known = previous.by_key
    else:
        responses, batch_errors, digest = read_batch(store, paths, round_no)
        known = {}
    prefix = paths.ratings_prefix(round_no)
    ids = {r.id for r in responses}
    keyed: dict[str, tuple[str, str, int]] = {}
    garbage: list[str] = []
    for key in store.list(prefix):
        parsed = parse_rating_key(key[len(prefix) :])
        if parsed is None:
            garbage.append(f"{store.describe(key)}: not a rating key")
        else:
            keyed[key] = parsed
    by_key: dict[str, Rating | str] = {k: known[k] for k in keyed if k in known}
    for key, data, error in _read_all(store, [k for k in keyed if k not in known]):
        by_key[key] = _check_rating(store, key, keyed[key], data, error, ids)
    ratings: list[Rating] = []
    for key in keyed:  # listing order, as before
        result = by_key[key]
        if isinstance(result, Rating):
            ratings.append(result)
        else:
            garbage.append(result)
    return RoundState(round_no, responses, batch_errors, ratings, garbage, digest, by_key)


def _check_rating(store: Store, key: str, expected: tuple[str, str, int], data, error, ids: set[str]) -> Rating | str:
    """The stored rating, or why it is garbage (unreadable, not matching its key, unknown response)."""
    rater, response_id, version = expected
    try:
        if error is not None:
            raise error
        rating = parse_record(Rating, data, store.describe(key))
    except (RecordError, StoreError) as err:
        return str(err)
    if (rating.rater, rating.response_id, rating.version) != (rater, response_id, version):
        return f"{store.describe(key)}: record does not match its key"
    if response_id not in ids:
        return f"{store.describe(key)}: rates unknown response {response_id!r}"
    return rating


def submit_rating(
    store: Store,
    paths: RunPaths,
    state: RoundState,
    rating: Rating,
    feedback: FeedbackSpec,
    *,
    attempts: int = 5,
) -> Rating:
    """Store a rating as a new object (first rating, correction or withdrawal).

    The version is chosen after the rater's existing ones; if another writer
    (a second window) takes that key first, the rating is re-based on top of it
    and becomes a correction, so neither judgement is lost.
    """
    validate_rating(rating, feedback, state.response_ids)
    for _ in range(attempts):
        version = state.next_version(rating.rater, rating.response_id)
        prior = rating_id(rating.rater, rating.response_id, version - 1) if version > 1 else None
        record = rating.model_copy(update={"version": version, "supersedes": prior})
        try:
            store.create_json(
                paths.rating(state.round, rating.rater, rating.response_id, version),
                record.model_dump(mode="json"),
            )
        except AlreadyExists:
            fresh = load_round(store, paths, state.round, previous=state)
            state.ratings, state.by_key = fresh.ratings, fresh.by_key
            continue
        state.ratings.append(record)
        return record
    raise RatingError(f"could not store rating of {rating.response_id}: too many concurrent writers")


# ----------------------------------------------------------- coverage, gate


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
    for (resp, _rater), rating in sorted(state.latest().items()):
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


def agreement(state: RoundState, feedback: FeedbackSpec) -> float | None:
    """Krippendorff's alpha (interval) over rewards, when two raters overlap."""
    latest = state.latest()
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
    if overlapping == 0 or len(values) < 2:
        return None
    import krippendorff

    alpha = krippendorff.alpha(reliability_data=matrix, level_of_measurement="interval")
    return None if math.isnan(alpha) else round(float(alpha), 4)


def build_gate(state: RoundState, feedback: FeedbackSpec, reason: str, closed_by: str) -> Gate:
    rewards = aggregate(state, feedback)
    if not rewards:
        raise RatingError(f"round {state.round} has no ratings: a gate cannot close on nothing")
    if reason == "complete" and not coverage(state, feedback.min_raters).is_complete:
        raise RatingError(f"round {state.round} is not fully rated: {coverage(state, feedback.min_raters).describe()}")
    values = [r.reward for r in rewards.values()]
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
    )


def read_gate(store: Store, paths: RunPaths, round_no: int) -> Gate | None:
    try:
        data = store.read_json(paths.gate(round_no))
    except NotFound:
        return None
    return parse_record(Gate, data, store.describe(paths.gate(round_no)))


def close_gate(
    store: Store,
    paths: RunPaths,
    round_no: int,
    feedback: FeedbackSpec,
    reason: str = "complete",
    closed_by: str = "unknown",
    previous: RoundState | None = None,
) -> Gate:
    """Write gate.json once (conditional create); an existing gate is returned as is.

    The rating set is listed afresh either way; ``previous`` (the caller's last
    load of the round) only spares re-reading the objects it already holds.
    """
    existing = read_gate(store, paths, round_no)
    if existing is not None:
        return existing
    gate = build_gate(load_round(store, paths, round_no, previous=previous), feedback, reason, closed_by)
    try:
        store.create_json(paths.gate(round_no), gate.model_dump(mode="json"))
    except AlreadyExists:
        # Another closer won the race; theirs is the frozen set.
        return read_gate(store, paths, round_no)  # type: ignore[return-value]
    return gate


def check_rater(rater: str, feedback: FeedbackSpec) -> str:
    """Validate a rater id and that the run allows it (one-line errors)."""
    try:
        names.rater_id(rater)
    except names.InvalidName as err:
        raise RatingError(str(err)) from None
    if feedback.allowed_raters and rater not in feedback.allowed_raters:
        raise RatingError(f"rater {rater!r} is not in feedback.allowedRaters {feedback.allowed_raters}")
    return rater
