"""One reconcile of one run: observe, ask the shared planner, carry out its decision.

Observation = the run's Jobs (by label) + the store's markers and rating
coverage (``therapy_rlhf.planning.observe.observe_store``). The decision comes from
``therapy_rlhf.planning.planner.plan`` -- the same state machine the local runner uses;
this module only maps its actions onto Kubernetes objects and the status.

Every failure of the surroundings (invalid spec, missing Secret, unreachable
store, no permission) ends the reconcile with a condition and an Event, never
an exception: kopf would otherwise retry in a tight loop, and nothing is lost
by waiting for the next timer tick.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from therapy_rlhf.contracts import jobkinds, phases
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.contracts.spec import API_GROUP, API_VERSION, KIND, RunManifest, SpecError, parse_spec
from therapy_rlhf.execution import step
from therapy_rlhf.feedback.selection import read_selection
from therapy_rlhf.feedback.summary import summarize_round
from therapy_rlhf.planning.observe import observe_store
from therapy_rlhf.planning.planner import CloseGate, Decision, StartJob, WaitForJob, WaitForRatings, plan
from therapy_rlhf.store import integrity
from therapy_rlhf.store.backends import Store, StoreError
from therapy_rlhf.store.runs import FrozenSpecMismatch, freeze_spec, read_frozen_run

from therapy_rlhf.operator import builders, digests as run_digests, gateclose, kube, metrics, runconfig, runlease
from therapy_rlhf.operator.admission import NotAllowed, check_run
from therapy_rlhf.operator.conditions import Outcome, build_status, is_transition, ready_reason
from therapy_rlhf.operator.config import OperatorConfig
from therapy_rlhf.operator.jobstate import job_state, observe_jobs, pod_failure
from therapy_rlhf.operator.storeaccess import StoreCache, StoreConfigError

# Events: (type, reason, message) -> posted by the caller (kopf.event in production).
EmitFn = Callable[[str, str, str], None]
# Transitions that say something went wrong although the run goes on: a retry after a
# failed Job (its reason is the Job's error line, e.g. an input that failed its digest check).
WARNING_REASONS = (phases.R_JOB_RETRYING, phases.R_JOB_OUTPUT_MISSING)
# Re-plans after a gate closes in one pass, so the PPO Job starts in the same tick.
MAX_STEPS_PER_PASS = 3
# Failed reasons that are re-checked every tick: a spec that may be fixed, and the refusals and
# store/API errors an operator before issue 22 could leave on a Failed run (it kept the phase).
RECHECKED_FAILURES = (
    phases.R_INVALID_SPEC, phases.R_NOT_ALLOWED, phases.R_SECRET_MISSING, phases.R_FORBIDDEN,
    phases.R_STORE_UNAVAILABLE, phases.R_KUBE_API_ERROR, phases.R_HELD_BY_LOCAL_RUNNER,
)


@dataclass
class RunMemory:
    """What the operator remembers about one run between reconciles (lost on restart: all cached)."""

    configmap_ok: bool = False
    spec_mismatch_reported: str = ""
    garbage_reported: dict[int, int] = field(default_factory=dict)  # round -> objects reported
    summaries: dict[int, tuple[Any, dict[str, Any]]] = field(default_factory=dict)
    gate_closed_at: dict[int, float] = field(default_factory=dict)
    # The last outcome an Event was posted for: handlers may see a status not yet patched.
    last_event: tuple = ()
    active_job: str = ""
    # Failed Job name -> why its pod ended (read once per failed Job).
    pod_reasons: dict[str, str] = field(default_factory=dict)
    # (store keys, Observed, RoundState) of the last observation; see _observe.
    observation: tuple | None = None
    # (live spec checked, frozen manifest); see _frozen.
    frozen: tuple[str, RunManifest] | None = None
    # The digest record's working memory (see digests.py).
    digest: run_digests.DigestMemory = field(default_factory=run_digests.DigestMemory)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Round -> what its selection says while it waits (drift, safety cap, resumed; None: nothing);
    # selection.json never changes.
    selection_reasons: dict[int, tuple[str, str] | None] = field(default_factory=dict)
    lease: runlease.OperatorLease = field(default_factory=runlease.OperatorLease)
    # Rounds whose gate a predecessor recorded but may not have announced (None: not read from status yet).
    unannounced: set[int] | None = None


class OperatorState:
    """Process-wide: the API client, store clients, per-run memory."""

    def __init__(self, api: kube.KubeApi, config: OperatorConfig):
        self.api = api
        self.config = config
        self.stores = StoreCache()
        self._runs: dict[str, RunMemory] = {}
        self._lock = threading.Lock()

    def memory(self, uid: str) -> RunMemory:
        with self._lock:
            return self._runs.setdefault(uid, RunMemory())

    def forget(self, uid: str) -> None:
        with self._lock:
            self._runs.pop(uid, None)
        metrics.record_phase(uid, None)


@dataclass
class Result:
    """The status to write and annotations to drop (applied by the kopf wrapper)."""

    status: dict[str, Any] | None
    remove_annotations: list[str] = field(default_factory=list)


def _manifest(body: dict[str, Any], config: OperatorConfig) -> RunManifest:
    meta = body["metadata"]
    spec = parse_spec(config.apply_defaults(body.get("spec")), f"{KIND} {meta.get('namespace')}/{meta.get('name')}")
    return RunManifest.model_validate(
        {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": KIND,
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "spec": spec.to_json_dict(),
        }
    )


def reconcile(
    body: dict[str, Any], state: OperatorState, emit: EmitFn, logger: logging.Logger, now: float | None = None
) -> Result:
    meta = body.get("metadata") or {}
    uid = meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}"
    memory = state.memory(uid)
    # Timer, create/resume and field handlers may overlap: one reconcile per run at a time.
    with memory.lock:
        result = _reconcile(body, state, memory, emit, logger, time.time() if now is None else now)
    status = result.status if result.status is not None else body.get("status") or {}
    metrics.record_phase(uid, status.get("phase") or phases.PENDING)
    return result


def _reconcile(body, state: OperatorState, memory: RunMemory, emit: EmitFn, logger, now: float) -> Result:
    meta = body.get("metadata") or {}
    previous = dict(body.get("status") or {})
    generation = meta.get("generation")
    if previous.get("phase") == phases.SUCCEEDED:
        return Result(None)
    # A run whose Job failed stays failed; an invalid spec is re-checked so that fixing it
    # starts the run (as is a refusal that an older operator left on a Failed run).
    if previous.get("phase") == phases.FAILED and ready_reason(previous) not in RECHECKED_FAILURES:
        return Result(None)

    def finish(outcome: Outcome, severity: str = "Normal", **fields: Any) -> Result:
        key = (outcome.phase, outcome.round, outcome.reason, outcome.message if outcome.blocked else "")
        due = is_transition(previous, outcome) or (outcome.blocked and previous.get("message") != outcome.message)
        # JobStarted is announced by the JobCreated Event, which names the Job.
        if due and key != memory.last_event and outcome.reason != phases.R_JOB_STARTED:
            memory.last_event = key
            warning = outcome.blocked or outcome.phase == phases.FAILED or outcome.reason in WARNING_REASONS or (
                outcome.phase == phases.SUSPENDED and outcome.reason == phases.R_REWARD_PLATEAU  # waits for a person
            )
            emit("Warning" if warning else severity, outcome.reason, outcome.message)
        return Result(build_status(outcome, previous, generation, now, **fields))

    def blocked(reason: str, message: str) -> Result:
        # A refusal or an unreachable store holds the run where it was, re-checked every tick;
        # a run that was Failed for its spec has just been fixed, so it waits in Pending (a
        # Failed phase here would be final: the check above skips Failed runs of other reasons).
        logger.warning(message)
        phase = previous.get("phase") or phases.PENDING
        if phase == phases.FAILED:
            phase = phases.PENDING
        return finish(Outcome(phase, previous.get("round") or 0, reason, message, blocked=True))

    # 1. The spec, validated by the same model the CLI uses.
    try:
        live = _manifest(body, state.config)
    except SpecError as err:
        message = "; ".join(err.problems)
        return finish(Outcome(phases.FAILED, 0, phases.R_INVALID_SPEC, f"invalid spec: {message}"))
    if live.spec.storage.bucket is None:
        return finish(
            Outcome(
                phases.FAILED, 0, phases.R_INVALID_SPEC,
                "invalid spec: spec.storage.localPath is for the local runner; a run on a cluster needs spec.storage.bucket",
            )
        )
    paths = RunPaths(live.namespace, live.name)

    # 2. The store (credentials from the referenced Secret, if it opted in) and the frozen
    #    spec; the image and service account of the Jobs must be allowed here.
    try:
        check_run(live, state.config)
        store = state.stores.store_for(live, state.api, state.config)
        manifest = _frozen(store, live, memory, emit)
        check_run(manifest, state.config)
        runlease.hold(store, paths, memory.lease, now)  # one executor per run
    except runlease.LeaseHeld as err:
        return blocked(phases.R_HELD_BY_LOCAL_RUNNER, str(err))
    except NotAllowed as err:
        return blocked(phases.R_NOT_ALLOWED, f"not allowed: {err}")
    except kube.NotFound as err:
        return blocked(phases.R_SECRET_MISSING, f"credentials Secret not found: {err}")
    except kube.Forbidden as err:
        return blocked(phases.R_FORBIDDEN, f"no permission: {err}")
    except StoreConfigError as err:
        return blocked(phases.R_SECRET_MISSING, str(err))
    except (kube.KubeError, StoreError) as err:
        return blocked(phases.R_STORE_UNAVAILABLE, f"store unavailable: {err}")
    spec = step.effective_spec(manifest.spec, live.spec)

    # 3. Observe, plan, act -- repeated only after a gate closes.
    owner = {"metadata": {"name": meta.get("name"), "uid": meta.get("uid")}}
    announcer = gateclose.Announcer(state.api, {"name": live.name, "namespace": live.namespace, "uid": meta.get("uid")}, logger)
    if memory.unannounced is None:
        memory.unannounced = gateclose.unannounced_gates(previous)
    override = (meta.get("annotations") or {}).get(builders.ANNOTATION_CLOSE_GATE) == "true"
    remove: list[str] = []
    record = {**(previous.get("digests") or {}), **memory.digest.recorded}
    try:
        if not memory.configmap_ok:
            runconfig.ensure(state.api, manifest, owner)
            memory.configmap_ok = True
        for _ in range(MAX_STEPS_PER_PASS):
            observed, awaiting = _observe(store, paths, spec, memory, override, record)
            selecting = spec.feedback.selection.mode != "all"
            if run_digests.refresh(state.api, live.namespace, live.name, paths, observed, record, memory.digest, selecting):
                observed, awaiting = _observe(store, paths, spec, memory, override, record)
            if memory.unannounced:
                gateclose.announce_restored(store, paths, observed, memory.unannounced, announcer)
            decision = plan(spec, observed)
            # Job states matter only for a step whose marker is missing; a run awaiting
            # ratings costs no Kubernetes API call per tick, however many runs wait.
            if not isinstance(decision.action, (WaitForRatings, CloseGate)):
                jobs = state.api.list_jobs(live.namespace, live.name)
                _count_finished(jobs)
                _read_pod_reasons(state.api, live.namespace, jobs, memory)
                observed = replace(observed, jobs=observe_jobs(jobs, live.name, memory.pod_reasons))
                decision = plan(spec, observed)
            if not isinstance(decision.action, CloseGate):
                break
            held = run_digests.hold_for_reports(decision, observed, manifest, memory.digest)
            if held is not decision:  # the selection's Job has not reported its digest yet
                decision = held
                break
            gate = gateclose.close_gate(store, paths, spec, decision, awaiting, announcer, record, memory.digest.recorded)
            memory.gate_closed_at[decision.action.round] = time.time()
            metrics.GATE_WAIT.observe(max(0.0, time.time() - (observed.round(decision.action.round).awaiting_since or now)))
            if decision.action.reason == "override":
                override = False
                remove.append(builders.ANNOTATION_CLOSE_GATE)
            logger.info("gate of round %d closed (%s): mean reward %s", gate.round, gate.reason, gate.mean_reward)
        decision = run_digests.hold_for_reports(decision, observed, manifest, memory.digest)
        active = _act(decision, state, manifest, owner, memory, emit, announcer, previous, record)
        runlease.release_when_ended(memory.lease, decision.phase)
        if awaiting is not None and len(awaiting.garbage) > memory.garbage_reported.get(awaiting.round, 0):
            memory.garbage_reported[awaiting.round] = len(awaiting.garbage)
            emit(
                "Warning", "GarbageRatings",
                f"round {awaiting.round}: {len(awaiting.garbage)} object(s) in the ratings prefix are not valid "
                f"ratings and are ignored; first: {awaiting.garbage[0]}",
            )
        fields = _status_fields(store, paths, manifest, observed, awaiting, active, memory)
        fields["digests"] = dict(sorted(record.items()))
    except kube.Forbidden as err:
        return blocked(phases.R_FORBIDDEN, f"no permission: {err}")
    except (kube.KubeError, StoreError) as err:
        reason = phases.R_STORE_UNAVAILABLE if isinstance(err, StoreError) else phases.R_KUBE_API_ERROR
        return blocked(reason, str(err))
    reason, message = _drift_reason(store, paths, spec, decision, memory)
    result = finish(Outcome(decision.phase, decision.round, reason, message), **fields)
    result.remove_annotations = remove
    return result


def _observe(store: Store, paths: RunPaths, spec, memory: RunMemory, override: bool, record: dict[str, str]):
    """observe_store, skipped while the run's keys are unchanged.

    Every object the observation reads is written whole and never rewritten (ratings
    and corrections are new keys, gate.json is created once; lease.json is not read), so an unchanged key
    listing means an unchanged observation: an idle run awaiting ratings costs
    one LIST per tick instead of reading every rating again.
    """
    now = time.time()
    # The record decides which gates are closed: a change to it is a change, as is a new key.
    keys = (tuple(store.list(paths.root + "/")), tuple(sorted(record.items())))
    cached = memory.observation
    if cached is not None and cached[0] == keys:
        return replace(cached[1], close_gate_requested=override, now=now), cached[2]
    previous = cached[2] if cached is not None else None
    observed, awaiting = observe_store(
        store, paths, spec, close_gate_requested=override, now=now, previous=previous, executor_digests=record
    )
    memory.observation = (keys, observed, awaiting)
    return observed, awaiting


def _frozen(store: Store, live: RunManifest, memory: RunMemory, emit: EmitFn) -> RunManifest:
    # The frozen spec never changes: while the live spec is the one last checked
    # against it, skip the store round trips (a conditional PUT and a GET per tick).
    key = live.spec.model_copy(update={"suspend": False}).model_dump_json()
    if memory.frozen is not None and memory.frozen[0] == key:
        return memory.frozen[1]
    frozen = _freeze(store, live, memory, emit)
    memory.frozen = (key, frozen)
    return frozen


def _freeze(store: Store, live: RunManifest, memory: RunMemory, emit: EmitFn) -> RunManifest:
    try:
        return freeze_spec(store, live)
    except FrozenSpecMismatch as err:
        # The run keeps training with what it started with; say so once per change.
        if memory.spec_mismatch_reported != str(err):
            memory.spec_mismatch_reported = str(err)
            emit("Warning", "SpecChangeIgnored", str(err))
        return read_frozen_run(store, RunPaths(live.namespace, live.name))


def _drift_reason(store, paths, spec, decision: Decision, memory: RunMemory) -> tuple[str, str]:
    """The outcome's reason and message; while a round awaits ratings, what its selection says instead
    (RewardModelDrift, SafetyCapExceeded, RewardModelRecovered: step.selection_reason)."""
    if decision.reason != phases.R_WAITING_FOR_RATINGS or spec.feedback.selection.mode == "all":
        return decision.reason, decision.message
    if decision.round not in memory.selection_reasons:
        try:
            selection = read_selection(store, paths, decision.round)
        except (StoreError, ValueError):
            return decision.reason, decision.message
        memory.selection_reasons[decision.round] = step.selection_reason(selection)
    said = memory.selection_reasons[decision.round]
    if said is None:
        return decision.reason, decision.message
    return said[0], f"{decision.message} ({said[1]})"


def _act(decision: Decision, state: OperatorState, manifest: RunManifest, owner, memory: RunMemory, emit, announcer, previous, record):
    """Carry out the planner's action; returns (Job name, action) of the active Job, or None."""
    action = decision.action
    if isinstance(action, (StartJob, WaitForJob)):
        # The Jobs mount it: an edit is undone before a Job can start with it (and the
        # Jobs check run.json against the frozen spec's digest anyway).
        runconfig.check(state.api, manifest, owner, emit)
    if isinstance(action, WaitForJob):
        memory.active_job = builders.job_name(manifest.name, action.kind, action.round, action.attempt)
        return memory.active_job, action
    if not isinstance(action, StartJob):
        memory.active_job = ""
        return None
    paths = RunPaths(manifest.namespace, manifest.name)
    expect = integrity.expect_args(
        action.kind, action.round, manifest.spec, paths, record, builders.run_config_sha256(manifest)
    )
    job = builders.build_job(manifest, action.kind, action.round, action.attempt, owner, state.config, expect)
    name = job["metadata"]["name"]
    logger = announcer.logger
    created = gateclose.job_event_key(action.kind, action.round, action.attempt), "Normal", "JobCreated", f"created Job {name}: {decision.message}"
    if name in ((previous.get("activeJob") or {}).get("name"), memory.active_job):
        # Status says this Job was running, yet it is gone and its output is missing.
        emit("Warning", "JobMissing", f"Job {name} disappeared before finishing (deleted by hand?); re-creating it")
    try:
        state.api.create_job(job)
    except kube.Conflict:
        # Created by an earlier incarnation of the operator: adopt it (and announce it, if that one could not).
        logger.info("Job %s already exists; adopting it", name)
        announcer.post(*created)
        memory.active_job = name
        return name, action
    memory.active_job = name
    metrics.JOBS_CREATED.labels(kind=action.kind).inc()
    if action.kind in jobkinds.GATED_KINDS and action.round in memory.gate_closed_at:
        metrics.GATE_TO_PPO.observe(time.time() - memory.gate_closed_at.pop(action.round))
    announcer.post(*created)
    logger.info("created Job %s", name)
    return name, action


def _read_pod_reasons(api: kube.KubeApi, namespace: str, jobs: list[dict[str, Any]], memory: RunMemory) -> None:
    """Read why each newly failed Job's pod ended; a pod that cannot be read is no reason to stop."""
    for job in jobs:
        name = (job.get("metadata") or {}).get("name", "")
        if name in memory.pod_reasons or job_state(job)[0] != "failed":
            continue
        try:
            memory.pod_reasons[name] = pod_failure(api.list_job_pods(namespace, name))
        except kube.KubeError as err:  # e.g. RBAC without pods: the Job's own reason stands
            logging.getLogger(__name__).warning("cannot read the pods of Job %s: %s", name, err)
            memory.pod_reasons[name] = ""


def _count_finished(jobs: list[dict[str, Any]]) -> None:
    for job in jobs:
        st, _ = job_state(job)
        if st != "running":
            labels = (job.get("metadata") or {}).get("labels") or {}
            uid = (job.get("metadata") or {}).get("uid") or (job.get("metadata") or {}).get("name")
            metrics.record_job_finished(uid, labels.get(builders.LABEL_KIND, "unknown"), st == "succeeded")


def _status_fields(store, paths, manifest, observed, awaiting, active, memory: RunMemory) -> dict[str, Any]:
    rounds = []
    reward = None
    rated = None
    for r, ro in sorted(observed.rounds.items()):
        if not ro.batch:
            continue
        # Finished rounds never change: summarise them once. The awaiting round is
        # re-read only when its ratings change.
        ratings = len(awaiting.ratings) if awaiting is not None and awaiting.round == r else None
        key = (ro.gate, ro.policy, ro.rated, ro.total, ratings)
        cached = memory.summaries.get(r)
        if cached is None or cached[0] != key:
            summary = summarize_round(store, paths, manifest, r).to_dict()
            if ro.policy:
                summary["checkpoint"] = paths.policy_prefix(r)
            memory.summaries[r] = (key, summary)
        summary = memory.summaries[r][1]
        rounds.append(summary)
        if summary.get("gateClosed") and summary.get("meanReward") is not None:
            reward = summary["meanReward"]
        rated = f"{summary['rated']}/{summary['responses']}"
    evaluation = None
    if observed.eval_done:
        evaluation = _evaluation(store, paths)
    active_job = None
    if active is not None:
        name, action = active
        active_job = {"name": name, "kind": action.kind, "round": action.round, "attempt": action.attempt}
    return {"rounds": rounds, "reward": reward, "rated": rated, "activeJob": active_job, "evaluation": evaluation}


# Keep the status small: results larger than this are referenced, not copied.
MAX_EVAL_SUMMARY_BYTES = 8192


def _evaluation(store: Store, paths: RunPaths) -> dict[str, Any]:
    import json

    summary: dict[str, Any] = {"results": store.describe(paths.eval_results()), "report": store.describe(paths.eval_report())}
    try:
        results = store.read_json(paths.eval_results())
    except StoreError as err:
        summary["error"] = str(err)
        return summary
    if isinstance(results, dict) and len(json.dumps(results)) <= MAX_EVAL_SUMMARY_BYTES:
        summary["summary"] = results
    return summary


__all__ = ["OperatorState", "Result", "RunMemory", "reconcile"]
