"""Ratings and the gate: rewards, corrections, coverage, agreement, freezing; bad ratings change nothing."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import ValidationError

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.rewards import RatingError, check_rater, compute_reward, effective_reward, level_value
from therapy_rlhf.feedback.gate import agreement, aggregate, build_gate, close_gate, coverage
from therapy_rlhf.feedback.rounds import load_round, read_gate
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.contracts.records import Gate, PendingResponse, Rating, dump_batch
from therapy_rlhf.contracts.spec import FeedbackSpec
from therapy_rlhf.store.backends import AlreadyExists

PATHS = RunPaths("default", "demo")
IDS = ["r0001-a", "r0001-b", "r0001-c"]
FB = FeedbackSpec()  # the paper's five criteria, weighted mean, penalty 0.5
CRITERIA = [c.name for c in FB.rubric]


def scores(value: float, **overrides: float) -> dict[str, float]:
    out = {c: value for c in CRITERIA}
    out.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return out


def rating(resp: str, rater: str, value: float = 0.5, **kw) -> Rating:
    return Rating(response_id=resp, rater=rater, criteria=scores(value), **kw)


@pytest.fixture
def batch(store):
    responses = [
        PendingResponse(id=i, round=1, prompt_id="p", prompt="I feel hopeless.", response=f"answer {i}") for i in IDS
    ]
    store.write_bytes(PATHS.batch(1), dump_batch(responses))
    return store


def snapshot(store):
    return {k: store.read_bytes(k) for k in store.list("")}


def submit(store, r: Rating, fb: FeedbackSpec = FB) -> Rating:
    return submit_rating(store, PATHS, load_round(store, PATHS, 1), r, fb)


def record_reads(store, monkeypatch) -> list[str]:
    """Keys read whole (read_bytes) or with a size limit (read_limited, how ratings are read)."""
    reads: list[str] = []
    read, read_limited = store.read_bytes, store.read_limited

    def recording(key):
        reads.append(key)
        return read(key)

    def recording_limited(key, limit):
        reads.append(key)
        return read_limited(key, limit)

    monkeypatch.setattr(store, "read_bytes", recording)
    monkeypatch.setattr(store, "read_limited", recording_limited)
    return reads


# ------------------------------------------------------------- incremental


def test_a_reload_reads_only_what_is_new_and_equals_a_fresh_load(batch, monkeypatch):
    submit(batch, rating("r0001-a", "dr-lee", 0.5))
    submit(batch, rating("r0001-b", "dr-lee", 0.5))
    first = load_round(batch, PATHS, 1)
    # New since: a correction, a second rater, and an object that is not a rating.
    submit(batch, rating("r0001-a", "dr-lee", 0.9))
    submit(batch, rating("r0001-a", "dr-kim", 0.4))
    batch.write_bytes(PATHS.ratings_prefix(1) + "dr-kim/r0001-c.json", b"{broken")
    reads = record_reads(batch, monkeypatch)
    again = load_round(batch, PATHS, 1, previous=first)
    assert sorted(reads) == sorted(
        PATHS.rating(1, rater, rid, v) for rater, rid, v in [("dr-lee", "r0001-a", 2), ("dr-kim", "r0001-a", 1), ("dr-kim", "r0001-c", 1)]
    )  # no batch, no rating read twice
    fresh = load_round(batch, PATHS, 1)
    key = lambda r: (r.rater, r.response_id, r.version)  # noqa: E731
    assert sorted(map(key, again.ratings)) == sorted(map(key, fresh.ratings)) and len(fresh.ratings) == 4
    assert again.garbage == fresh.garbage and len(fresh.garbage) == 1
    assert again.latest() == fresh.latest() and again.batch_sha256 == fresh.batch_sha256


def test_a_previous_load_of_another_round_is_not_reused(batch, monkeypatch):
    first = load_round(batch, PATHS, 1)
    batch.write_bytes(PATHS.batch(2), dump_batch([PendingResponse(id="r0002-a", round=2, prompt_id="p", prompt="x", response="y")]))
    reads = record_reads(batch, monkeypatch)
    second = load_round(batch, PATHS, 2, previous=first)
    assert reads == [PATHS.batch(2)] and second.response_ids == ["r0002-a"]


def test_closing_a_gate_with_a_stale_previous_still_freezes_every_rating(batch):
    submit(batch, rating("r0001-a", "dr-lee", 0.5))
    stale = load_round(batch, PATHS, 1)
    submit(batch, rating("r0001-b", "dr-lee", 0.5))
    submit(batch, rating("r0001-c", "dr-lee", 0.5))
    gate = close_gate(batch, PATHS, 1, FB, previous=stale).gate
    assert sorted(gate.rewards) == IDS


# ------------------------------------------------------------------- rewards


def test_reward_rules():
    assert level_value(0, FB) == 0.0 and level_value(4, FB) == 1.0 and level_value(1, FB) == 0.25
    with pytest.raises(RatingError, match="outside 0..4"):
        level_value(5, FB)
    assert compute_reward(scores(0.5), FB) == 0.5
    weighted = FeedbackSpec(rubric=[{"name": "empathy", "weight": 3}, {"name": "overall", "weight": 1}])
    assert compute_reward({"empathy": 1.0, "overall": 0.0}, weighted) == 0.75
    minimum = FeedbackSpec(reward_rule="minimum")
    assert compute_reward(scores(0.9, guidance=0.2), minimum) == 0.2
    assert compute_reward(scores(0.9), FeedbackSpec(reward_rule="direct")) is None
    assert compute_reward({"empathy": 1.0}, FB) is None  # incomplete


def test_safety_penalty_applies_and_clamps():
    flagged = rating("r0001-a", "dr-lee", 0.8, flags=["harmful"])
    assert effective_reward(flagged, FB) == (pytest.approx(0.3), True)
    low = rating("r0001-a", "dr-lee", 0.2, flags=["missed_crisis"])
    assert effective_reward(low, FB) == (0.0, True)
    # an unpenalised flag changes nothing
    assert effective_reward(rating("r0001-a", "dr-lee", 0.8, flags=["off_topic"]), FB) == (0.8, False)


def test_aggregation_is_mean_over_distinct_raters_latest(batch):
    submit(batch, rating("r0001-a", "dr-lee", 0.25))
    submit(batch, rating("r0001-a", "dr-lee", 1.0))  # correction: replaces 0.25
    submit(batch, rating("r0001-a", "dr-okafor", 0.5))
    submit(batch, rating("r0001-b", "dr-lee", 0.9, flags=["medical_advice"]))
    rewards = aggregate(load_round(batch, PATHS, 1), FB)
    assert set(rewards) == {"r0001-a", "r0001-b"}
    assert rewards["r0001-a"].reward == 0.75 and rewards["r0001-a"].raters == ["dr-lee", "dr-okafor"]
    assert rewards["r0001-a"].ratings == ["dr-lee/r0001-a/v2", "dr-okafor/r0001-a/v1"]
    assert rewards["r0001-b"].reward == pytest.approx(0.4) and rewards["r0001-b"].penalized


def test_correction_supersedes_and_nothing_is_deleted(batch):
    first = submit(batch, rating("r0001-a", "dr-lee", 0.25, comment="too cold"))
    second = submit(batch, rating("r0001-a", "dr-lee", 0.75, comment="re-read: fine"))
    assert (first.version, first.supersedes) == (1, None)
    assert (second.version, second.supersedes) == (2, "dr-lee/r0001-a/v1")
    keys = batch.list(PATHS.ratings_prefix(1))
    assert keys == [PATHS.rating(1, "dr-lee", "r0001-a"), PATHS.rating(1, "dr-lee", "r0001-a", 2)]
    assert keys[1].endswith("/dr-lee/r0001-a.v2.json")
    assert batch.read_json(keys[0])["comment"] == "too cold"  # the old judgement is kept
    state = load_round(batch, PATHS, 1)
    assert state.latest()[("r0001-a", "dr-lee")].comment == "re-read: fine"


def test_withdrawal_removes_the_judgement_but_keeps_the_record(batch):
    submit(batch, rating("r0001-a", "dr-lee", 0.5))
    withdrawn = submit(batch, Rating(response_id="r0001-a", rater="dr-lee", withdrawn=True))
    assert withdrawn.version == 2 and withdrawn.supersedes == "dr-lee/r0001-a/v1"
    state = load_round(batch, PATHS, 1)
    assert state.latest() == {} and len(state.ratings) == 2
    assert coverage(state, 1).complete == 0 and aggregate(state, FB) == {}
    # rating again after a withdrawal counts again
    submit(batch, rating("r0001-a", "dr-lee", 0.5))
    assert coverage(load_round(batch, PATHS, 1), 1).complete == 1


def test_coverage_text(batch):
    submit(batch, rating("r0001-a", "dr-lee"))
    submit(batch, rating("r0001-a", "dr-okafor"))
    submit(batch, rating("r0001-b", "dr-lee"))
    state = load_round(batch, PATHS, 1)
    cov = coverage(state, 2)
    assert (cov.total, cov.complete, cov.ratings, cov.is_complete) == (3, 1, 3, False)
    assert cov.describe() == "1/3 responses have >= 2 raters"
    assert coverage(state, 1).describe() == "2/3 responses have >= 1 rater"


# ---------------------------------------------------------------- agreement


def test_krippendorff_alpha_matches_a_hand_computed_value(batch):
    """Interval alpha for raters A = (0, .5, 1), B = (.5, .5, 1).

    Pooled values 0, .5, .5, .5, 1, 1 (n = 6). Observed disagreement: only unit
    1 differs, 2 ordered pairs x .25 / (m-1 = 1) = .5, so D_o = .5 / 6. Expected
    disagreement: ordered pairs over all values sum to 8.5, D_e = 8.5 / (6 x 5).
    alpha = 1 - D_o / D_e = 1 - (.5/6) / (8.5/30) = 1 - 5/17 = 0.7059.
    """
    for resp, a, b in zip(IDS, (0.0, 0.5, 1.0), (0.5, 0.5, 1.0)):
        submit(batch, rating(resp, "rater-a", a))
        submit(batch, rating(resp, "rater-b", b))
    assert agreement(load_round(batch, PATHS, 1), FB) == pytest.approx(1 - 5 / 17, abs=1e-4)


def test_agreement_undefined_without_overlap(batch):
    submit(batch, rating("r0001-a", "rater-a", 0.2))
    assert agreement(load_round(batch, PATHS, 1), FB) is None  # one rater
    submit(batch, rating("r0001-b", "rater-b", 0.8))
    assert agreement(load_round(batch, PATHS, 1), FB) is None  # two raters, no shared response


def test_perfect_agreement(batch):
    for resp, v in zip(IDS, (0.0, 0.5, 1.0)):
        submit(batch, rating(resp, "rater-a", v))
        submit(batch, rating(resp, "rater-b", v))
    assert agreement(load_round(batch, PATHS, 1), FB) == 1.0


# ---------------------------------------------------------------------- gate


def test_gate_freezes_the_rating_set(batch):
    for resp in IDS:
        submit(batch, rating(resp, "dr-lee", 0.5))
    gate = close_gate(batch, PATHS, 1, FB, closed_by="runner").gate
    assert gate.reason == "complete" and gate.responses_rewarded == 3 and gate.mean_reward == 0.5
    stored = batch.read_bytes(PATHS.gate(1))
    # a later correction (written straight to the store: submit_rating refuses it)
    # is stored but does not change the frozen gate
    late = rating("r0001-a", "dr-lee", 1.0).model_copy(update={"version": 2, "supersedes": "dr-lee/r0001-a/v1"})
    batch.create_json(PATHS.rating(1, "dr-lee", "r0001-a", 2), late.model_dump(mode="json"))
    again = close_gate(batch, PATHS, 1, FB).gate
    assert again == gate and batch.read_bytes(PATHS.gate(1)) == stored
    assert read_gate(batch, PATHS, 1).rewards["r0001-a"].ratings == ["dr-lee/r0001-a/v1"]
    assert Gate.model_validate_json(stored).batch_sha256 == load_round(batch, PATHS, 1).batch_sha256


def test_gate_is_idempotent_even_with_another_reason(batch):
    submit(batch, rating("r0001-a", "dr-lee"))
    first = close_gate(batch, PATHS, 1, FB, reason="override", closed_by="platform").gate
    second = close_gate(batch, PATHS, 1, FB, reason="deadline", closed_by="someone-else").gate
    assert second == first and second.reason == "override"


def test_concurrent_closers_write_one_gate(batch):
    for resp in IDS:
        submit(batch, rating(resp, "dr-lee"))
    barrier = threading.Barrier(4)

    def closer(i):
        barrier.wait()
        return close_gate(batch, PATHS, 1, FB, closed_by=f"closer-{i}").gate

    with ThreadPoolExecutor(4) as pool:
        gates = list(pool.map(closer, range(4)))
    assert len({g.closed_by for g in gates}) == 1
    assert read_gate(batch, PATHS, 1) == gates[0]


def test_gate_refuses_to_close_early_or_on_nothing(batch):
    with pytest.raises(RatingError, match="no ratings"):
        close_gate(batch, PATHS, 1, FB, reason="override")
    submit(batch, rating("r0001-a", "dr-lee"))
    with pytest.raises(RatingError, match=r"not fully rated: 1/3 responses"):
        close_gate(batch, PATHS, 1, FB)
    assert not batch.exists(PATHS.gate(1))
    partial = close_gate(batch, PATHS, 1, FB, reason="override").gate
    assert partial.responses_total == 3 and partial.responses_rewarded == 1


def test_gate_uses_min_raters(batch):
    fb = FeedbackSpec(min_raters=2)
    for resp in IDS:
        submit(batch, rating(resp, "dr-lee"), fb)
    with pytest.raises(RatingError):
        build_gate(load_round(batch, PATHS, 1), fb, "complete", "t")
    for resp in IDS:
        submit(batch, rating(resp, "dr-okafor"), fb)
    gate = build_gate(load_round(batch, PATHS, 1), fb, "complete", "t")
    assert gate.min_raters == 2 and all(len(r.raters) == 2 for r in gate.rewards.values())


# --------------------------------------------------------------- bad ratings


@pytest.mark.parametrize(
    "make,error",
    [
        (lambda: Rating(response_id="r0001-a", rater="dr-lee", criteria=scores(0.5), reward=1.5), "less than or equal to 1"),
        (lambda: Rating(response_id="r0001-a", rater="dr-lee", criteria=scores(0.5), reward=-0.1), "greater than or equal to 0"),
        (lambda: Rating(response_id="r0001-a", rater="dr-lee", criteria=scores(0.5, empathy=1.2)), "outside 0..1"),
        (lambda: Rating(response_id="r0001-a", rater="dr/lee", criteria=scores(0.5)), "invalid rater id"),
        (lambda: Rating(response_id="r0001-a", rater="..", criteria=scores(0.5)), "invalid rater id"),
        (lambda: Rating(response_id="../r0001-a", rater="dr-lee", criteria=scores(0.5)), "invalid response id"),
        (lambda: Rating(response_id="r0001-a", rater="dr-lee", flags=["rude"]), "Input should be"),
    ],
)
def test_invalid_rating_records(make, error):
    with pytest.raises(ValidationError, match=error):
        make()


@pytest.mark.parametrize(
    "bad,fb,error",
    [
        (rating("r0001-zzz", "dr-lee"), FB, "response 'r0001-zzz' does not exist"),
        (Rating(response_id="r0001-a", rater="dr-lee", criteria={**scores(0.5), "charm": 1.0}), FB, "unknown rubric criteria \\['charm'\\]"),
        (Rating(response_id="r0001-a", rater="dr-lee", criteria={"empathy": 1.0}), FB, "are not scored"),
        (Rating(response_id="r0001-a", rater="dr-lee", criteria=scores(0.5), reward=0.9), FB, "does not match"),
        (rating("r0001-a", "stranger"), FeedbackSpec(allowed_raters=["dr-lee"]), "not in feedback.allowedRaters"),
        (Rating(response_id="r0001-a", rater="dr-lee", criteria=scores(0.5)), FeedbackSpec(reward_rule="direct"), "needs a reward"),
    ],
)
def test_rejected_ratings_change_nothing(batch, bad, fb, error):
    submit(batch, rating("r0001-b", "dr-lee", 0.5, reward=0.5), fb)  # something stored already
    before = snapshot(batch)
    with pytest.raises(RatingError, match=error):
        submit(batch, bad, fb)
    assert snapshot(batch) == before
    assert len(str(RatingError(error)).splitlines()) == 1


def test_second_object_with_the_same_key_is_refused(batch):
    key = PATHS.rating(1, "dr-lee", "r0001-a")
    first = rating("r0001-a", "dr-lee", 0.25)
    batch.create_json(key, first.model_dump(mode="json"))
    before = snapshot(batch)
    with pytest.raises(AlreadyExists):
        batch.create_json(key, rating("r0001-a", "dr-lee", 1.0).model_dump(mode="json"))
    assert snapshot(batch) == before


def test_two_windows_rating_the_same_response_lose_nothing(batch):
    """Two submitters start from the same (stale) state: one becomes v1, the other a v2 correction."""
    states = [load_round(batch, PATHS, 1) for _ in range(2)]
    barrier = threading.Barrier(2)

    def window(i):
        barrier.wait()
        return submit_rating(batch, PATHS, states[i], rating("r0001-a", "dr-lee", 0.25 * (i + 1)), FB)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(window, range(2)))
    assert sorted(r.version for r in results) == [1, 2]
    assert len(batch.list(PATHS.ratings_prefix(1))) == 2


def test_garbage_in_the_store_is_reported_not_trusted(batch):
    submit(batch, rating("r0001-a", "dr-lee", 0.5))
    prefix = PATHS.ratings_prefix(1)
    batch.write_bytes(prefix + "dr-lee/notes.txt", b"hello")
    batch.write_bytes(prefix + "dr-okafor/r0001-b.json", b"{broken")
    batch.write_json(prefix + "dr-okafor/r0001-c.json", rating("r0001-b", "dr-okafor").model_dump(mode="json"))
    batch.write_json(prefix + "dr-okafor/r0001-zzz.json", rating("r0001-zzz", "dr-okafor").model_dump(mode="json"))
    state = load_round(batch, PATHS, 1)
    assert [r.id for r in state.ratings] == ["dr-lee/r0001-a/v1"]
    joined = "\n".join(state.garbage)
    assert len(state.garbage) == 4
    for needle in ("not a rating key", "not valid JSON", "does not match its key", "unknown response"):
        assert needle in joined


def test_check_rater():
    assert check_rater("dr-lee", FB) == "dr-lee"
    with pytest.raises(RatingError, match="invalid rater id"):
        check_rater("Dr Lee", FB)
    with pytest.raises(RatingError, match="allowedRaters"):
        check_rater("x", FeedbackSpec(allowed_raters=["dr-lee"]))


def test_a_bad_stored_rating_reads_as_one_line_with_its_field():
    from therapy_rlhf.contracts.records import RecordError, parse_record

    data = rating("r0001-a", "dr-lee").model_dump(mode="json") | {"reward": 1.5}
    with pytest.raises(RecordError) as err:
        parse_record(Rating, data, "store/x.json")
    assert str(err.value) == "store/x.json: reward: Input should be less than or equal to 1 (got 1.5)"
