"""Metrics against hand-computed values, and BERTScore with the bundled local encoder."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from therapy_rlhf.jobs import text_metrics as tm
from therapy_rlhf.jobs.common import JobError

PRED = "I am sorry you feel sad."
REF = "I am sad that you feel this way"


def test_token_f1_is_squad_style():
    # SQuAD normalisation: case, punctuation and the articles a/an/the do not count
    assert tm.squad_normalize("The cat's  toy, an idea!") == "cats toy idea"
    assert tm.f1_one("The cat's toy!", "a cats toy") == 1.0
    # "the" is dropped on both sides: 2 shared of 3 predicted and 2 reference tokens
    assert tm.f1_one("the dog barked loudly", "A dog barked") == pytest.approx(2 * (2 / 3) * 1.0 / (2 / 3 + 1.0))
    assert tm.f1_one("", "") == 1.0 and tm.f1_one("the", "something") == 0.0  # empty after normalising


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
    settings = tm.bertscore_settings(None)
    assert (settings.model, settings.layer, settings.rescaled) == (tm.BUNDLED_ENCODER_NAME, 6, False)
    scorer = tm.BertScore(settings)
    assert scorer.path == str(tm.bundled_encoder())
    same = scorer.score([REF], [REF])
    close = scorer.score([PRED], [REF])
    far = scorer.score(["The quarterly tax filing deadline is in April."], [REF])
    assert same == pytest.approx(1.0, abs=1e-4)
    assert same > close > far
    got = tm.compute([PRED], [REF], ["bertscore", "rouge1", "f1", "distinct1"], scorer)
    assert set(got) == {"bertscore", "rouge1", "f1", "distinct1"}
    assert got["f1"] == pytest.approx(5 / 7, abs=1e-6)


@pytest.mark.parametrize(
    "source, name, layer",
    [
        ("s3://therapy-rlhf-models/roberta-large", "roberta-large", 17),
        ("/models/roberta-large/", "roberta-large", 17),
        ("microsoft/deberta-xlarge-mnli", "microsoft/deberta-xlarge-mnli", 40),
        ("s3://models/hub/microsoft/deberta-xlarge-mnli", "microsoft/deberta-xlarge-mnli", 40),
        ("bert-base-uncased", "bert-base-uncased", 9),
    ],
)
def test_bertscore_layer_comes_from_bert_scores_table(source, name, layer):
    settings = tm.bertscore_settings(source)
    assert (settings.model_type, settings.layer) == (name, layer)
    assert settings.layer_from == f"bert-score's model table ({name})"
    rescaled = tm.bertscore_settings(source, rescale=True)
    assert rescaled.rescaled and rescaled.baseline_file.endswith(f"rescale_baseline/en/{name}.tsv")


def test_bertscore_settings_refuse_what_is_undefined():
    with pytest.raises(JobError, match="is not in bert-score's model table, so it has no default layer"):
        tm.bertscore_settings("/models/my-encoder")
    assert tm.bertscore_settings("/models/my-encoder", layer=4).layer == 4
    assert tm.bertscore_settings("/models/my-encoder", model_type="roberta-base").layer == 10
    with pytest.raises(JobError, match="ships no baseline for the bundled MiniLM"):
        tm.bertscore_settings(None, rescale=True)
    with pytest.raises(JobError, match="a tiny chat model is not a BERTScore encoder"):
        tm.bertscore_settings("tiny:mistral")
    with pytest.raises(JobError, match="has no layer 40"):
        tm.bertscore_settings("roberta-large", layer=40, rescale=True)


def _encoder_copy(tmp_path, name):
    """The bundled MiniLM files under a directory called ``name`` (symlinks, no copy)."""
    out = tmp_path / name
    out.mkdir(parents=True)
    for f in tm.bundled_encoder().iterdir():
        (out / f.name).symlink_to(f)
    return out


def test_rescale_with_baseline_applies_bert_scores_baseline(tmp_path):
    # The MiniLM files named as a table model with a shipped baseline (distilbert-base-uncased,
    # layer 5): the weights are not that model's, but the layer and rescaling are wired as for it.
    path = str(_encoder_copy(tmp_path, "distilbert-base-uncased"))
    raw = tm.BertScore(tm.bertscore_settings(path))
    rescaled_settings = tm.bertscore_settings(path, rescale=True)
    rescaled = tm.BertScore(rescaled_settings)
    assert raw.settings.layer == rescaled.settings.layer == 5
    rows = Path(rescaled_settings.baseline_file).read_text().splitlines()
    baseline_f = float(rows[1 + 5].split(",")[3])
    r, s = raw.score([PRED], [REF]), rescaled.score([PRED], [REF])
    assert s == pytest.approx((r - baseline_f) / (1 - baseline_f), abs=1e-5)
    assert s < r


def test_bertscore_model_from_s3_is_downloaded_once(tmp_path, s3_bucket):
    from therapy_rlhf.store.backends import open_store

    bucket = open_store(f"s3://{s3_bucket}")
    bucket.put_dir(tm.bundled_encoder(), "encoders/minilm")
    source = f"s3://{s3_bucket}/encoders/minilm"
    settings = tm.bertscore_settings(source, layer=6)
    cache = tmp_path / "cache"
    first = tm.BertScore(settings, cache_root=cache)
    local = tm.BertScore(tm.bertscore_settings(None))
    assert first.score([PRED], [REF]) == pytest.approx(local.score([PRED], [REF]), abs=1e-6)
    assert Path(first.path).is_relative_to(cache)
    import boto3

    s3 = boto3.client("s3")
    for obj in s3.list_objects_v2(Bucket=s3_bucket).get("Contents", []):
        s3.delete_object(Bucket=s3_bucket, Key=obj["Key"])
    again = tm.BertScore(settings, cache_root=cache)  # the bucket is empty now: served from the cache
    assert again.path == first.path


def test_bertscore_model_must_be_a_model_directory(tmp_path):
    with pytest.raises(JobError, match="not a model directory"):
        tm.BertScore(tm.bertscore_settings(str(tmp_path), layer=1))
