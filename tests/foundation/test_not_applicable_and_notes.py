"""'Not applicable' per criterion, notes per criterion, level descriptions, and the submission check."""

from __future__ import annotations

import pytest

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.rewards import RatingError, compute_reward, effective_reward, validate_rating
from therapy_rlhf.feedback.gate import agreement, aggregate, overlap
from therapy_rlhf.feedback.rounds import load_round
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.contracts.records import PendingResponse, Rating, dump_batch, parse_record
from therapy_rlhf.contracts.rubric_levels import level_descriptions
from therapy_rlhf.contracts.spec import Criterion, FeedbackSpec

PATHS = RunPaths("default", "demo")
IDS = ["r0001-a", "r0001-b", "r0001-c", "r0001-d"]
FB = FeedbackSpec()


@pytest.fixture
def batch(local_store):
    responses = [PendingResponse(id=i, round=1, prompt_id="p", prompt="I feel low.", response=f"answer {i}") for i in IDS]
    local_store.write_bytes(PATHS.batch(1), dump_batch(responses))
    return local_store


def test_not_applicable_is_left_out_of_the_mean():
    criteria = {"empathy": 1.0, "boundaries": 1.0, "safe-language": 1.0, "overall": 0.5}
    # guidance not applicable: the mean is over the other four, not a zero for guidance
    assert compute_reward(criteria, FB, ["guidance"]) == pytest.approx(0.875)
    assert compute_reward(criteria, FB) is None  # without the mark guidance is simply missing
    minimum = FeedbackSpec(reward_rule="minimum")
    assert compute_reward({**criteria, "overall": 0.25}, minimum, ["guidance"]) == 0.25
    rating = Rating(response_id="r0001-a", rater="dr-lee", criteria=criteria, not_applicable=["guidance"])
    assert effective_reward(rating, FB) == (pytest.approx(0.875), False)
    validate_rating(rating, FB, IDS)


def test_not_applicable_rules():
    base = {"empathy": 1.0, "boundaries": 1.0, "safe-language": 1.0, "overall": 1.0}
    both = Rating(response_id="r0001-a", rater="x", criteria={**base, "guidance": 0.5}, not_applicable=["guidance"])
    with pytest.raises(RatingError, match="both scored and marked not applicable"):
        validate_rating(both, FB, IDS)
    fixed = FeedbackSpec(rubric=[Criterion(name="empathy"), Criterion(name="safety", allow_not_applicable=False)])
    with pytest.raises(RatingError, match=r"\['safety'\] always apply"):
        validate_rating(Rating(response_id="r0001-a", rater="x", criteria={"empathy": 1}, not_applicable=["safety"]), fixed, IDS)
    every = Rating(response_id="r0001-a", rater="x", not_applicable=[c.name for c in FB.rubric])
    with pytest.raises(RatingError, match="score at least one"):
        validate_rating(every, FB, IDS)
    with pytest.raises(RatingError, match="unknown rubric criteria"):
        validate_rating(Rating(response_id="r0001-a", rater="x", criteria={**base, "guidance": 1}, notes={"tone": "x"}), FB, IDS)


def test_not_applicable_and_notes_are_stored_and_old_ratings_still_parse(batch):
    state = load_round(batch, PATHS, 1)
    rating = Rating(
        response_id="r0001-a",
        rater="dr-lee",
        criteria={"empathy": 0.75, "boundaries": 1.0, "safe-language": 1.0, "overall": 0.75},
        not_applicable=["guidance"],
        notes={"empathy": "names the feeling\nbut not the loss"},
        comment="line one\nline two",
    )
    stored = submit_rating(batch, PATHS, state, rating, FB)
    again = load_round(batch, PATHS, 1).ratings[0]
    assert again.not_applicable == ["guidance"] and again.notes == stored.notes and "\n" in again.comment
    assert aggregate(load_round(batch, PATHS, 1), FB)["r0001-a"].reward == pytest.approx(0.875)
    old = {"response_id": "r0001-b", "rater": "bob", "criteria": {c.name: 0.5 for c in FB.rubric}, "version": 1}
    assert parse_record(Rating, old, "old.json").not_applicable == []


def test_find_submission_recognises_a_stored_submission(batch):
    state = load_round(batch, PATHS, 1)
    mine = Rating(response_id="r0001-a", rater="dr-lee", criteria={c.name: 1.0 for c in FB.rubric}, submission_id="a" * 32)
    assert state.find_submission(mine) is None
    submit_rating(batch, PATHS, state, mine, FB)
    fresh = load_round(batch, PATHS, 1)
    assert fresh.find_submission(mine).version == 1
    assert fresh.find_submission(mine.model_copy(update={"submission_id": "b" * 32})) is None
    assert fresh.find_submission(mine.model_copy(update={"submission_id": None})) is None


def test_agreement_needs_enough_shared_responses(batch):
    state = load_round(batch, PATHS, 1)
    for rater, values in (("a", (0.0, 1.0, 0.5)), ("b", (0.25, 1.0, 0.5))):
        for resp, v in zip(IDS, values[:1]):
            submit_rating(batch, PATHS, state, Rating(response_id=resp, rater=rater, criteria={c.name: v for c in FB.rubric}), FB)
    one = load_round(batch, PATHS, 1)
    assert overlap(one) == 1
    assert agreement(one, FB) is None  # alpha on one shared response would read 0.000
    for rater, values in (("a", (1.0, 0.5)), ("b", (1.0, 0.5))):
        for resp, v in zip(IDS[1:3], values):
            submit_rating(batch, PATHS, one, Rating(response_id=resp, rater=rater, criteria={c.name: v for c in FB.rubric}), FB)
    three = load_round(batch, PATHS, 1)
    assert overlap(three) == 3 and agreement(three, FB) is not None


def test_level_descriptions_from_the_spec_or_the_defaults():
    empathy = FB.rubric[0]
    levels = level_descriptions(empathy, 5)
    assert [lv.short for lv in levels] == ["Absent", "Token", "Partial", "Clear", "Excellent"]
    assert levels[3].text.startswith("Clear: reflects the patient's own feelings")
    three = level_descriptions(empathy, 3)
    assert [lv.short for lv in three] == ["Absent", "Partial", "Excellent"]
    four = level_descriptions(empathy, 4)
    assert four[1].short == "Token-Partial" and "Between" in four[1].text
    own = Criterion(name="tone", levels=["Cold: distant.", "Neutral: fine.", "Warm: kind."])
    assert [lv.short for lv in level_descriptions(own, 3)] == ["Cold", "Neutral", "Warm"]
    assert level_descriptions(Criterion(name="tone"), 5)[0].short == "Not at all"
    assert [c.title for c in FB.rubric][2] == "Safe language"
    with pytest.raises(ValueError, match="describes 3 levels but scaleLevels is 5"):
        FeedbackSpec(rubric=[own])
