"""Issue 21's benchmarks: the simulated experts score as defined, the committed pool is what it says, and the
strategy harness does what each strategy's definition says (bench/sim_experts.py, bench/pool_curves.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import pool_curves  # noqa: E402
import response_pool  # noqa: E402
import sim_experts  # noqa: E402

POOL = BENCH / "data" / "pool.jsonl.gz"


# -- the simulated experts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("sorry understand", 0.5),  # all empathy words (saturated), no guidance word
        ("try talk", 0.5),  # all guidance words (saturated), no empathy word
        ("sorry, try", 1.0),  # half and half: both shares past saturation
        ("the cat sat on the mat", 0.0),
        ("", 0.0),
    ],
)
def test_word_rule_is_the_lexicon_shares(text, expected):
    assert sim_experts.word_rule(text) == pytest.approx(expected)


def test_word_rule_below_saturation_scales_linearly():
    # one empathy word in eight (12.5%, half of the 25% saturation), no guidance word: 0.5 / 2
    assert sim_experts.word_rule("sorry one two three four five six seven") == pytest.approx(0.25)


@pytest.mark.parametrize(
    "text, expected",
    [
        # 3 words, no question, finished, plain prose
        ("The cat sat.", 0.3 * 3 / 25 + 0.2 + 0.2),
        # 25+ words and a question, finished, plain: everything
        ("How have you been feeling about all of this lately, and what do you think would help you most "
         "right now with everything that is going on in your life?", 1.0),
        # a list: not plain, not finished
        ("- breathe\n- walk", 0.3 * 2 / 25),
        # cut off mid-sentence, plain
        ("It sounds like you are carrying a lot and", 0.3 * 9 / 25 + 0.2),
        # a special token in the text is not plain prose
        ("<|im_start|> Are you okay?", 0.3 * 5 / 25 + 0.3 + 0.2),
        ("", 0.0),
    ],
)
def test_form_rule_is_length_question_finish_and_plain(text, expected):
    assert sim_experts.form_rule(text) == pytest.approx(expected, abs=1e-6)


def test_semantic_rule_maps_the_top_k_similarity_onto_0_to_1():
    refs = np.eye(8)[:6]  # six orthogonal unit "reference replies"
    lo, hi = sim_experts.SEMANTIC_RANGE
    same = refs[0]
    unrelated = np.eye(8)[7]
    # top-5 mean similarity of a vector at similarity x to all six references is x
    mid = (lo + hi) / 2
    between = np.full(8, 0.0)
    between[:6] = mid
    between[7] = np.sqrt(max(0.0, 1 - 6 * mid**2))
    scores = sim_experts.semantic_scores(np.stack([same, unrelated, between]), refs)
    assert scores[1] == 0.0
    assert scores[0] == pytest.approx(float(np.clip((1 / 5 - lo) / (hi - lo), 0, 1)))  # one of its top 5 matches
    assert scores[2] == pytest.approx(0.5, abs=1e-6)


def test_semantic_rule_on_real_text_prefers_a_counsellor_reply():
    """The bundled MiniLM (real weights, offline): a supportive reply is closer to counsellor replies than noise."""
    refs = [
        "I'm sorry you are going through this, it sounds really hard.",
        "That must be very painful. How are you coping with it?",
        "It is understandable to feel that way after what happened.",
        "Have you been able to talk to anyone close to you about this?",
        "I hear you. It sounds like you have been carrying a lot on your own.",
    ]
    texts = ["I'm so sorry, that sounds really hard. How have you been coping?", "Malaking 4321 banana ### zzz qwerty"]
    embed = sim_experts.embedder()
    scores = sim_experts.semantic_scores(embed(texts), embed(refs))
    assert scores[0] > scores[1] + 0.3


def test_noise_is_seeded_per_expert_and_response_and_clipped():
    scores = np.array([0.0, 0.5, 1.0])
    ids = ["a", "b", "c"]
    assert np.array_equal(sim_experts.noisy(scores, ids, "word", 0.0), scores)
    once, again = sim_experts.noisy(scores, ids, "word", 0.1), sim_experts.noisy(scores, ids, "word", 0.1)
    assert np.array_equal(once, again)
    assert not np.array_equal(once, sim_experts.noisy(scores, ids, "form", 0.1))
    assert once.min() >= 0.0 and once.max() <= 1.0


# -- the committed pool -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool():
    return response_pool.load_pool(POOL)


def test_pool_file_is_small_and_has_at_least_1000_real_responses(pool):
    assert POOL.stat().st_size < 1_000_000
    assert len(pool) >= 1000
    assert len({p["id"] for p in pool}) == len(pool)
    assert all(p["response_token_ids"] for p in pool)


def test_pool_spreads_over_policies_temperatures_and_prompts_with_crisis_cues(pool):
    assert {p["policy"] for p in pool} == {"base", "sft"}
    assert len({p["temperature"] for p in pool}) >= 3
    prompts = {p["prompt_id"] for p in pool}
    assert len(prompts) >= 15
    assert len({p["prompt_id"] for p in pool if p["category"] == "crisis"}) >= 3
    cued = {p["prompt_id"] for p in pool if p["crisis_cue"]}
    assert len(cued) >= 3  # prompts the safety screen recognises as crises stay in the benchmark
    assert all(p["safety_flagged"] for p in pool if p["crisis_cue"])
    groups: dict[tuple, int] = {}
    for p in pool:
        key = (p["policy"], p["temperature"], p["prompt_id"])
        groups[key] = groups.get(key, 0) + 1
    assert len(groups) == 2 * len({p["temperature"] for p in pool}) * len(prompts)  # every cell filled


def test_pool_gives_the_text_experts_a_spread_of_scores(pool):
    texts = [p["response"] for p in pool]
    for rule in (sim_experts.word_rule, sim_experts.form_rule):
        scores = np.array([rule(t) for t in texts])
        assert scores.std() > 0.05
        assert np.quantile(scores, 0.9) - np.quantile(scores, 0.1) > 0.15


# -- the strategy harness -----------------------------------------------------------------------------


def planted(n: int = 120, seed: int = 3):
    """A planted pool: truth is linear in a 6-dimensional feature, embeddings are those features normalised."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    truth = np.clip(0.5 + 0.1 * x[:, 0] - 0.08 * x[:, 1], 0, 1)
    emb = x / np.linalg.norm(x, axis=1, keepdims=True)
    texts = [f"response {i}" for i in range(n)]
    return x, truth, emb, texts


def test_split_keeps_test_and_candidates_apart_and_seeded():
    cand, test = pool_curves.split(100, 0.25, seed=1)
    assert len(test) == 25 and len(cand) == 75
    assert not set(cand) & set(test)
    again = pool_curves.split(100, 0.25, seed=1)
    assert np.array_equal(again[0], cand) and np.array_equal(again[1], test)


def test_uniform_labels_are_the_first_n_of_its_seeded_order():
    x, truth, emb, texts = planted()
    cand, _ = pool_curves.split(len(texts), 0.25, seed=0)
    order = pool_curves.uniform_order(cand, seed=0)
    assert sorted(order) == sorted(cand)

    def never(_):
        raise AssertionError("uniform fits no model to pick")

    grown = pool_curves.grow("uniform", list(order[:10]), 47, order, cand, never, {"m": x}, emb, step=25)
    assert grown == [int(i) for i in order[:47]]


def test_active_picks_the_most_uncertain_unlabelled_candidates():
    x, truth, emb, texts = planted()
    cand = np.arange(20)
    uncertainty = np.linspace(0, 1, 20)

    class Model:
        def predict(self, matrices):
            rows = matrices["m"][:, 0].astype(int)
            return np.zeros(len(rows)), uncertainty[rows]

    ids = np.arange(20, dtype=float)[:, None]
    grown = pool_curves.grow("active", [0, 19], 5, cand, cand, lambda idx: Model(), {"m": ids}, emb, step=3)
    assert grown == [0, 19, 18, 17, 16]  # 19 is labelled already: the next most uncertain


def test_kcenter_picks_the_farthest_candidate_first():
    emb = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    assert pool_curves.kcenter_picks(emb, [0], np.arange(4), 1) == [3]  # opposite to the labelled one
    assert pool_curves.kcenter_picks(emb, [0], np.arange(4), 2) == [3, 2]


def test_curve_learns_a_planted_linear_rule_and_reports_skill_and_rank():
    x, truth, emb, texts = planted(n=200)
    batches = ["a" if i % 2 else "b" for i in range(200)]
    points = pool_curves.curve("uniform", truth, truth, {"m": x}, emb, texts, batches, [10, 100], seed=0,
                               test_fraction=0.25, start=10, step=25)
    assert [p["labels"] for p in points] == [10, 100]
    assert points[-1]["skill"] > 0.9 and points[-1]["rank"] > 0.9
    assert points[-1]["skill"] > points[0]["skill"]


def test_target_check_finds_the_first_checkpoint_active_reaches_uniform_at_400():
    def run(strategy, skills):
        return {"strategy": strategy, "expert": "word", "seed": 0,
                "points": [{"labels": n, "skill": s, "rank": None} for n, s in zip((100, 200, 400), skills)]}

    runs = [run("uniform", (0.1, 0.2, 0.4)), run("active", (0.2, 0.41, 0.5)), run("kcenter", (0.1, 0.2, 0.3))]
    out = pool_curves.target_check(runs, "word")
    assert out["uniform_at_400"] == pytest.approx(0.4)
    assert out["active"] == 200 and out["kcenter"] is None
