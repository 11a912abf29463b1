"""Metrics against hand-computed values, and BERTScore with the bundled local encoder."""

from __future__ import annotations

import math

import pytest

from therapy_rlhf.jobs import text_metrics as tm
from therapy_rlhf.jobs.common import JobError

PRED = "I am sorry you feel sad."
REF = "I am sad that you feel this way"


def test_token_f1_by_hand():
    # pred words: i am sorry you feel sad (6); ref: i am sad that you feel this way (8); 5 shared
    p, r = 5 / 6, 5 / 8
    assert tm.token_f1([PRED], [REF]) == pytest.approx(2 * p * r / (p + r))
    assert tm.token_f1([PRED, "x"], [REF, "y"]) == pytest.approx((5 / 7 + 0) / 2)
    assert tm.f1_one("Don't worry", "don't WORRY!") == 1.0


def test_rouge_by_hand():
    got = tm.rouge([PRED], [REF])
    assert got["rouge1"] == pytest.approx(5 / 7)
    # LCS = "i am you feel" (4): P = 4/6, R = 4/8
    assert got["rougeL"] == pytest.approx(2 * (4 / 6) * (4 / 8) / (4 / 6 + 4 / 8))


def test_bleu2_by_hand():
    # unigram precision 5/6, bigram precision 2/5 ("i am", "you feel"), brevity penalty exp(1 - 8/6)
    expected = math.exp(1 - 8 / 6) * math.sqrt((5 / 6) * (2 / 5))
    assert tm.bleu2([PRED], [REF]) == pytest.approx(expected)


def test_bleu2_without_overlap_is_zero_and_quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        assert tm.bleu2(["feel you alone"], ["you feel alone"]) == pytest.approx(0.0, abs=1e-9)  # no 2-gram shared


def test_distinct_by_hand():
    preds = ["the cat the", "cat sat"]
    assert tm.distinct(preds, 1) == pytest.approx(3 / 5)  # the cat the cat sat
    assert tm.distinct(preds, 2) == pytest.approx(3 / 3)  # (the cat) (cat the) (cat sat)
    assert tm.distinct(["a"], 2) == 0.0


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        tm.token_f1(["a"], ["a", "b"])


def test_bertscore_with_the_bundled_encoder():
    scorer = tm.BertScore()
    assert scorer.path == tm.bundled_encoder()
    same = scorer.score([REF], [REF])
    close = scorer.score([PRED], [REF])
    far = scorer.score(["The quarterly tax filing deadline is in April."], [REF])
    assert same == pytest.approx(1.0, abs=1e-4)
    assert same > close > far
    got = tm.compute([PRED], [REF], ["bertscore", "rouge1", "f1", "distinct1"], scorer)
    assert set(got) == {"bertscore", "rouge1", "f1", "distinct1"}
    assert got["f1"] == pytest.approx(5 / 7, abs=1e-6)


def test_bertscore_model_must_be_a_local_directory(tmp_path):
    with pytest.raises(JobError, match="not a model directory"):
        tm.BertScore(tmp_path)
