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
