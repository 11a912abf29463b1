"""Verified reads: what a rater plants in the store (written straight to it, as anyone with a
rater's credential can) is judged by the run's rules, never by what the object claims.

Each rule is checked where the numbers surface: coverage and the planner's view
(observe_store), the gate, `status` (summarize_round) and `export`."""

from __future__ import annotations

import json

import pytest

from therapy_rlhf.commands.export import export_rows
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.planning.observe import observe_store
from therapy_rlhf.feedback.rewards import RatingError
from therapy_rlhf.feedback.gate import aggregate, close_gate, coverage
from therapy_rlhf.feedback.rounds import load_round, read_gate
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.contracts.records import PendingResponse, Rating, dump_batch
from therapy_rlhf.store.runs import freeze_spec
from therapy_rlhf.feedback.summary import summarize_round
from tests.support.manifests import run_manifest

PATHS = RunPaths("default", "demo")
IDS = ["r0001-a", "r0001-b"]


def make_run(store, **feedback):
    manifest = run_manifest({
                "model": {"source": "tiny:mistral"},
                "storage": {"localPath": "/unused"},
                "ppo": {"rounds": 2},
                "feedback": {"allowedRaters": ["dr-lee", "dr-kim"], **feedback},
            }, "demo")
    freeze_spec(store, manifest)
    batch = [PendingResponse(id=i, round=1, prompt_id="p", prompt="I feel hopeless.", response=f"answer {i}") for i in IDS]
    store.write_bytes(PATHS.batch(1), dump_batch(batch))
    return manifest


@pytest.fixture
def run(store):
    return make_run(store)


def scores(value: float) -> dict[str, float]:
    return {c: value for c in ("empathy", "boundaries", "safe-language", "guidance", "overall")}


def plant(store, rater: str, response: str, data: dict | bytes, version: int = 1) -> None:
    """Write a rating object straight to the store, the way any holder of a rater's credential can."""
    key = PATHS.ratings_prefix(1) + f"{rater}/{response}{'' if version == 1 else f'.v{version}'}.json"
    store.create_bytes(key, data if isinstance(data, bytes) else json.dumps(data).encode())


def honest(store, run, rater: str, response: str, value: float) -> Rating:
    state = load_round(store, PATHS, 1, feedback=run.spec.feedback)
    return submit_rating(store, PATHS, state, Rating(response_id=response, rater=rater, criteria=scores(value)), run.spec.feedback)


def everything(store, run):
    """What each reader makes of round 1."""
    fb = run.spec.feedback
    state = load_round(store, PATHS, 1, feedback=fb)
    observed, _ = observe_store(store, PATHS, run.spec)
    return {
        "coverage": coverage(state, fb.min_raters),
        "rewards": aggregate(state, fb),
        "observed": observed.round(1),
        "summary": summarize_round(store, PATHS, run, 1),
        "export": export_rows(store, PATHS),
        "state": state,
    }


def test_a_rater_not_in_allowed_raters_counts_nowhere(store, run):
    honest(store, run, "dr-lee", "r0001-a", 0.5)
    for resp in IDS:
        plant(store, "mallory", resp, Rating(response_id=resp, rater="mallory", criteria=scores(1.0)).model_dump(mode="json"))
    seen = everything(store, run)
    assert seen["coverage"].complete == 1 and not seen["observed"].complete  # r0001-b is still unrated
    assert set(seen["rewards"]) == {"r0001-a"} and seen["rewards"]["r0001-a"].raters == ["dr-lee"]
    assert seen["summary"].raters == ("dr-lee",) and seen["summary"].garbage == 2
    assert [row["raters"] for row in seen["export"]] == [["dr-lee"]]
    assert any("not in feedback.allowedRaters" in g for g in seen["state"].garbage)
    with pytest.raises(RatingError, match="not fully rated"):
        close_gate(store, PATHS, 1, run.spec.feedback)
    gate = close_gate(store, PATHS, 1, run.spec.feedback, reason="override").gate
    assert list(gate.rewards) == ["r0001-a"] and gate.rewards["r0001-a"].raters == ["dr-lee"]


def test_a_stored_reward_that_the_criteria_do_not_give_is_reported_and_not_used(store, run):
    forged = Rating(response_id="r0001-a", rater="dr-lee", criteria=scores(0.0), reward=1.0)
    plant(store, "dr-lee", "r0001-a", forged.model_dump(mode="json"))
    honest(store, run, "dr-lee", "r0001-b", 0.5)
    seen = everything(store, run)
    assert seen["rewards"]["r0001-a"].reward == 0.0
    assert seen["summary"].mean_reward == 0.25 and seen["summary"].reward_mismatches == 1
    assert "stores reward 1.0, but its criteria give 0.0" in seen["state"].reward_disagreements()[0]
    assert [row["reward"] for row in seen["export"]] == [0.0, 0.5]
    gate = close_gate(store, PATHS, 1, run.spec.feedback).gate
    assert gate.rewards["r0001-a"].reward == 0.0 and gate.mean_reward == 0.25


def test_direct_rewards_are_the_raters_own(store):
    run = make_run(store, rewardRule="direct")
    plant(store, "dr-lee", "r0001-a", Rating(response_id="r0001-a", rater="dr-lee", criteria=scores(0.0), reward=0.9).model_dump(mode="json"))
    assert aggregate(load_round(store, PATHS, 1, feedback=run.spec.feedback), run.spec.feedback)["r0001-a"].reward == 0.9


@pytest.mark.parametrize(
    "planted, why",
    [
        ({"response_id": "r0001-b", "rater": "dr-kim", "criteria": {**scores(1.0), "charm": 1.0}}, "unknown rubric criteria"),
        ({"response_id": "r0001-b", "rater": "dr-kim", "criteria": {"empathy": 1.0}}, "are not scored"),
        ({"response_id": "r0001-b", "rater": "dr-kim", "criteria": scores(1.0), "seconds_spent": "NaN"}, "seconds_spent"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"comment": "' + b"x" * 400_000 + b'"}', "larger than"),
    ],
    ids=["unknown-criteria", "incomplete", "nan", "deep-json", "huge"],
)
def test_a_planted_unusable_rating_is_garbage_and_blocks_nothing(store, run, planted, why):
    for resp in IDS:
        honest(store, run, "dr-lee", resp, 0.5)
    plant(store, "dr-kim", "r0001-b", planted)
    seen = everything(store, run)  # coverage, observe, status, export: none raises
    assert seen["coverage"].is_complete and seen["observed"].complete
    assert seen["summary"].garbage == 1 and why in seen["state"].garbage[0]
    assert len(seen["export"]) == 2 and all(row["raters"] == ["dr-lee"] for row in seen["export"])
    gate = close_gate(store, PATHS, 1, run.spec.feedback).gate
    assert gate.responses_rewarded == 2 and gate.mean_reward == 0.5


def test_ratings_after_the_gate_closed_are_kept_marked_late_and_never_gated(store, run):
    for resp in IDS:
        honest(store, run, "dr-lee", resp, 0.5)
    gate = close_gate(store, PATHS, 1, run.spec.feedback).gate
    before = {k: store.read_bytes(k) for k in store.list("")}
    # A late submission through the rules is refused, and nothing is stored...
    state = load_round(store, PATHS, 1, feedback=run.spec.feedback)
    with pytest.raises(RatingError, match="gate is closed"):
        submit_rating(store, PATHS, state, Rating(response_id="r0001-a", rater="dr-kim", criteria=scores(1.0)), run.spec.feedback)
    assert {k: store.read_bytes(k) for k in store.list("")} == before
    # ...and one written straight to the store is kept but marked late.
    plant(store, "dr-kim", "r0001-a", Rating(response_id="r0001-a", rater="dr-kim", criteria=scores(1.0)).model_dump(mode="json"))
    correction = Rating(response_id="r0001-b", rater="dr-lee", version=2, supersedes="dr-lee/r0001-b/v1", criteria=scores(1.0))
    plant(store, "dr-lee", "r0001-b", correction.model_dump(mode="json"), version=2)
    seen = everything(store, run)
    assert seen["state"].late_ids == {"dr-kim/r0001-a/v1", "dr-lee/r0001-b/v2"}
    assert seen["summary"].late == 2 and seen["summary"].mean_reward == gate.mean_reward == 0.5
    assert seen["summary"].raters == ("dr-lee",)
    rows = seen["export"]
    gated = [r for r in rows if r["gated"]]
    late = [r for r in rows if r["late"]]
    assert [(r["response_id"], r["reward"]) for r in gated] == [("r0001-a", 0.5), ("r0001-b", 0.5)]
    assert [(r["response_id"], r["reward"], r["gated"]) for r in late] == [("r0001-a", 0.75, False), ("r0001-b", 1.0, False)]
    assert read_gate(store, PATHS, 1) == gate


def test_a_garbage_gate_object_is_reported_not_fatal(store, run):
    honest(store, run, "dr-lee", "r0001-a", 0.5)
    store.write_bytes(PATHS.gate(1), b'{"round": "x"}')
    state = load_round(store, PATHS, 1, feedback=run.spec.feedback)
    assert state.gate is None and any("gate.json" in g for g in state.garbage)
    assert summarize_round(store, PATHS, run, 1).ratings == 1
