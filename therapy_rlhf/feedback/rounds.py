"""Round reads: a round's batch, its ratings and its stored gate, verified against the run's rules.

* A rater's *latest* rating of a response counts (corrections supersede; a
  withdrawn rating removes the rater's judgement); nothing is ever deleted.

Reads are verified against the run's own rules (``feedback``), never against
what an object claims: a rating counts only when its rater is allowed by the
run and its criteria are exactly the run's rubric (``rewards.rule_problem``);
anything else in the ratings prefix is reported as garbage and skipped, never
fatal. Ratings stored after the gate closed are kept but marked late: they
are not in the frozen set, so they never count as gated. A stored gate.json
for another batch, or naming ratings that are not stored, is not the round's
gate.

With a roster (``feedback.raters``), a rating counts only when it is signed by
its rater's registered key (``authenticity``); one that is not is *refused*
with a named reason (``RoundState.refused``), never counted. Every usable
rating's content digest (SHA-256 of the stored bytes, ``RoundState.content``)
is what a gate freezes, so a later in-place edit is seen.

Storing a rating is ``submit``; closing a gate is ``gate``.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from therapy_rlhf.contracts.layout import RunPaths, parse_rating_key
from therapy_rlhf.contracts.signing import text_sha256
from therapy_rlhf.feedback.authenticity import Refusal, Verifier
from therapy_rlhf.contracts.records import Gate, PendingResponse, Rating, RecordError, parse_batch, parse_rating_id, parse_record, rating_id
from therapy_rlhf.feedback.rewards import base_reward, reward_disagreement, rule_problem
from therapy_rlhf.contracts.spec import FeedbackSpec
from therapy_rlhf.store.backends import AccessDenied, NotFound, Store, StoreError, parse_json

# A rating object is a few KiB (comment <= 20000 characters); a larger object in a
# ratings prefix is garbage and is not downloaded whole.
MAX_RATING_BYTES = 256 * 1024


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
    by_key: dict[str, Rating | Refusal | str] = field(default_factory=dict, repr=False)
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
    not_sent: list[PendingResponse] = field(default_factory=list)
    # Ratings that are not their rater's own (a run with a roster), and why: never counted.
    refused: list[Refusal] = field(default_factory=list)
    # Rating key -> SHA-256 of the bytes read (what a gate freezes; reused like by_key).
    digest_by_key: dict[str, str] = field(default_factory=dict, repr=False)
    # Ids of frozen ratings whose stored object changed after the gate closed: the gate's copy is used.
    changed_after_gate: list[str] = field(default_factory=list)

    def take_reads(self, fresh: RoundState) -> None:
        """Take what a later ``load_round(previous=self)`` read: its ratings, parsed records and content
        digests, keeping what this state gained meanwhile (a rating a writer stored after that read
        listed the round), so the next incremental load reads neither again."""
        known = {r.id for r in fresh.ratings}
        self.ratings = fresh.ratings + [r for r in self.ratings if r.id not in known]
        self.by_key = {**self.by_key, **fresh.by_key}
        self.digest_by_key = {**self.digest_by_key, **fresh.digest_by_key}

    @property
    def content(self) -> dict[str, str]:
        """Usable rating id -> SHA-256 of its stored bytes, as read."""
        return {v.id: self.digest_by_key[k] for k, v in self.by_key.items() if isinstance(v, Rating) and k in self.digest_by_key}

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


def _read_all(store: Store, keys: list[str]) -> list[tuple[str, object, str, StoreError | None]]:
    """(key, parsed JSON, SHA-256 of the bytes, error) of each key."""

    def fetch(key: str) -> tuple[str, object, str, StoreError | None]:
        try:
            data = store.read_limited(key, MAX_RATING_BYTES)
            return key, parse_json(data, store.describe(key)), hashlib.sha256(data).hexdigest(), None
        except StoreError as err:
            return key, None, "", err

    if len(keys) < 2:
        return [fetch(k) for k in keys]
    with ThreadPoolExecutor(min(READ_WORKERS, len(keys))) as pool:
        return list(pool.map(fetch, keys))


def run_feedback(store: Store, paths: RunPaths) -> FeedbackSpec:
    """The run's rating rules from its frozen spec (the defaults where no spec is stored)."""
    from therapy_rlhf.contracts.spec import parse_run

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
        not_sent = previous.not_sent
        known = previous.by_key
        known_digests = previous.digest_by_key
        feedback = feedback or previous.feedback
    else:
        whole, batch_errors, digest = read_batch(store, paths, round_no)
        responses = [r for r in whole if r.sent_to_experts]
        not_sent = [r for r in whole if not r.sent_to_experts]
        known, known_digests = {}, {}
    if feedback is None:  # the same run's rules, whichever round the previous load was of
        feedback = previous.feedback if previous is not None and previous.feedback else run_feedback(store, paths)
    if reuse and feedback != previous.feedback:
        known = {}  # other rules: every object is judged again
    garbage: list[str] = []
    if gate is _READ_GATE:
        gate = previous.gate if reuse and previous.gate is not None else _stored_gate(store, paths, round_no, garbage)
    prefix = paths.ratings_prefix(round_no)
    ids = {r.id: text_sha256(r.response) for r in responses}
    not_sent_ids = {r.id for r in not_sent}
    keyed: dict[str, tuple[str, str, int]] = {}
    for key in store.list(prefix):
        parsed = parse_rating_key(key[len(prefix) :])
        if parsed is None:
            garbage.append(f"{store.describe(key)}: not a rating key")
        else:
            keyed[key] = parsed
    # A rating a writer added to the state itself (no digest of its bytes yet) is read once more.
    by_key: dict[str, Rating | Refusal | str] = {
        k: known[k] for k in keyed if k in known and (k in known_digests or not isinstance(known[k], Rating))
    }
    digest_by_key = {k: known_digests[k] for k in by_key if k in known_digests}
    verifier = Verifier(feedback)
    for key, data, digest_of, error in _read_all(store, [k for k in keyed if k not in by_key]):
        by_key[key] = _check_rating(store, key, keyed[key], data, error, ids, feedback, not_sent_ids, verifier)
        if digest_of:
            digest_by_key[key] = digest_of
    # Of a closed round, the content the gate froze, where the stored object changed since.
    results, changed = by_key, []
    if isinstance(gate, Gate) and gate.frozen:
        check = lambda k, record: _check_rating(store, k, keyed[k], record, None, ids, feedback, not_sent_ids, verifier)  # noqa: E731
        results, changed = _frozen_content(gate, keyed, by_key, digest_by_key, check)
    ratings, unreadable, refused, unusable = _sorted_results(keyed, results)
    if isinstance(gate, Gate) and (problem := _implausible(gate, ratings, digest)):
        garbage.append(f"{store.describe(paths.gate(round_no))}: not this round's gate ({problem}); ignored")
        gate = None
        if changed:  # a gate that is not believed lends no content either
            ratings, unreadable, refused, unusable = _sorted_results(keyed, by_key)
            changed = []
    garbage += unusable
    state = RoundState(round_no, responses, batch_errors, ratings, garbage, digest, by_key, feedback, gate, set(), unreadable)
    state.taken = set(keyed.values())
    state.not_sent = not_sent
    state.refused, state.digest_by_key, state.changed_after_gate = refused, digest_by_key, changed
    state.late_ids = _late_ids(state.ratings, gate)  # type: ignore[arg-type]
    return state


_UNREADABLE = "unreadable: "


def _sorted_results(keyed: dict, results: dict) -> tuple[list[Rating], list[str], list[Refusal], list[str]]:
    """(usable ratings, unreadable keys, refusals, garbage lines), in listing order."""
    ratings: list[Rating] = []
    unreadable: list[str] = []
    refused: list[Refusal] = []
    garbage: list[str] = []
    for key in keyed:
        result = results[key]
        if isinstance(result, Rating):
            ratings.append(result)
        elif isinstance(result, Refusal):
            refused.append(result)
        elif result.startswith(_UNREADABLE):
            unreadable.append(key)
        else:
            garbage.append(result)
    return ratings, unreadable, refused, garbage


def _frozen_content(gate: Gate, keyed: dict[str, tuple[str, str, int]], by_key: dict, digests: dict[str, str], check):
    """``by_key`` with the gate's frozen copy of every rating whose stored bytes changed since it closed.

    Only for a key still listed (a deleted rating leaves the gate implausible),
    and only a copy that passes the same checks as a stored object (``check``:
    a signed copy must verify), so a gate.json cannot bring in a rating of its own.
    Returns (results, ids of the ratings replaced).
    """
    results, changed = dict(by_key), []
    for key, (rater, response, version) in keyed.items():
        rid = rating_id(rater, response, version)
        record = gate.frozen.get(rid)
        if record is None or digests.get(key) == gate.contents.get(rid) and isinstance(by_key.get(key), Rating):
            continue
        frozen = check(key, record)
        if isinstance(frozen, Rating):
            results[key] = frozen
            changed.append(rid)
    return results, changed


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
            rater, response, version = parse_rating_id(rid)
            frozen[(response, rater)] = version
    return {r.id for r in ratings if r.version > frozen.get((r.response_id, r.rater), 0)}


def _check_rating(
    store: Store,
    key: str,
    expected: tuple[str, str, int],
    data,
    error,
    ids: dict[str, str],
    feedback: FeedbackSpec,
    not_sent_ids: set[str] = frozenset(),  # type: ignore[assignment]
    verifier: Verifier | None = None,
) -> Rating | Refusal | str:
    """The stored rating, or why it cannot be used (unreadable, not matching its key, unknown
    response, not its rater's own, a rater or criteria the run does not allow).

    ``ids``: the batch's response id -> SHA-256 of its text."""
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
    if response_id in not_sent_ids:
        return f"{store.describe(key)}: rates {response_id!r}, which was not sent to the experts (feedback.selection)"
    if response_id not in ids:
        return f"{store.describe(key)}: rates unknown response {response_id!r}"
    refusal = (verifier or Verifier(feedback)).refusal(store.describe(key), data, rating, ids[response_id])
    if refusal is not None:
        return refusal
    problem = rule_problem(rating, feedback)
    if problem:
        return f"{store.describe(key)}: {problem}"
    return rating


def usable_latest(state: RoundState, feedback: FeedbackSpec) -> dict[tuple[str, str], Rating]:
    """``state.latest()`` restricted to what ``feedback`` can reward (never raises)."""
    return {
        k: r for k, r in state.latest().items() if rule_problem(r, feedback) is None and base_reward(r, feedback) is not None
    }


def changed_after_gate(store: Store, paths: RunPaths, round_no: int, gate: Gate) -> list[str]:
    """Ids of the ratings the gate's rewards name whose stored bytes are no longer what it froze
    (missing or unreadable ones too); gates written before ``contents`` existed name none."""
    named = sorted({rid for reward in gate.rewards.values() for rid in reward.ratings if rid in gate.contents})
    out = []
    for rid in named:
        try:
            data = store.read_limited(paths.rating(round_no, *parse_rating_id(rid)), MAX_RATING_BYTES)
        except (StoreError, ValueError):
            out.append(rid)
            continue
        if hashlib.sha256(data).hexdigest() != gate.contents[rid]:
            out.append(rid)
    return out


def read_gate(store: Store, paths: RunPaths, round_no: int) -> Gate | None:
    try:
        data = store.read_json(paths.gate(round_no))
    except NotFound:
        return None
    return parse_record(Gate, data, store.describe(paths.gate(round_no)))
