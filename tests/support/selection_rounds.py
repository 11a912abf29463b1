"""A run with feedback.selection on, rounds of synthetic responses, a rater whose scores follow a word rule.

Shared by tests/foundation/test_selection.py and tests/operator/test_reward_model_drift.py."""

from __future__ import annotations

import random

from therapy_rlhf.feedback import predictions as sealed
from therapy_rlhf.feedback import selection
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.gate import close_gate
from therapy_rlhf.feedback.rounds import load_round
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.contracts.records import PendingResponse, Rating, SafetyScreen, dump_batch
from therapy_rlhf.store.runs import freeze_spec
from tests.support.manifests import run_manifest

PATHS = RunPaths("default", "sel")
PROMPTS = ["p-a", "p-b", "p-c", "p-d"]
GOOD = "sorry hear understand feel valid here listen care".split()
FILLER = "the a day work then when so it".split()


def manifest(**sel):
    return run_manifest({
                "model": {"source": "tiny:mistral"},
                "storage": {"localPath": "/unused"},
                "ppo": {"rounds": 8},
                "feedback": {
                    "rubric": [{"name": "empathy", "description": "e"}],
                    "selection": {"mode": "active", "budget": 8, "minRatings": 16, "unselected": "model", **sel},
                },
            }, "sel")


def responses(round_no: int, n_per_prompt: int = 8, flagged: int = 0, seed: int = 0) -> list[PendingResponse]:
    rng = random.Random(seed * 100 + round_no)
    out = []
    for p in PROMPTS:
        for k in range(n_per_prompt):
            good = rng.randint(0, 3)
            words = rng.sample(GOOD, good) + [rng.choice(FILLER) for _ in range(6 - good)]
            safety = SafetyScreen(crisis_cues=["self-harm"]) if len(out) < flagged else SafetyScreen()
            out.append(PendingResponse(id=f"r{round_no:04d}-{p}-{k}", round=round_no, prompt_id=p, prompt="How do I cope?",
                                       response=" ".join(words), safety=safety))
    return out


def truth(response: PendingResponse) -> float:
    return min(1.0, sum(w in GOOD for w in response.response.split()) / 3)


def rate_all(store, m, round_no: int, rater: str = "dr-kim", noise: float = 0.0) -> None:
    fb = m.spec.feedback
    state = load_round(store, PATHS, round_no, feedback=fb)
    for r in state.responses:
        value = min(1.0, max(0.0, truth(r) + noise))
        submit_rating(store, PATHS, state, Rating(response_id=r.id, rater=rater, criteria={"empathy": value}, reward=value), fb)


def sample_round(store, m, round_no: int, vault=None, **kw) -> selection.Selection:
    """Select and write a round as the generate job does: predictions sealed (default: the store's own key)."""
    batch = responses(round_no, **kw)
    chosen, predictions = selection.select(store, PATHS, m.spec.feedback, round_no, batch)
    chosen = sealed.seal(vault or sealed.StoreVault(store, PATHS), chosen, predictions)
    store.write_json(PATHS.selection(round_no), chosen.model_dump(mode="json"))
    store.write_bytes(PATHS.batch(round_no), dump_batch(batch))
    return chosen


def predictions_of(store, round_no: int) -> dict[str, list[float]]:
    return sealed.unseal(sealed.StoreVault(store, PATHS), selection.read_selection(store, PATHS, round_no)).predictions


def closed_round_with_model(store, m, noise: float = 0.0):
    """Rounds 1-2 cold (uniform), round 3 on probation (random picks that judge the model), round 4 decided
    by the model (judged skilled at round 3), its ratings off by ``noise``; round 4's gate."""
    freeze_spec(store, m)
    for r in (1, 2, 3):
        sample_round(store, m, r)
        rate_all(store, m, r)
        close_gate(store, PATHS, r, m.spec.feedback)
    sample_round(store, m, 4)
    rate_all(store, m, 4, noise=noise)
    return close_gate(store, PATHS, 4, m.spec.feedback).gate
