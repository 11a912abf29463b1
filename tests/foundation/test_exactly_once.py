"""Exactly-once submit: a retry after an ambiguous failure recognises its own object.

S3 is moto's server behind a fault-injecting proxy (tests/support/fault_proxy.py):
a conditional PUT that S3 applied but whose answer was lost is retried by botocore,
meets its own object and gets 412; submit_rating must return that object, not
store the rating again as a "correction"."""

from __future__ import annotations

import pytest

from tests.support.fault_proxy import FaultProxy, run_workload
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.rewards import RatingError
from therapy_rlhf.feedback.rounds import load_round
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.contracts.records import PendingResponse, Rating, dump_batch
from therapy_rlhf.contracts.spec import FeedbackSpec
from therapy_rlhf.store.backends import S3Store

PATHS = RunPaths("default", "demo")
FB = FeedbackSpec()
CRITERIA = {c.name: 0.5 for c in FB.rubric}


@pytest.fixture
def direct(s3_bucket, s3_endpoint) -> S3Store:
    store = S3Store(s3_bucket, "therapy-rlhf", endpoint_url=s3_endpoint)
    store.write_bytes(PATHS.batch(1), dump_batch(
        [PendingResponse(id=i, round=1, prompt_id="p", prompt="x", response="y") for i in ("r0001-a", "r0001-b")]))
    return store


def first_conditional_put(kind: str):
    """A proxy hook: the fault ``kind`` on the first PUT with If-None-Match, nothing else."""
    done = []

    def choose(method, path, headers):
        if method == "PUT" and headers.get("If-None-Match") == "*" and not done:
            done.append(path)
            return kind
        return None

    return choose


@pytest.mark.parametrize("kind", ["500-after", "reset-after"])
def test_a_put_whose_answer_was_lost_is_stored_once(direct, s3_bucket, s3_endpoint, kind):
    with FaultProxy(s3_endpoint) as proxy:
        proxy.choose = first_conditional_put(kind)
        store = S3Store(s3_bucket, "therapy-rlhf", endpoint_url=proxy.url)
        state = load_round(store, PATHS, 1, feedback=FB)
        stored = submit_rating(store, PATHS, state, Rating(response_id="r0001-a", rater="dr-lee", criteria=CRITERIA), FB)
        assert proxy.faults[kind] == 1
    assert stored.version == 1
    assert direct.list(PATHS.ratings_prefix(1)) == [PATHS.rating(1, "dr-lee", "r0001-a")]


def test_the_callers_rating_gets_a_submission_id_that_a_retry_reuses(direct):
    rating = Rating(response_id="r0001-a", rater="dr-lee", criteria=CRITERIA)
    stale = load_round(direct, PATHS, 1, feedback=FB)  # what a tool held when its answer was lost
    stored = submit_rating(direct, PATHS, load_round(direct, PATHS, 1, feedback=FB), rating, FB)
    assert rating.submission_id and stored.submission_id == rating.submission_id
    # A replay from a fresh load (a journal, a restarted tool) finds it: no second version.
    again = submit_rating(direct, PATHS, load_round(direct, PATHS, 1, feedback=FB), rating, FB)
    assert again == stored and len(direct.list(PATHS.ratings_prefix(1))) == 1
    # A retry from the state held before the write meets its own object at v1 (412).
    assert submit_rating(direct, PATHS, stale, rating, FB) == stored
    assert len(direct.list(PATHS.ratings_prefix(1))) == 1


def test_a_submission_id_reused_for_other_content_is_refused(direct):
    first = Rating(response_id="r0001-a", rater="dr-lee", criteria=CRITERIA, submission_id="abcdef012345")
    submit_rating(direct, PATHS, load_round(direct, PATHS, 1, feedback=FB), first, FB)
    before = {k: direct.read_bytes(k) for k in direct.list("")}
    other = Rating(response_id="r0001-a", rater="dr-lee", criteria={**CRITERIA, "empathy": 1.0}, submission_id="abcdef012345")
    with pytest.raises(RatingError, match="already stored as dr-lee/r0001-a/v1 with other content"):
        submit_rating(direct, PATHS, load_round(direct, PATHS, 1, feedback=FB), other, FB)
    assert {k: direct.read_bytes(k) for k in direct.list("")} == before


@pytest.mark.slow
def test_a_thousand_ratings_through_five_percent_faults_are_each_stored_once(s3_bucket, s3_endpoint):
    out = run_workload(s3_endpoint, s3_bucket, responses=250, raters=4, rate=0.05, seed=1, signed=True)
    assert out.acknowledged == out.submitted == 1000
    assert (out.stored, out.duplicates, out.lost) == (1000, 0, 0)
    assert (out.verified, out.refused) == (1000, 0)  # signed, and a retried write never breaks a signature
    # the faults really happened, ambiguous ones included
    assert out.faults["500-after"] > 10 and out.faults["reset-after"] > 10 and sum(out.faults.values()) > 100
