"""The run's state machine: one pure function shared by the operator and the local runner.

``plan(spec, observed) -> Decision``. ``observed`` is what an executor saw (the
store's markers and its own job states); the decision names the single next
action. Executors only carry actions out: the operator maps jobs to
Kubernetes Jobs, the local runner to subprocesses. Because every input is
observed afresh, an executor that was killed and restarted resumes from
whatever the store already holds.

Progress markers in the store (written last by each step):
    sft done       sft/metrics.json
    round r        rounds/r/batch.jsonl -> gate.json -> policy/metrics.json
    evaluation     eval/results.json

One Job per round (``spec.ppo.oneJobPerRound``, the default): after round 1's
generate, round r's update and round r+1's generation are one ``ppo-generate``
Job, so the model is loaded once between the last rating of a round and the
next batch. The Job writes round r's checkpoint (marker last) before it
samples, so its two halves are two steps of this state machine: a Job that
dies after the update leaves round r updated and round r+1 without a batch,
which is an ordinary ``generate`` step. The last round has nothing to sample
and is a plain ``ppo`` Job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

from therapy_rlhf.contracts import phases
from therapy_rlhf.contracts.jobkinds import EVALUATE, GENERATE, PHASE_OF_JOB, PPO, PPO_GENERATE, SFT
from therapy_rlhf.contracts.spec import RunSpec
from therapy_rlhf.planning.stopping import plateau

JobState = Literal["running", "succeeded", "failed"]

# Round number used for jobs that belong to the whole run (sft, evaluate).
RUN_LEVEL = 0


# ------------------------------------------------------------------ observed


@dataclass(frozen=True)
class JobObservation:
    """The newest attempt of one (kind, round) job, as the executor sees it."""

    kind: str
    round: int
    attempt: int
    state: JobState
    failures: int = 0
    reason: str = ""


@dataclass(frozen=True)
class RoundObservation:
    round: int
    batch: bool = False
    # The gate is closed: gate.json exists and the executor itself closed it
    # (its digest is in the executor's record). A gate.json nobody closed is
    # never acted on: the round is still awaiting ratings.
    gate: bool = False
    # A gate.json is in the store that the executor did not record (ignored; replaced on close).
    gate_unrecorded: bool = False
    policy: bool = False
    rated: int = 0
    total: int = 0
    complete: bool = False
    awaiting_since: float | None = None
    # rounds/r/fluency.json of the round awaiting ratings (jobs/fluency.py), None when absent
    fluency: dict | None = None
    # the closed gate's mean reward, read for the last ppo.stopping.window rounds only (the stopping rule)
    mean_reward: float | None = None


@dataclass(frozen=True)
class Observed:
    sft_done: bool = False
    eval_done: bool = False
    rounds: dict[int, RoundObservation] = field(default_factory=dict)
    jobs: dict[tuple[str, int], JobObservation] = field(default_factory=dict)
    close_gate_requested: bool = False
    now: float = 0.0

    def round(self, r: int) -> RoundObservation:
        return self.rounds.get(r, RoundObservation(r))


# ------------------------------------------------------------------- actions


@dataclass(frozen=True)
class StartJob:
    kind: str
    round: int
    attempt: int = 1


@dataclass(frozen=True)
class WaitForJob:
    kind: str
    round: int
    attempt: int


@dataclass(frozen=True)
class WaitForRatings:
    round: int
    rated: int
    total: int
    overdue: bool = False


@dataclass(frozen=True)
class CloseGate:
    round: int
    reason: Literal["complete", "override", "deadline"]


@dataclass(frozen=True)
class Suspend:
    pass


@dataclass(frozen=True)
class Finish:
    pass


@dataclass(frozen=True)
class Fail:
    reason: str


Action = Union[StartJob, WaitForJob, WaitForRatings, CloseGate, Suspend, Finish, Fail]


@dataclass(frozen=True)
class Decision:
    action: Action
    phase: str
    round: int
    reason: str
    message: str


# -------------------------------------------------------------------- planner


def _job_step(spec: RunSpec, obs: Observed, kind: str, r: int) -> Decision:
    """Decide for a step whose marker is missing: wait, (re)start, suspend or fail."""
    phase = PHASE_OF_JOB[kind]
    label = kind if r == RUN_LEVEL else f"{kind} (round {r})"
    job = obs.jobs.get((kind, r))
    if job is not None and job.state == "running":
        return Decision(WaitForJob(kind, r, job.attempt), phase, r, phases.R_JOB_RUNNING, f"{label} job running (attempt {job.attempt})")
    if spec.suspend:
        return Decision(Suspend(), phases.SUSPENDED, r, phases.R_SUSPENDED, f"suspended before {label}")
    if job is None:
        return Decision(StartJob(kind, r, 1), phase, r, phases.R_JOB_STARTED, f"starting {label}")
    failures = job.failures
    why = job.reason or "no reason given"
    reason = phases.R_JOB_FAILED
    if job.state == "succeeded":
        # The job exited 0 but its marker is not in the store: a failure.
        failures += 1
        reason = phases.R_JOB_OUTPUT_MISSING
        why = "the job succeeded but its output is missing from the store"
    if failures > spec.backoff_limit:
        return Decision(
            Fail(f"{label} job failed {failures} time(s), backoffLimit is {spec.backoff_limit}: {why}"),
            phases.FAILED, r, reason, f"{label} failed: {why}",
        )
    return Decision(
        StartJob(kind, r, job.attempt + 1), phase, r, phases.R_JOB_RETRYING,
        f"retrying {label} (attempt {job.attempt + 1} of {spec.backoff_limit + 1}) after: {why}",
    )


def _generate_step(spec: RunSpec, obs: Observed, r: int) -> Decision:
    """Round r has no batch: wait for the one-Job round still sampling it, or run a generate Job."""
    fused = obs.jobs.get((PPO_GENERATE, r - 1))
    if fused is not None and fused.state == "running":
        # Round r-1's update is stored; the same Job is now sampling round r.
        return Decision(
            WaitForJob(PPO_GENERATE, r - 1, fused.attempt), phases.GENERATING, r, phases.R_JOB_RUNNING,
            f"{PPO_GENERATE} (round {r - 1}) job generating round {r} (attempt {fused.attempt})",
        )
    return _job_step(spec, obs, GENERATE, r)


def _update_kind(spec: RunSpec, r: int) -> str:
    """ppo-generate while another round follows (and the spec asks for one Job per round), else ppo."""
    return PPO_GENERATE if spec.ppo.one_job_per_round and r < spec.ppo.rounds else PPO


def _gate_step(spec: RunSpec, obs: Observed, ro: RoundObservation) -> Decision:
    r = ro.round
    fb = spec.feedback
    progress = f"round {r}: {ro.rated}/{ro.total} responses have >= {fb.min_raters} rater(s)"
    if ro.complete:
        return Decision(CloseGate(r, "complete"), phases.AWAITING_RATINGS, r, phases.R_GATE_CLOSED, f"{progress}: closing gate")
    if obs.close_gate_requested and ro.rated > 0:
        return Decision(CloseGate(r, "override"), phases.AWAITING_RATINGS, r, phases.R_GATE_OVERRIDDEN, f"{progress}: closing gate by override")
    overdue = (
        fb.gate_deadline_seconds is not None
        and ro.awaiting_since is not None
        and obs.now - ro.awaiting_since > fb.gate_deadline_seconds
    )
    if overdue and fb.on_deadline == "Fail":
        return Decision(
            Fail(f"round {r} gate deadline of {fb.gate_deadline_seconds}s passed with {ro.rated}/{ro.total} rated"),
            phases.FAILED, r, phases.R_GATE_DEADLINE_EXCEEDED, f"{progress}: deadline passed",
        )
    reason = phases.R_GATE_DEADLINE_EXCEEDED if overdue else phases.R_WAITING_FOR_RATINGS
    note = " (deadline passed; holding)" if overdue else ""
    if obs.close_gate_requested and ro.rated == 0:
        note += " (close-gate requested, but nothing is rated yet)"
    return Decision(WaitForRatings(r, ro.rated, ro.total, overdue), phases.AWAITING_RATINGS, r, reason, progress + note)


def fluency_collapse(spec: RunSpec, fluency: dict | None) -> str | None:
    """Why a batch counts as collapsed under ``spec.fluency`` 's thresholds, or None (also when unmeasured)."""
    if not fluency:
        return None
    guard = spec.fluency
    ll, share = fluency.get("mean_log_likelihood"), fluency.get("dictionary_share")
    if guard.min_log_likelihood is not None and ll is not None and ll < guard.min_log_likelihood:
        return f"mean log-likelihood under the base model {ll:.2f} < fluency.minLogLikelihood {guard.min_log_likelihood:g}"
    if guard.min_dictionary_share is not None and share is not None and share < guard.min_dictionary_share:
        return f"dictionary-word share {share:.2f} < fluency.minDictionaryShare {guard.min_dictionary_share:g}"
    return None


def plan(spec: RunSpec, obs: Observed) -> Decision:
    """The next action for a run, from its spec and what the executor observed."""
    # 1. The optional SFT baseline.
    if spec.sft.enabled and not obs.sft_done:
        return _job_step(spec, obs, SFT, RUN_LEVEL)
    # 2. PPO rounds: generate -> gate -> update, in order (update + next generate in one Job by default).
    stopped: tuple[int, str] | None = None
    for r in range(1, spec.ppo.rounds + 1):
        ro = obs.round(r)
        if not ro.batch:
            return _generate_step(spec, obs, r)
        if not ro.gate:
            why = fluency_collapse(spec, ro.fluency)
            if why and not obs.close_gate_requested:  # the close-gate override is the platform's go-ahead
                return Decision(
                    Suspend(), phases.SUSPENDED, r, phases.R_FLUENCY_COLLAPSE,
                    f"round {r}'s batch looks like gibberish ({why}): paused before anyone rates it",
                )
            return _gate_step(spec, obs, ro)
        # The stopping rule, once round r's gate is closed: its update runs alone (no next batch in the same
        # Job), then the run stops or asks before round r+1 is sampled.
        flat = plateau({q: o.mean_reward for q, o in obs.rounds.items()}, r, spec.ppo.stopping.window) if r < spec.ppo.rounds else None
        if not ro.policy:
            return _job_step(spec, obs, PPO if flat else _update_kind(spec, r), r)
        if flat and not obs.round(r + 1).batch:
            if spec.ppo.stopping.mode == "stop":
                stopped = (r, f"stopped after round {r} of {spec.ppo.rounds}: {flat}")
                break
            if not obs.close_gate_requested:  # the close-gate override is the go-ahead for one more round
                return Decision(
                    Suspend(), phases.SUSPENDED, r, phases.R_REWARD_PLATEAU,
                    f"round {r}: {flat}; paused for a decision (the close-gate override runs round {r + 1})",
                )
    # 3. The optional evaluation.
    if spec.evaluation.enabled and not obs.eval_done:
        return _job_step(spec, obs, EVALUATE, RUN_LEVEL)
    if stopped:
        return Decision(Finish(), phases.SUCCEEDED, stopped[0], phases.R_REWARD_PLATEAU, stopped[1])
    return Decision(Finish(), phases.SUCCEEDED, spec.ppo.rounds, phases.R_SUCCEEDED, "run finished")
