"""The planner's transition table: one row per branch of therapy_rlhf/planning/planner.py.

Each row is (spec overrides, what was observed) -> (action, phase, round, reason).
A final check parses planner.py and fails if it uses a reason or an action
that no row expects, so a new branch cannot land untested.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from therapy_rlhf.contracts import phases
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.store.backends import LocalStore
from therapy_rlhf.planning.observe import observe_store
from therapy_rlhf.planning.planner import CloseGate, Fail, Finish, JobObservation, Observed, RoundObservation, StartJob, Suspend, WaitForJob, WaitForRatings, plan
from therapy_rlhf.contracts.records import PendingResponse, Rating, dump_batch
from therapy_rlhf.feedback.gate import close_gate
from therapy_rlhf.feedback.rounds import load_round
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.contracts.spec import RunSpec

PLANNER_SOURCE = Path(__file__).resolve().parents[2] / "therapy_rlhf" / "planning" / "planner.py"


def spec(**over) -> RunSpec:
    doc = {"model": {"source": "tiny:mistral"}, "storage": {"localPath": "/s"}, "ppo": {"rounds": 2}}
    for key, value in over.items():
        if isinstance(value, dict):
            doc[key] = {**doc.get(key, {}), **value}
        else:
            doc[key] = value
    return RunSpec.model_validate(doc)


NO_SFT = {"sft": {"enabled": False}, "evaluation": {"checkpoints": ["base", "final"]}}
NO_EVAL = {"evaluation": {"enabled": False}}


def done_round(r: int) -> RoundObservation:
    return RoundObservation(r, batch=True, gate=True, policy=True)


def awaiting(r: int, rated: int = 0, total: int = 8, since: float | None = 1000.0) -> RoundObservation:
    return RoundObservation(r, batch=True, rated=rated, total=total, complete=rated == total, awaiting_since=since)


def job(kind, r, state, attempt=1, failures=0, reason=""):
    return {(kind, r): JobObservation(kind, r, attempt, state, failures, reason)}


ASK = {"ppo": {"rounds": 6, "stopping": {"window": 3, "mode": "ask"}}}
STOP = {"ppo": {"rounds": 6, "stopping": {"window": 3, "mode": "stop"}}}


def _rewarded(values, gated=None, done=None) -> dict[int, RoundObservation]:
    """Rounds 1..n with their gates' mean rewards; the last one gated only (``gated``) or updated (``done``)."""
    n = gated or done
    return {r: RoundObservation(r, batch=True, gate=True, policy=r < n or done is not None, mean_reward=values[r - 1]) for r in range(1, n + 1)}


def flat(**kw):
    return _rewarded([0.50, 0.52, 0.49], **kw)


def rising(**kw):
    return _rewarded([0.30, 0.45, 0.60], **kw)


DEADLINE = {"feedback": {"gateDeadlineSeconds": 3600, "onDeadline": "Fail"}}
HOLD = {"feedback": {"gateDeadlineSeconds": 3600, "onDeadline": "Hold"}}
SFT_DONE = {"sft_done": True}
SEPARATE = {"ppo": {"oneJobPerRound": False}}
GATED1 = RoundObservation(1, batch=True, gate=True)
R1 = {1: done_round(1)}
# spec.fluency (issue 17): the guard acts on the stored fluency of the round awaiting ratings
FLUENCY = {"fluency": {"minLogLikelihood": -4.0, "minDictionaryShare": 0.8}}
GIBBERISH = {"mean_log_likelihood": -7.2, "dictionary_share": 0.95}
INVENTED_WORDS = {"mean_log_likelihood": -2.0, "dictionary_share": 0.41}
FLUENT = {"mean_log_likelihood": -1.6, "dictionary_share": 0.97}


def measured(r: int, fluency: dict, rated: int = 0) -> RoundObservation:
    return RoundObservation(r, batch=True, rated=rated, total=8, complete=False, awaiting_since=1000.0, fluency=fluency)

ALL = {1: done_round(1), 2: done_round(2)}

# name, spec overrides, observed, expected action, phase, round, reason
TABLE = [
    # --- SFT on / off
    ("fresh run starts sft", {}, Observed(), StartJob("sft", 0, 1), phases.SFT, 0, phases.R_JOB_STARTED),
    ("sft off starts generate 1", NO_SFT, Observed(), StartJob("generate", 1, 1), phases.GENERATING, 1, phases.R_JOB_STARTED),
    ("sft running", {}, Observed(jobs=job("sft", 0, "running")), WaitForJob("sft", 0, 1), phases.SFT, 0, phases.R_JOB_RUNNING),
    ("sft done starts generate 1", {}, Observed(**SFT_DONE), StartJob("generate", 1, 1), phases.GENERATING, 1, phases.R_JOB_STARTED),
    # --- job failure and backoff (backoffLimit 2 -> 3 attempts)
    ("failed sft retried", {}, Observed(jobs=job("sft", 0, "failed", 1, 1, "OOM")), StartJob("sft", 0, 2), phases.SFT, 0, phases.R_JOB_RETRYING),
    ("failed twice retried", {}, Observed(jobs=job("sft", 0, "failed", 2, 2, "OOM")), StartJob("sft", 0, 3), phases.SFT, 0, phases.R_JOB_RETRYING),
    ("failed past backoffLimit fails run", {}, Observed(jobs=job("sft", 0, "failed", 3, 3, "OOM")), Fail, phases.FAILED, 0, phases.R_JOB_FAILED),
    ("backoffLimit 0 fails at once", {"backoffLimit": 0}, Observed(**SFT_DONE, jobs=job("generate", 1, "failed", 1, 1)), Fail, phases.FAILED, 1, phases.R_JOB_FAILED),
    ("succeeded but marker missing retried", {}, Observed(**SFT_DONE, jobs=job("generate", 1, "succeeded")), StartJob("generate", 1, 2), phases.GENERATING, 1, phases.R_JOB_RETRYING),
    ("marker missing past limit fails", {"backoffLimit": 1}, Observed(**SFT_DONE, jobs=job("generate", 1, "succeeded", 2, 1)), Fail, phases.FAILED, 1, phases.R_JOB_OUTPUT_MISSING),
    # --- suspend and resume
    ("suspended before sft", {"suspend": True}, Observed(), Suspend(), phases.SUSPENDED, 0, phases.R_SUSPENDED),
    ("suspended lets the running job finish", {"suspend": True}, Observed(**SFT_DONE, jobs=job("generate", 1, "running")), WaitForJob("generate", 1, 1), phases.GENERATING, 1, phases.R_JOB_RUNNING),
    ("suspended before ppo", {"suspend": True}, Observed(**SFT_DONE, rounds={1: RoundObservation(1, batch=True, gate=True)}), Suspend(), phases.SUSPENDED, 1, phases.R_SUSPENDED),
    ("suspended failed job is not retried", {"suspend": True}, Observed(**SFT_DONE, jobs=job("generate", 1, "failed", 1, 1)), Suspend(), phases.SUSPENDED, 1, phases.R_SUSPENDED),
    ("resumed (suspend false) retries", {}, Observed(**SFT_DONE, jobs=job("generate", 1, "failed", 1, 1)), StartJob("generate", 1, 2), phases.GENERATING, 1, phases.R_JOB_RETRYING),
    # --- the gate
    ("waiting for ratings", {}, Observed(**SFT_DONE, rounds={1: awaiting(1, 3)}), WaitForRatings(1, 3, 8, False), phases.AWAITING_RATINGS, 1, phases.R_WAITING_FOR_RATINGS),
    ("suspend does not skip a gate", {"suspend": True}, Observed(**SFT_DONE, rounds={1: awaiting(1, 3)}), WaitForRatings(1, 3, 8, False), phases.AWAITING_RATINGS, 1, phases.R_WAITING_FOR_RATINGS),
    ("gate complete closes", {}, Observed(**SFT_DONE, rounds={1: awaiting(1, 8)}), CloseGate(1, "complete"), phases.AWAITING_RATINGS, 1, phases.R_GATE_CLOSED),
    ("override with ratings closes", {}, Observed(**SFT_DONE, rounds={1: awaiting(1, 2)}, close_gate_requested=True), CloseGate(1, "override"), phases.AWAITING_RATINGS, 1, phases.R_GATE_OVERRIDDEN),
    ("override without ratings waits", {}, Observed(**SFT_DONE, rounds={1: awaiting(1, 0)}, close_gate_requested=True), WaitForRatings(1, 0, 8, False), phases.AWAITING_RATINGS, 1, phases.R_WAITING_FOR_RATINGS),
    ("deadline not yet passed", DEADLINE, Observed(**SFT_DONE, rounds={1: awaiting(1, 3)}, now=1000.0 + 3600), WaitForRatings(1, 3, 8, False), phases.AWAITING_RATINGS, 1, phases.R_WAITING_FOR_RATINGS),
    ("deadline passed, Fail", DEADLINE, Observed(**SFT_DONE, rounds={1: awaiting(1, 3)}, now=1000.0 + 3601), Fail, phases.FAILED, 1, phases.R_GATE_DEADLINE_EXCEEDED),
    ("deadline passed, Hold", HOLD, Observed(**SFT_DONE, rounds={1: awaiting(1, 3)}, now=1000.0 + 3601), WaitForRatings(1, 3, 8, True), phases.AWAITING_RATINGS, 1, phases.R_GATE_DEADLINE_EXCEEDED),
    ("no deadline waits forever", {}, Observed(**SFT_DONE, rounds={1: awaiting(1, 3)}, now=1e12), WaitForRatings(1, 3, 8, False), phases.AWAITING_RATINGS, 1, phases.R_WAITING_FOR_RATINGS),
    ("unknown wait start is never overdue", DEADLINE, Observed(**SFT_DONE, rounds={1: awaiting(1, 3, since=None)}, now=1e12), WaitForRatings(1, 3, 8, False), phases.AWAITING_RATINGS, 1, phases.R_WAITING_FOR_RATINGS),
    ("complete gate wins over the deadline", DEADLINE, Observed(**SFT_DONE, rounds={1: awaiting(1, 8)}, now=1e12), CloseGate(1, "complete"), phases.AWAITING_RATINGS, 1, phases.R_GATE_CLOSED),
    # --- the fluency guard
    ("gibberish batch pauses before rating", FLUENCY, Observed(**SFT_DONE, rounds={1: measured(1, GIBBERISH)}), Suspend(), phases.SUSPENDED, 1, phases.R_FLUENCY_COLLAPSE),
    ("invented words pause before rating", FLUENCY, Observed(**SFT_DONE, rounds={1: measured(1, INVENTED_WORDS)}), Suspend(), phases.SUSPENDED, 1, phases.R_FLUENCY_COLLAPSE),
    ("fluent batch is rated", FLUENCY, Observed(**SFT_DONE, rounds={1: measured(1, FLUENT)}), WaitForRatings(1, 0, 8, False), phases.AWAITING_RATINGS, 1, phases.R_WAITING_FOR_RATINGS),
    ("no threshold: measured, never acted on", {}, Observed(**SFT_DONE, rounds={1: measured(1, GIBBERISH)}), WaitForRatings(1, 0, 8, False), phases.AWAITING_RATINGS, 1, phases.R_WAITING_FOR_RATINGS),
    ("unmeasured batch is rated", FLUENCY, Observed(**SFT_DONE, rounds={1: awaiting(1, 0)}), WaitForRatings(1, 0, 8, False), phases.AWAITING_RATINGS, 1, phases.R_WAITING_FOR_RATINGS),
    ("close-gate override goes past the guard", FLUENCY, Observed(**SFT_DONE, rounds={1: measured(1, GIBBERISH, rated=2)}, close_gate_requested=True), CloseGate(1, "override"), phases.AWAITING_RATINGS, 1, phases.R_GATE_OVERRIDDEN),
    # --- PPO update and the next round (default: one ppo-generate Job per round after the first)
    ("gated round starts ppo-generate", {}, Observed(**SFT_DONE, rounds={1: GATED1}), StartJob("ppo-generate", 1, 1), phases.UPDATING, 1, phases.R_JOB_STARTED),
    ("ppo-generate running, updating", {}, Observed(**SFT_DONE, rounds={1: GATED1}, jobs=job("ppo-generate", 1, "running", 2)), WaitForJob("ppo-generate", 1, 2), phases.UPDATING, 1, phases.R_JOB_RUNNING),
    ("ppo-generate running after the update, generating", {}, Observed(**SFT_DONE, rounds=R1, jobs=job("ppo-generate", 1, "running")), WaitForJob("ppo-generate", 1, 1), phases.GENERATING, 2, phases.R_JOB_RUNNING),
    ("suspend lets ppo-generate finish its batch", {"suspend": True}, Observed(**SFT_DONE, rounds=R1, jobs=job("ppo-generate", 1, "running")), WaitForJob("ppo-generate", 1, 1), phases.GENERATING, 2, phases.R_JOB_RUNNING),
    ("ppo-generate failed before the update retried", {}, Observed(**SFT_DONE, rounds={1: GATED1}, jobs=job("ppo-generate", 1, "failed", 1, 1)), StartJob("ppo-generate", 1, 2), phases.UPDATING, 1, phases.R_JOB_RETRYING),
    ("ppo-generate failed past limit", {}, Observed(**SFT_DONE, rounds={1: GATED1}, jobs=job("ppo-generate", 1, "failed", 3, 3)), Fail, phases.FAILED, 1, phases.R_JOB_FAILED),
    ("crash between update and generate starts generate", {}, Observed(**SFT_DONE, rounds=R1, jobs=job("ppo-generate", 1, "failed", 1, 1, "killed")), StartJob("generate", 2, 1), phases.GENERATING, 2, phases.R_JOB_STARTED),
    ("crash between update and generate, past the limit, still generates", {}, Observed(**SFT_DONE, rounds=R1, jobs=job("ppo-generate", 1, "failed", 3, 3)), StartJob("generate", 2, 1), phases.GENERATING, 2, phases.R_JOB_STARTED),
    ("ppo-generate exited 0 without the batch starts generate", {}, Observed(**SFT_DONE, rounds=R1, jobs=job("ppo-generate", 1, "succeeded")), StartJob("generate", 2, 1), phases.GENERATING, 2, phases.R_JOB_STARTED),
    ("suspended after a crash between update and generate", {"suspend": True}, Observed(**SFT_DONE, rounds=R1, jobs=job("ppo-generate", 1, "failed", 1, 1)), Suspend(), phases.SUSPENDED, 2, phases.R_SUSPENDED),
    ("the last round is a plain ppo", {}, Observed(**SFT_DONE, rounds={1: done_round(1), 2: RoundObservation(2, batch=True, gate=True)}), StartJob("ppo", 2, 1), phases.UPDATING, 2, phases.R_JOB_STARTED),
    ("one round only is a plain ppo", {"ppo": {"rounds": 1}}, Observed(**SFT_DONE, rounds={1: GATED1}), StartJob("ppo", 1, 1), phases.UPDATING, 1, phases.R_JOB_STARTED),
    # --- separate Jobs by spec (oneJobPerRound: false)
    ("separate: gated round starts ppo", SEPARATE, Observed(**SFT_DONE, rounds={1: GATED1}), StartJob("ppo", 1, 1), phases.UPDATING, 1, phases.R_JOB_STARTED),
    ("separate: ppo running", SEPARATE, Observed(**SFT_DONE, rounds={1: GATED1}, jobs=job("ppo", 1, "running", 2)), WaitForJob("ppo", 1, 2), phases.UPDATING, 1, phases.R_JOB_RUNNING),
    ("separate: ppo failed past limit", SEPARATE, Observed(**SFT_DONE, rounds={1: GATED1}, jobs=job("ppo", 1, "failed", 3, 3)), Fail, phases.FAILED, 1, phases.R_JOB_FAILED),
    ("round 1 updated starts generate 2", {}, Observed(**SFT_DONE, rounds=R1), StartJob("generate", 2, 1), phases.GENERATING, 2, phases.R_JOB_STARTED),
    ("separate: round 1 updated starts generate 2", SEPARATE, Observed(**SFT_DONE, rounds=R1), StartJob("generate", 2, 1), phases.GENERATING, 2, phases.R_JOB_STARTED),
    ("a stale job of an earlier step is ignored", {}, Observed(**SFT_DONE, rounds=R1, jobs=job("generate", 1, "failed", 3, 3)), StartJob("generate", 2, 1), phases.GENERATING, 2, phases.R_JOB_STARTED),
    # --- evaluation on / off, finish
    ("all rounds done starts evaluate", {}, Observed(**SFT_DONE, rounds=ALL), StartJob("evaluate", 0, 1), phases.EVALUATING, 0, phases.R_JOB_STARTED),
    ("evaluate failed retried", {}, Observed(**SFT_DONE, rounds=ALL, jobs=job("evaluate", 0, "failed", 1, 1)), StartJob("evaluate", 0, 2), phases.EVALUATING, 0, phases.R_JOB_RETRYING),
    ("evaluation done finishes", {}, Observed(**SFT_DONE, eval_done=True, rounds=ALL), Finish(), phases.SUCCEEDED, 2, phases.R_SUCCEEDED),
    ("evaluation off finishes", NO_EVAL, Observed(**SFT_DONE, rounds=ALL), Finish(), phases.SUCCEEDED, 2, phases.R_SUCCEEDED),
    ("sft and evaluation off", {**NO_SFT, "evaluation": {"enabled": False}}, Observed(rounds=ALL), Finish(), phases.SUCCEEDED, 2, phases.R_SUCCEEDED),
    ("finished run ignores suspend", {"suspend": True}, Observed(**SFT_DONE, eval_done=True, rounds=ALL), Finish(), phases.SUCCEEDED, 2, phases.R_SUCCEEDED),
    # --- ppo.stopping (issue 21): planted gate rewards over a window of 3
    ("flat rewards: round 3's update runs alone", ASK, Observed(**SFT_DONE, rounds=flat(gated=3)), StartJob("ppo", 3, 1), phases.UPDATING, 3, phases.R_JOB_STARTED),
    ("rising rewards: the update samples the next round", ASK, Observed(**SFT_DONE, rounds=rising(gated=3)), StartJob("ppo-generate", 3, 1), phases.UPDATING, 3, phases.R_JOB_STARTED),
    ("flat rewards, ask: paused for a decision", ASK, Observed(**SFT_DONE, rounds=flat(done=3)), Suspend(), phases.SUSPENDED, 3, phases.R_REWARD_PLATEAU),
    ("flat rewards, ask, override: one more round", ASK, Observed(**SFT_DONE, rounds=flat(done=3), close_gate_requested=True), StartJob("generate", 4, 1), phases.GENERATING, 4, phases.R_JOB_STARTED),
    ("rising rewards go on", ASK, Observed(**SFT_DONE, rounds=rising(done=3)), StartJob("generate", 4, 1), phases.GENERATING, 4, phases.R_JOB_STARTED),
    ("flat rewards, stop: evaluation next", STOP, Observed(**SFT_DONE, rounds=flat(done=3)), StartJob("evaluate", 0, 1), phases.EVALUATING, 0, phases.R_JOB_STARTED),
    ("flat rewards, stop: finished at that round", STOP, Observed(**SFT_DONE, eval_done=True, rounds=flat(done=3)), Finish(), phases.SUCCEEDED, 3, phases.R_REWARD_PLATEAU),
    ("too few rounds for the window", ASK, Observed(**SFT_DONE, rounds=dict(list(flat(done=3).items())[:2])), StartJob("generate", 3, 1), phases.GENERATING, 3, phases.R_JOB_STARTED),
]


@pytest.mark.parametrize("name,over,observed,action,phase,round_no,reason", TABLE, ids=[row[0] for row in TABLE])
def test_transition(name, over, observed, action, phase, round_no, reason):
    decision = plan(spec(**over), observed)
    if isinstance(action, type):
        assert isinstance(decision.action, action), decision
    else:
        assert decision.action == action, decision
    assert (decision.phase, decision.round, decision.reason) == (phase, round_no, reason), decision
    assert decision.message and "\n" not in decision.message


def test_fail_reasons_say_what_happened():
    d = plan(spec(), Observed(jobs=job("sft", 0, "failed", 3, 3, "CUDA out of memory")))
    assert "sft job failed 3 time(s), backoffLimit is 2: CUDA out of memory" == d.action.reason
    d = plan(spec(backoffLimit=0), Observed(**SFT_DONE, jobs=job("generate", 1, "succeeded")))
    assert "output is missing from the store" in d.action.reason and "(round 1)" in d.action.reason
    d = plan(spec(**DEADLINE), Observed(**SFT_DONE, rounds={1: awaiting(1, 3)}, now=1e9))
    assert d.action.reason == "round 1 gate deadline of 3600s passed with 3/8 rated"
    d = plan(spec(**HOLD), Observed(**SFT_DONE, rounds={1: awaiting(1, 3)}, now=1e9))
    assert "deadline passed; holding" in d.message
    d = plan(spec(), Observed(**SFT_DONE, rounds={1: awaiting(1, 0)}, close_gate_requested=True))
    assert "nothing is rated yet" in d.message


def test_fluency_pause_says_which_measure_and_round():
    d = plan(spec(**FLUENCY), Observed(**SFT_DONE, rounds={1: measured(1, GIBBERISH)}))
    assert d.message == (
        "round 1's batch looks like gibberish (mean log-likelihood under the base model -7.20 < "
        "fluency.minLogLikelihood -4): paused before anyone rates it"
    )
    d = plan(spec(**FLUENCY), Observed(**SFT_DONE, rounds={1: measured(1, INVENTED_WORDS)}))
    assert "dictionary-word share 0.41 < fluency.minDictionaryShare 0.8" in d.message


def test_observe_reads_the_fluency_of_the_round_awaiting_ratings(store):
    s = spec(ppo={"rounds": 2})
    paths = RunPaths("default", "demo")
    _batch(store, paths, 1)
    store.write_json(paths.fluency(1), GIBBERISH)
    observed, _ = observe_store(store, paths, s)
    assert observed.round(1).fluency == GIBBERISH
    store.write_bytes(paths.fluency(1), b"{not json")  # damaged: the guard cannot act, the run is not stopped
    observed, _ = observe_store(store, paths, s)
    assert observed.round(1).fluency is None


def test_retry_count_uses_the_spec_limit():
    """Attempts 1..backoffLimit+1 are allowed, the next failure fails the run."""
    for limit in range(0, 5):
        s = spec(backoffLimit=limit)
        for failures in range(1, limit + 3):
            d = plan(s, Observed(jobs=job("sft", 0, "failed", failures, failures)))
            if failures <= limit:
                assert d.action == StartJob("sft", 0, failures + 1)
            else:
                assert isinstance(d.action, Fail)


def test_table_covers_every_branch_of_the_planner():
    source = PLANNER_SOURCE.read_text()
    used_reasons = set(re.findall(r"phases\.(R_[A-Z_]+)", source))
    covered = {name for name, value in vars(phases).items() if name.startswith("R_") and value in {row[6] for row in TABLE}}
    assert used_reasons <= covered, f"untested reasons: {sorted(used_reasons - covered)}"
    tree = ast.parse(source)
    constructed = {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id[0].isupper()
    } - {"Decision", "RoundObservation", "Observed"}
    kinds = {(row[3] if isinstance(row[3], type) else type(row[3])).__name__ for row in TABLE}
    assert constructed <= kinds, f"untested actions: {sorted(constructed - kinds)}"
    gate_reasons = {row[3].reason for row in TABLE if isinstance(row[3], CloseGate)}
    assert gate_reasons == {"complete", "override"}


# ------------------------------------------------- resuming from the store


def _batch(store, paths, r, n=2):
    items = [PendingResponse(id=f"r{r:04d}-{i}", round=r, prompt_id="p", prompt="x", response="y") for i in range(n)]
    store.write_bytes(paths.batch(r), dump_batch(items))


@pytest.mark.parametrize("one_job", [True, False], ids=["one-job-per-round", "separate-jobs"])
def test_resume_from_store_markers(store, one_job):
    """observe_store + plan picks up exactly where the stored markers end."""
    s = spec(ppo={"rounds": 3, "oneJobPerRound": one_job})
    paths = RunPaths("default", "demo")
    if isinstance(store, LocalStore):
        store.root.mkdir(parents=True)  # an empty store (a missing directory is an error naming it)

    def step():
        observed, _ = observe_store(store, paths, s, now=1e12)
        return plan(s, observed)

    assert step().action == StartJob("sft", 0, 1)
    store.write_json(f"{paths.sft_adapter()}/adapter_config.json", {})
    assert step().action == StartJob("sft", 0, 1)  # adapter without marker: sft not done
    store.write_json(paths.sft_metrics(), {})
    assert step().action == StartJob("generate", 1, 1)
    _batch(store, paths, 1)
    d = step()
    assert d.action == WaitForRatings(1, 0, 2, False) and d.phase == phases.AWAITING_RATINGS
    state = load_round(store, paths, 1)
    for rid in state.response_ids:
        submit_rating(store, paths, state, Rating(response_id=rid, rater="dr-lee", reward=0.5,
                                                  criteria={c.name: 0.5 for c in s.feedback.rubric}), s.feedback)
    assert step().action == CloseGate(1, "complete")
    close_gate(store, paths, 1, s.feedback)
    assert step().action == StartJob("ppo-generate" if one_job else "ppo", 1, 1)
    store.write_json(paths.policy_metrics(1), {})
    # (one job per round: the update's marker is stored but the Job died before its batch)
    assert step().action == StartJob("generate", 2, 1)
    for r in (2, 3):
        _batch(store, paths, r)
        store.write_json(paths.gate(r), {})
        store.write_json(paths.policy_metrics(r), {})
    assert step().action == StartJob("evaluate", 0, 1)
    store.write_json(paths.eval_results(), {})
    assert isinstance(step().action, Finish)


def test_observe_store_reads_only_the_awaiting_round(store):
    s = spec(ppo={"rounds": 4}, feedback={"minRaters": 1})
    paths = RunPaths("default", "demo")
    store.write_json(paths.sft_metrics(), {})
    _batch(store, paths, 1, 3)
    observed, state = observe_store(store, paths, s, now=5.0)
    ro = observed.round(1)
    assert (ro.batch, ro.gate, ro.rated, ro.total, ro.complete) == (True, False, 0, 3, False)
    assert ro.awaiting_since == pytest.approx(store.modified_at(paths.batch(1)))
    assert state is not None and state.round == 1 and observed.now == 5.0
    assert 2 not in observed.rounds or not observed.round(2).batch
    # override and job observations pass straight through
    jobs = job("generate", 2, "running")
    observed, _ = observe_store(store, paths, s, jobs=jobs, close_gate_requested=True)
    assert observed.close_gate_requested and observed.jobs == jobs
