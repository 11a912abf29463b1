"""The reward model (therapy_rlhf.feedback.reward_model): it recovers a known rule from ratings, separates
raters' scales from the text, knows what it has not seen, and refits to the same bits."""

from __future__ import annotations

import random

import numpy as np
import pytest

from therapy_rlhf.feedback import reward_model as rm

GOOD = "sorry hear understand feel valid here listen care support brave".split()
NEUTRAL = "the a day work then when so it was my and time week city".split()


def synthetic(n: int, seed: int) -> list[tuple[str, float]]:
    """Responses of 6-10 words; the rule: share of GOOD words (saturating at 0.5), a word-list rule."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(6, 10)
        good = rng.randint(0, k // 2)
        words = rng.sample(GOOD, good) + [rng.choice(NEUTRAL) for _ in range(k - good)]
        rng.shuffle(words)
        out.append((" ".join(words), min(1.0, good / k / 0.5)))
    return out


def test_recovers_a_known_rule_within_a_stated_bound():
    train, test = synthetic(400, seed=1), synthetic(200, seed=2)
    model = rm.fit([rm.Example(t, "sim", y) for t, y in train], ridge=0.3)
    predicted, _ = model.predict([t for t, _ in test])
    truth = np.array([y for _, y in test])
    mae = float(np.abs(predicted - truth).mean())
    know_nothing = float(np.abs(np.mean([y for _, y in train]) - truth).mean())
    # Bound: held-out MAE under 0.08 on a 0..1 reward, and well under predicting the mean.
    assert mae < 0.08, mae
    assert mae < 0.35 * know_nothing, (mae, know_nothing)


def test_a_rater_who_scores_lower_moves_their_offset_not_the_text_weights():
    data = synthetic(400, seed=3)
    examples = []
    for i, (text, y) in enumerate(data):
        examples.append(rm.Example(text, "dr-kim", y))
        if i % 2 == 0:  # dr-lee rates half of them, 0.2 lower
            examples.append(rm.Example(text, "dr-lee", max(0.0, y - 0.2)))
    model = rm.fit(examples, ridge=0.3)
    offsets = model.rater_offsets()
    assert offsets["dr-kim"] - offsets["dr-lee"] == pytest.approx(0.2, abs=0.05)
    # The panel prediction sits between the two raters' scales.
    texts = [t for t, _ in synthetic(100, seed=4)]
    truth = np.array([y for _, y in synthetic(100, seed=4)])
    predicted, _ = model.predict(texts)
    gap = float((truth - predicted).mean())
    assert 0.02 < gap < 0.18, gap


def test_uncertainty_is_higher_for_text_unlike_anything_rated():
    model = rm.fit([rm.Example(t, "sim", y) for t, y in synthetic(200, seed=5)])
    _, familiar = model.predict([t for t, _ in synthetic(50, seed=6)])
    _, novel = model.predict(["zebra quantum xylophone marmalade", "kumquat vortex nebula", "ζ∑∂ ☃☃ ###"])
    assert novel.min() > familiar.mean()


def test_refits_bit_for_bit_and_rejects_too_little_data():
    examples = [rm.Example(t, "sim", y) for t, y in synthetic(50, seed=7)]
    a, b = rm.fit(examples, seed=3), rm.fit(examples, seed=3)
    assert a.digest == b.digest and np.array_equal(a.weights, b.weights)
    assert rm.fit(examples, seed=4).digest != a.digest
    with pytest.raises(ValueError, match="at least 2 expert ratings"):
        rm.fit(examples[:1])


def test_features_see_form_as_well_as_words():
    assert not np.allclose(rm.features("I hear you"), rm.features("I hear you?"))
    assert not np.allclose(rm.features("plain words here"), rm.features("pl�ain wor�ds here"))
    assert rm.features("anything").shape == (rm.FEATURE_DIM,)
    assert np.array_equal(rm.features(""), rm.features(""))  # empty text is a valid, fixed vector


# --- issue 21: feature sets chosen by held-out skill, the skill score, rank correlation -----------------


def test_skill_score_is_relative_to_the_mean_of_the_same_ratings():
    truth = np.array([0.1, 0.4, 0.5, 0.9, 0.7])
    assert rm.skill_score(truth, truth) == pytest.approx(1.0)
    assert rm.skill_score(np.full(5, truth.mean()), truth) == pytest.approx(0.0)
    assert rm.skill_score(1.0 - truth, truth) < 0  # worse than knowing the mean
    assert rm.skill_score([0.3, 0.3], [0.5, 0.5]) is None  # ratings that do not vary: nothing to beat


def test_rank_correlation_is_taken_inside_each_batch():
    # Inside each batch the order is right; across batches the levels differ (which PPO's whitening ignores).
    truth = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]
    pred = [0.6, 0.7, 0.8, 0.1, 0.2, 0.3]
    assert rm.rank_correlation_within_batches(pred, truth, [1, 1, 1, 2, 2, 2]) == pytest.approx(1.0)
    assert rm.spearman(pred, truth) < 0.5  # pooled, the order is wrong
    assert rm.rank_correlation_within_batches([0.1, 0.2], [0.3, 0.4], [1, 1]) is None


def test_skill_interval_separates_a_skilled_model_from_noise():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 1, 40)
    good, good_low = rm.skill_interval(truth + rng.normal(0, 0.05, 40), truth, confidence=0.9)
    noise, noise_low = rm.skill_interval(rng.uniform(0, 1, 40), truth, confidence=0.9)
    assert good > 0.8 and good_low > 0.5
    assert noise_low < 0


def test_the_feature_set_is_chosen_by_held_out_skill():
    rng = np.random.default_rng(1)
    texts = [f"response {i}" for i in range(120)]
    signal = rng.normal(size=(120, 8))
    noise = rng.normal(size=(120, 8))
    y = 1 / (1 + np.exp(-signal[:, 0] - 0.5 * signal[:, 1]))
    # Offered first, noise would win a tie; it loses on skill.
    model = rm.fit_reward_model(texts, y, {"noise": noise, "signal": signal}, seed=0)
    assert model.feature_set == "signal"
    assert model.cv["signal"]["skill"] > 0.7 and model.cv_skill == model.cv["signal"]["skill"]
    assert model.cv["noise"]["skill"] < 0.1
    mean, spread = model.predict({"signal": signal[:5], "noise": noise[:5]})
    assert mean.shape == spread.shape == (5,) and (spread > 0).all()
    skills = model.member_skills(signal, y)
    assert len(skills) == 5 and min(skills) > 0.7


def test_cross_validation_holds_out_whole_texts():
    # Every text rated by two raters: were the same text on both sides, a lookup table would look skilled.
    rng = np.random.default_rng(2)
    texts = [f"t{i}" for i in range(60)] * 2
    ident = np.eye(60)[list(range(60)) * 2]  # one feature per text: memorises, generalises nothing
    y = np.tile(rng.uniform(0, 1, 60), 2)
    model = rm.fit_reward_model(texts, y, {"lookup": ident}, raters=["a"] * 60 + ["b"] * 60)
    assert model.cv["lookup"]["skill"] < 0.05


def test_token_ids_feature_set_from_a_tokenizer_callable():
    # A rule visible only in the policy's token ids (the text is the same for every response shape).
    vocab = {w: i * 37 + 5 for i, w in enumerate(GOOD + NEUTRAL)}
    data = synthetic(300, seed=8)
    source = rm.TextFeatures(tokenize=lambda t: [vocab[w] for w in t.split()])
    assert source.names() == ["hashed", "tokens"]
    model = rm.fit_reward_model([t for t, _ in data], [y for _, y in data], source, seed=1)
    assert set(model.cv) == {"hashed", "tokens"}
    assert model.cv["tokens"]["skill"] > 0.6, model.cv
    test = synthetic(100, seed=9)
    mean, _ = model.predict([t for t, _ in test])
    assert rm.skill_score(mean, [y for _, y in test]) > 0.6
    with pytest.raises(ValueError, match="not offered"):
        rm.TextFeatures().matrix("embedding", ["x"])
