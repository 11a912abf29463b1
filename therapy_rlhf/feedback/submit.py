"""Storing a rating: a new object per judgement (first rating, correction, withdrawal), exactly once.

A rating is checked against the run's rules (``rewards.validate_rating``) and
refused once the round's gate is closed (a rating stored then would never be
used). Ratings are created with a conditional write: an existing key is never
overwritten, and a lost answer is recognised by the rating's submission id.

Every record carries the SHA-256 of the response text it judges and, given a
``signer`` (``rater_keys.Signer``), the rater's signature over the whole record,
taken once its version is chosen. A run that registers rater keys
(``feedback.raters``) refuses an unsigned rating here, before anything is stored.
"""

from __future__ import annotations

import hashlib
import uuid

from therapy_rlhf.contracts.signing import text_sha256
from therapy_rlhf.feedback.rater_keys import Signer
from therapy_rlhf.feedback.rewards import RatingError, validate_rating
from therapy_rlhf.feedback.rounds import MAX_RATING_BYTES, RoundState, _implausible, _stored_gate, load_round
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.contracts.records import Rating, RecordError, parse_record, rating_id
from therapy_rlhf.contracts.spec import FeedbackSpec
from therapy_rlhf.store.backends import AccessDenied, AlreadyExists, Store, StoreError, StoreUnavailable, dump_json


def submit_rating(
    store: Store,
    paths: RunPaths,
    state: RoundState,
    rating: Rating,
    feedback: FeedbackSpec,
    *,
    attempts: int = 5,
    signer: Signer | None = None,
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
    _check_signer(rating, feedback, signer)
    if rating.submission_id is None:
        rating.submission_id = uuid.uuid4().hex
    if rating.response_sha256 is None:
        rating.response_sha256 = next(text_sha256(r.response) for r in state.responses if r.id == rating.response_id)
    own = state.find_submission(rating)
    if own is not None:
        _check_same(own, rating)
        return own
    for _ in range(attempts):
        version = state.next_version(rating.rater, rating.response_id)
        prior = rating_id(rating.rater, rating.response_id, version - 1) if version > 1 else None
        record = rating.model_copy(update={"version": version, "supersedes": prior, "signature": None})
        if signer is not None:
            record.signature = signer.sign(record.model_dump(mode="json"))
        key = paths.rating(state.round, rating.rater, rating.response_id, version)
        try:
            data = dump_json(record.model_dump(mode="json"))
            store.create_bytes(key, data)
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
        # Known by key with its content digest: a later poll of this state never reads it back.
        state.by_key[key], state.digest_by_key[key] = record, hashlib.sha256(data).hexdigest()
        return record
    raise RatingError(f"could not store rating of {rating.response_id}: too many concurrent writers")


def _check_signer(rating: Rating, feedback: FeedbackSpec, signer: Signer | None) -> None:
    """A run with a roster takes only ratings signed by the key it registers for the rating's rater."""
    registered = feedback.rater_keys
    if signer is not None and signer.rater != rating.rater:
        raise RatingError(f"{signer.rater!r}'s key cannot sign a rating by {rating.rater!r}")
    if not registered:
        return
    if signer is None:
        raise RatingError(
            f"this run accepts only signed ratings (feedback.raters): {rating.rater!r} needs their key "
            f"(`therapy-rlhf rater-key init --rater {rating.rater}`, registered for the run)"
        )
    if registered.get(rating.rater) != signer.public_key:
        raise RatingError(f"the key signing for {rating.rater!r} is not the one this run registers (feedback.raters)")


def _same_submission(a: Rating, b: Rating) -> bool:
    """The same submission: everything the client chose is equal (version, supersedes and signature are ours)."""
    ignore = {"version", "supersedes", "signature"}
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
