"""The rating rules and the gate: the one place that turns ratings into rewards.

* A rater's *latest* rating of a response counts (corrections supersede; a
  withdrawn rating removes the rater's judgement); nothing is ever deleted.
* A response's reward is the mean over distinct raters of their latest
  reward, each lowered by ``feedback.safetyPenalty`` when it carries a
  penalised flag (clamped to 0..1).
* A round's gate closes when every response has ``feedback.minRaters``
  distinct raters (or on an override / deadline); closing writes ``gate.json``
  with a conditional create, freezing exactly the ratings the update uses.

Reads are verified against the run's own rules (``feedback``), never against
what an object claims: a rating counts only when its rater is allowed by the
run and its criteria are exactly the run's rubric; its reward is recomputed
from the criteria (a stored reward that disagrees is reported, not used);
anything else in the ratings prefix is reported as garbage and skipped, never
fatal. Ratings stored after the gate closed are kept but marked late: they
are not in the frozen set, so they never count as gated.
"""

from __future__ import annotations

import hashlib
import math
import uuid
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
from therapy_rlhf.store import AccessDenied, AlreadyExists, NotFound, Store, StoreError, StoreUnavailable

# A rating object is a few KiB (comment <= 20000 characters); a larger object in a
# ratings prefix is garbage and is not downloaded whole.
MAX_RATING_BYTES = 256 * 1024


class RatingError(ValueError):
    """A rating that may not be stored; the message is one line naming the problem."""


# ------------------------------------------------------------------ rewards


def level_value(level: int, feedback: FeedbackSpec) -> float:
    """Number key ``level`` (0..scaleLevels-1) as a 0..1 score."""
    top = feedback.scale_levels - 1
    if not 0 <= level <= top:
        raise RatingError(f"score level {level} is outside 0..{top}")
    return round(level / top, 6)


def compute_reward(
    criteria: dict[str, float], feedback: FeedbackSpec, not_applicable: Iterable[str] = ()
) -> float | None:
    """The reward the spec's rule gives for these criterion scores (None for 'direct').

    Criteria marked not applicable are left out: the weighted mean (or the
    minimum) is over the criteria that apply; None while one of those is
    unscored, or when none applies.
    """
    if feedback.reward_rule == "direct":
        return None
    skipped = set(not_applicable)
    applicable = [c for c in feedback.rubric if c.name not in skipped]
    scored = [(c, criteria[c.name]) for c in applicable if c.name in criteria]
    if not applicable or len(scored) < len(applicable):
        return None
    if feedback.reward_rule == "minimum":
        return min(s for _, s in scored)
    total = sum(c.weight for c, _ in scored)
    return round(sum(c.weight * s for c, s in scored) / total, 6)


def base_reward(rating: Rating, feedback: FeedbackSpec) -> float | None:
    """The reward the run's rule gives this rating, before the safety penalty (None: cannot be used).

    Under 'weighted-mean' and 'minimum' it is recomputed from the criteria: the
    stored ``reward`` is the client's arithmetic and is never trusted. Only the
    'direct' rule takes the rater's own reward.
    """
    if feedback.reward_rule == "direct":
        return rating.reward
    if (set(rating.criteria) | set(rating.not_applicable)) - {c.name for c in feedback.rubric}:
        return None
    return compute_reward(rating.criteria, feedback, rating.not_applicable)


def effective_reward(rating: Rating, feedback: FeedbackSpec) -> tuple[float, bool]:
    """(reward after the safety penalty, whether the penalty applied)."""
    base = base_reward(rating, feedback)
    if base is None:
        raise RatingError(f"rating {rating.id} has no usable reward under this run's rubric")
    penalized = any(f in feedback.penalized_flags for f in rating.flags)
    value = base - feedback.safety_penalty if penalized else base
    return min(1.0, max(0.0, value)), penalized


def validate_rating(rating: Rating, feedback: FeedbackSpec, response_ids: Iterable[str]) -> None:
    """Check a rating against the run's rubric, raters and batch (raises RatingError)."""
    if rating.response_id not in set(response_ids):
        raise RatingError(f"response {rating.response_id!r} does not exist in this round's batch")
    problem = rule_problem(rating, feedback)
    if problem:
        raise RatingError(problem)
    if rating.withdrawn or feedback.reward_rule == "direct":
        return
    expected = compute_reward(rating.criteria, feedback, rating.not_applicable)
    if rating.reward is not None and abs(rating.reward - expected) > 1e-6:  # type: ignore[operator]
        raise RatingError(
            f"reward {rating.reward} does not match the {feedback.reward_rule} of the criteria ({expected})"
        )


def rule_problem(rating: Rating, feedback: FeedbackSpec) -> str | None:
    """Why the run's rules cannot use this rating (rater not allowed, criteria not the rubric), or None."""
    if feedback.allowed_raters and rating.rater not in feedback.allowed_raters:
        return f"rater {rating.rater!r} is not in feedback.allowedRaters {feedback.allowed_raters}"
    if rating.withdrawn:
        return None
    known = {c.name for c in feedback.rubric}
    unknown = sorted((set(rating.criteria) | set(rating.not_applicable) | set(rating.notes)) - known)
    if unknown:
        return f"unknown rubric criteria {names.quote(unknown)}; the rubric has {sorted(known)}"
    problem = _not_applicable_problem(rating, feedback)
    if problem:
        return problem
    if feedback.reward_rule == "direct":
        if rating.reward is None:
            return "this run's rewardRule is 'direct': the rating needs a reward in 0..1"
        return None
    if compute_reward(rating.criteria, feedback, rating.not_applicable) is None:
        missing = sorted(known - set(rating.criteria) - set(rating.not_applicable))
        return f"criteria {missing} are not scored"
    return None


def _not_applicable_problem(rating: Rating, feedback: FeedbackSpec) -> str | None:
    """'Not applicable' only where the rubric allows it, never with a score, never for every criterion."""
    marked = set(rating.not_applicable)
    both = sorted(marked & set(rating.criteria))
    if both:
        return f"criteria {both} are both scored and marked not applicable"
    fixed = sorted(c.name for c in feedback.rubric if c.name in marked and not c.allow_not_applicable)
    if fixed:
        return f"criteria {fixed} always apply in this run and cannot be marked not applicable"
    if feedback.reward_rule != "direct" and marked >= {c.name for c in feedback.rubric}:
        return "every criterion is marked not applicable: score at least one"
    return None


def reward_disagreement(rating: Rating, feedback: FeedbackSpec) -> str | None:
    """A note when the stored reward is not what the criteria give (the stored one is not used)."""
    if rating.withdrawn or rating.reward is None or feedback.reward_rule == "direct":
        return None
    expected = compute_reward(rating.criteria, feedback, rating.not_applicable)
    if expected is None or abs(rating.reward - expected) <= 1e-6:
        return None
    return (
        f"rating {rating.id} stores reward {rating.reward}, but its criteria give {expected} "
        f"({feedback.reward_rule}): {expected} is used"
    )


# -------------------------------------------------------------- round state

# ``load_round``'s default for ``gate``: read the round's gate.json from the store.
_READ_GATE: object = object()


@dataclass
class RoundState:
    """Everything stored for one round, read once and checked against the run's rules."""

    round: int
    responses: list[PendingResponse]
    batch_errors: list[str]
    # Every usable rating object (late ones included; see ``late_ids``).
    ratings: list[Rating]
    # Objects in the ratings prefix that are not usable ratings, and why.
    garbage: list[str] = field(default_factory=list)
    batch_sha256: str = ""
    # Rating key -> its parsed record, or why it is garbage: what a later
    # load_round(previous=this) need not read again (stored objects never change).
    by_key: dict[str, Rating | str] = field(default_factory=dict, repr=False)
    # The rules the ratings were checked against (the run's frozen feedback spec).
    feedback: FeedbackSpec | None = field(default=None, repr=False)
    # The gate the round closed with, if any: ratings it did not freeze are late.
    gate: Gate | None = field(default=None, repr=False)
    # Ids of ratings stored after the gate closed: kept and shown, never counted as gated.
    late_ids: set[str] = field(default_factory=set)
    # Rating objects this credential may not read (a rater's view of other raters' ratings).
    unreadable: list[str] = field(default_factory=list)
    # (rater, response, version) of every rating key listed, usable or not: a new
    # version goes after all of them, so a garbage object never blocks a key.
    taken: set[tuple[str, str, int]] = field(default_factory=set, repr=False)
    # Responses of the batch that feedback.selection did not send to the experts: never
    # shown to raters, never rateable, rewarded (if at all) by the reward model.
    model_only: list[PendingResponse] = field(default_factory=list)

    @property
    def response_ids(self) -> list[str]:
        return [r.id for r in self.responses]

    @property
    def late(self) -> list[Rating]:
        return [r for r in self.ratings if r.id in self.late_ids]

    def reward_disagreements(self) -> list[str]:
        """Stored rewards that are not what the criteria give under the run's rule (not used)."""
        fb = self.feedback or FeedbackSpec()
        return [note for r in self.ratings if (note := reward_disagreement(r, fb))]

    def latest(self, include_late: bool = False) -> dict[tuple[str, str], Rating]:
        """(response_id, rater) -> that rater's newest rating, withdrawn ones dropped.

        Late ratings are left out unless asked for: for a closed round this is
        exactly the frozen set the gate rewards.
        """
        newest: dict[tuple[str, str], Rating] = {}
        for r in self.ratings:
            if r.id in self.late_ids and not include_late:
                continue
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
        versions += [v for who, resp, v in self.taken if (who, resp) == (rater, response_id)]
        return max(versions, default=0) + 1

    def find_submission(self, rating: Rating) -> Rating | None:
        """The stored rating carrying this rating's submission id, if there is one."""
        if rating.submission_id is None:
            return None
        for r in self.ratings:
            if r.submission_id == rating.submission_id and (r.rater, r.response_id) == (rating.rater, rating.response_id):
                return r
        return None


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
            return key, store.read_json(key, limit=MAX_RATING_BYTES), None
        except StoreError as err:
            return key, None, err

    if len(keys) < 2:
        return [fetch(k) for k in keys]
    with ThreadPoolExecutor(min(READ_WORKERS, len(keys))) as pool:
        return list(pool.map(fetch, keys))


def run_feedback(store: Store, paths: RunPaths) -> FeedbackSpec:
    """The run's rating rules from its frozen spec (the defaults where no spec is stored)."""
    from therapy_rlhf.spec import parse_run

    try:
        return parse_run(store.read_json(paths.spec()), store.describe(paths.spec())).spec.feedback
    except NotFound:
        return FeedbackSpec()


def load_round(
    store: Store,
    paths: RunPaths,
    round_no: int,
    previous: RoundState | None = None,
    *,
    feedback: FeedbackSpec | None = None,
    gate: Gate | None | object = _READ_GATE,
) -> RoundState:
    """Read a round's batch and every rating object; garbage is reported, not trusted.

    With ``previous`` (an earlier load of the same round) only what is new is
    read: the batch and every rating object are written once and never
    changed, so a poll costs one LIST plus one GET per new rating.

    ``feedback`` is the run's rules (default: the frozen spec's, or the
    previous load's). ``gate`` is the gate that decides which ratings are late:
    by default the round's gate.json; an executor passes the gate it trusts
    (None while it has closed none).
    """
    reuse = previous is not None and previous.round == round_no and previous.batch_sha256
    if reuse:
        responses, batch_errors, digest = previous.responses, previous.batch_errors, previous.batch_sha256
        model_only = previous.model_only
        known = previous.by_key
        feedback = feedback or previous.feedback
    else:
        whole, batch_errors, digest = read_batch(store, paths, round_no)
        responses = [r for r in whole if r.expert]
        model_only = [r for r in whole if not r.expert]
        known = {}
    if feedback is None:  # the same run's rules, whichever round the previous load was of
        feedback = previous.feedback if previous is not None and previous.feedback else run_feedback(store, paths)
    if reuse and feedback != previous.feedback:
        known = {}  # other rules: every object is judged again
    garbage: list[str] = []
    if gate is _READ_GATE:
        gate = previous.gate if reuse and previous.gate is not None else _stored_gate(store, paths, round_no, garbage)
    prefix = paths.ratings_prefix(round_no)
    ids = {r.id for r in responses}
    hidden = {r.id for r in model_only}
    keyed: dict[str, tuple[str, str, int]] = {}
    for key in store.list(prefix):
        parsed = parse_rating_key(key[len(prefix) :])
        if parsed is None:
            garbage.append(f"{store.describe(key)}: not a rating key")
        else:
            keyed[key] = parsed
    by_key: dict[str, Rating | str] = {k: known[k] for k in keyed if k in known}
    for key, data, error in _read_all(store, [k for k in keyed if k not in known]):
        by_key[key] = _check_rating(store, key, keyed[key], data, error, ids, feedback, hidden)
    ratings: list[Rating] = []
    unreadable: list[str] = []
    for key in keyed:  # listing order, as before
        result = by_key[key]
        if isinstance(result, Rating):
            ratings.append(result)
        elif result.startswith(_UNREADABLE):
            unreadable.append(key)
        else:
            garbage.append(result)
    if isinstance(gate, Gate) and (problem := _implausible(gate, ratings, digest)):
        garbage.append(f"{store.describe(paths.gate(round_no))}: not this round's gate ({problem}); ignored")
        gate = None
    state = RoundState(round_no, responses, batch_errors, ratings, garbage, digest, by_key, feedback, gate, set(), unreadable)
    state.taken = set(keyed.values())
    state.model_only = model_only
    state.late_ids = _late_ids(state.ratings, gate)  # type: ignore[arg-type]
    return state


_UNREADABLE = "unreadable: "


def _stored_gate(store: Store, paths: RunPaths, round_no: int, garbage: list[str]) -> Gate | None:
    # exists() first: a HEAD, so a poll of an open round reads nothing it need not.
    try:
        if not store.exists(paths.gate(round_no)):
            return None
        return read_gate(store, paths, round_no)
    except (RecordError, StoreError) as err:
        garbage.append(str(err))
        return None


def _implausible(gate: Gate, ratings: list[Rating], batch_sha256: str) -> str | None:
    """Why a stored gate.json cannot be the gate of these ratings (a forged one), or None.

    Readers that hold no executor record (status, export, the TUI) still refuse
    a gate for another batch or one naming ratings that are not stored.
    """
    if gate.batch_sha256 != batch_sha256:
        return "it froze another batch"
    stored = {r.id for r in ratings}
    named = {rid for reward in gate.rewards.values() for rid in reward.ratings}
    missing = sorted(named - stored)
    if missing:
        return f"it names {len(missing)} rating(s) that are not stored, e.g. {missing[0]}"
    return None


def _late_ids(ratings: list[Rating], gate: Gate | None) -> set[str]:
    """Ratings the gate did not see when it closed."""
    if gate is None:
        return set()
    if gate.considered is not None:
        seen = set(gate.considered)
        return {r.id for r in ratings if r.id not in seen}
    # A gate written before ``considered`` existed: what it froze, and anything
    # older of the same rater and response, was there; newer versions are late.
    frozen: dict[tuple[str, str], int] = {}
    for reward in gate.rewards.values():
        for rid in reward.ratings:
            rater, response, version = rid.rsplit("/", 2)
            frozen[(response, rater)] = int(version.lstrip("v"))
    return {r.id for r in ratings if r.version > frozen.get((r.response_id, r.rater), 0)}


def _check_rating(
    store: Store,
    key: str,
    expected: tuple[str, str, int],
    data,
    error,
    ids: set[str],
    feedback: FeedbackSpec,
    hidden: set[str] = frozenset(),  # type: ignore[assignment]
) -> Rating | str:
    """The stored rating, or why it cannot be used (unreadable, not matching its key, unknown
    response, a rater or criteria the run does not allow)."""
    rater, response_id, version = expected
    if isinstance(error, AccessDenied):
        return _UNREADABLE + str(error)
    try:
        if error is not None:
            raise error
        rating = parse_record(Rating, data, store.describe(key))
    except (RecordError, StoreError) as err:
        return str(err)
    if (rating.rater, rating.response_id, rating.version) != (rater, response_id, version):
        return f"{store.describe(key)}: record does not match its key"
    if response_id in hidden:
        return f"{store.describe(key)}: rates {response_id!r}, which was not sent to the experts (feedback.selection)"
    if response_id not in ids:
        return f"{store.describe(key)}: rates unknown response {response_id!r}"
    problem = rule_problem(rating, feedback)
    if problem:
        return f"{store.describe(key)}: {problem}"
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
    """Store a rating as a new object (first rating, correction or withdrawal), exactly once.

    The version is chosen after the rater's existing ones; if another writer
    (a second window) takes that key first, the rating is re-based on top of it
    and becomes a correction, so neither judgement is lost.

    Exactly once: the rating carries a ``submission_id`` (filled in here, on
    the caller's object, when it has none, so the caller's own retry reuses
    it). A write whose answer was lost (a 5xx or a reset after S3 stored the
    object, then a retried conditional PUT answering 412) is recognised by
    reading the key back: an object with the same submission id and content is
    this submission, and it is returned instead of a second version.
    """
    validate_rating(rating, feedback, state.response_ids)
    gate = state.gate if state.gate is not None else _stored_gate(store, paths, state.round, [])
    if gate is not None and _implausible(gate, state.ratings, state.batch_sha256) is None:
        raise RatingError(
            f"round {state.round}'s gate is closed: the update uses the ratings it froze, "
            "so a rating stored now would never be used"
        )
    if rating.submission_id is None:
        rating.submission_id = uuid.uuid4().hex
    own = state.find_submission(rating)
    if own is not None:
        _check_same(own, rating)
        return own
    for _ in range(attempts):
        version = state.next_version(rating.rater, rating.response_id)
        prior = rating_id(rating.rater, rating.response_id, version - 1) if version > 1 else None
        record = rating.model_copy(update={"version": version, "supersedes": prior})
        key = paths.rating(state.round, rating.rater, rating.response_id, version)
        try:
            store.create_json(key, record.model_dump(mode="json"))
        except AlreadyExists:
            stored = _own_object(store, key, record)
            if stored is not None:
                state.ratings.append(stored)
                return stored
            fresh = load_round(store, paths, state.round, previous=state, feedback=feedback, gate=state.gate)
            state.ratings, state.by_key, state.taken = fresh.ratings, fresh.by_key, fresh.taken
            continue
        except AccessDenied:
            raise  # this credential may not write here: retrying changes nothing
        except StoreUnavailable:
            # Ambiguous: the object may be stored although the answer never came.
            # If it is, this submission is done; if not (or the store cannot say),
            # the failure is the caller's to retry -- with the same submission id.
            stored = _own_object(store, key, record, quiet=True)
            if stored is not None:
                state.ratings.append(stored)
                return stored
            raise
        state.ratings.append(record)
        return record
    raise RatingError(f"could not store rating of {rating.response_id}: too many concurrent writers")


def _same_submission(a: Rating, b: Rating) -> bool:
    """The same submission: everything the client chose is equal (version and supersedes are ours)."""
    ignore = {"version", "supersedes"}
    return a.model_dump(mode="json", exclude=ignore) == b.model_dump(mode="json", exclude=ignore)


def _check_same(stored: Rating, rating: Rating) -> None:
    if not _same_submission(stored, rating):
        raise RatingError(
            f"submission {rating.submission_id} of {rating.response_id} is already stored as {stored.id} "
            "with other content; a new judgement needs a new submission id"
        )


def _own_object(store: Store, key: str, record: Rating, quiet: bool = False) -> Rating | None:
    """The object at ``key`` when it is this submission (a write whose answer was lost), else None."""
    try:
        stored = parse_record(Rating, store.read_json(key, limit=MAX_RATING_BYTES), store.describe(key))
    except RecordError:
        return None  # garbage at the key: not ours (the next version goes after it)
    except StoreError:
        if quiet:
            return None
        raise
    if stored.submission_id != record.submission_id:
        return None
    _check_same(stored, record)
    return stored


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


def usable_latest(state: RoundState, feedback: FeedbackSpec) -> dict[tuple[str, str], Rating]:
    """``state.latest()`` restricted to what ``feedback`` can reward (never raises)."""
    return {
        k: r for k, r in state.latest().items() if rule_problem(r, feedback) is None and base_reward(r, feedback) is not None
    }


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
    state: RoundState, feedback: FeedbackSpec, reason: str, closed_by: str, selection: "Selection | None" = None
) -> Gate:
    rewards = aggregate(state, feedback)
    if not rewards:
        raise RatingError(f"round {state.round} has no ratings: a gate cannot close on nothing")
    if reason == "complete" and not coverage(state, feedback.min_raters).is_complete:
        raise RatingError(f"round {state.round} is not fully rated: {coverage(state, feedback.min_raters).describe()}")
    values = [r.reward for r in rewards.values()]
    from therapy_rlhf import selection as selecting  # selection reads rounds through this module

    extras = selecting.gate_extras(
        selection, feedback, {rid: r.reward for rid, r in rewards.items()}, [r.id for r in state.model_only]
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
    state = load_round(store, paths, round_no, previous=previous, feedback=feedback, gate=None)
    from therapy_rlhf.selection import read_selection

    gate = build_gate(state, feedback, reason, closed_by, read_selection(store, paths, round_no))
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
