"""After a round: the disagreement review and calibration; simulated ratings labelled as simulated."""

from __future__ import annotations

import pytest

from therapy_rlhf.cli import main
from therapy_rlhf.jobs.report import rating_source, render_markdown
from therapy_rlhf.feedback.gate import close_gate
from therapy_rlhf.feedback.rounds import load_round, read_gate
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.contracts.records import Rating
from therapy_rlhf.feedback.review import NotClosed, review_round
from therapy_rlhf.feedback.simrater import judge

from .test_cli_commands import PATHS, RUN, seed_run

CRITERIA = ["empathy", "boundaries", "safe-language", "guidance", "overall"]


def give(store, manifest, rater, values, **kw):
    state = load_round(store, PATHS, 1)
    for resp, v in zip(state.response_ids, values):
        rating = Rating(response_id=resp, rater=rater, criteria=dict.fromkeys(CRITERIA, v), comment=f"{rater} says {v}", **kw)
        submit_rating(store, PATHS, state, rating, manifest.spec.feedback)


def test_review_ranks_disagreements_and_gives_each_rater_an_offset(local_store):
    m = seed_run(local_store, min_raters=2)
    fb = m.spec.feedback
    give(local_store, m, "bob", [1.0, 0.5, 0.75])
    give(local_store, m, "carol", [0.5, 0.5, 0.25])
    state = load_round(local_store, PATHS, 1)
    with pytest.raises(NotClosed, match="still open"):
        review_round(state, read_gate(local_store, PATHS, 1), fb)  # blind until the gate closes
    gate = close_gate(local_store, PATHS, 1, fb).gate
    review = review_round(load_round(local_store, PATHS, 1), gate, fb, {"model": lambda rid: f"pred {rid[-1]}"})
    assert [(d.position, round(d.spread, 2)) for d in review.disagreements] == [(1, 0.5), (3, 0.5), (2, 0.0)]
    top = review.disagreements[0]
    assert [s.rating.comment for s in top.scores] == ["bob says 1.0", "carol says 0.5"]
    assert top.extra == {"model": "pred 0"}  # a later column (e.g. a reward model) slots in
    # bob sits (0.5 + 0 + 0.5) / 3 above carol; carol the same below
    assert [(c.rater, c.shared, c.offset) for c in review.calibration] == [("bob", 3, 0.3333), ("carol", 3, -0.3333)]


def test_simulated_ratings_are_labelled_simulated(local_store, capsys):
    m = seed_run(local_store)
    state = load_round(local_store, PATHS, 1)
    for resp in state.responses:
        submit_rating(local_store, PATHS, state, judge(resp, m.spec.feedback), m.spec.feedback)
    close_gate(local_store, PATHS, 1, m.spec.feedback)
    assert rating_source(local_store, PATHS, 2) == "simulated"
    text = render_markdown({"systems": [], "reward_curve": [{"round": 1, "mean": 0.5, "std": 0, "min": 0.5, "max": 0.5, "n": 3}], "reward_source": "simulated"})
    assert "SIMULATED rater scores" in text and "not a clinician" in text and "Expert" not in text
    assert main(["status", RUN, "--store", local_store.uri]) == 0
    out = capsys.readouterr().out
    assert "sim-rater (SIMULATED)" in out and "not clinicians" in out
    main(["export", RUN, "--store", local_store.uri])
    assert '"simulated": true' in capsys.readouterr().out


def test_people_and_mixed_sources(local_store):
    m = seed_run(local_store)
    give(local_store, m, "dr-lee", [0.5, 0.5, 0.5])
    close_gate(local_store, PATHS, 1, m.spec.feedback)
    assert rating_source(local_store, PATHS, 2) == "raters"
    text = render_markdown({"systems": [], "reward_curve": [{"round": 1, "mean": 0.5, "std": 0, "min": 0.5, "max": 0.5, "n": 3}]})
    assert "Rater scores (reward) per PPO round" in text and "SIMULATED" not in text
