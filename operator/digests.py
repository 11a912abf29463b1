"""The operator's record of digests (``therapy_rlhf.store.integrity``), kept in ``status.digests``.

Raters can write to the object store but not to a run's status (only the
operator's ServiceAccount may patch ``therapyrlhfruns/status``), so the status
is where the operator keeps the digest of every gate it closed and of every
output its Jobs reported. A Job reports its outputs in its termination message
(``--outputs-file /dev/termination-log``), which only the kubelet writes from
the container's own file; this module reads those messages (pure functions
over the Job and Pod objects) and, after an operator restart that lost a
status patch, recovers a gate's digest from the PPO Job it already created
with it (``--expect rounds/r/gate.json=...``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from therapy_rlhf.store import integrity
from therapy_rlhf.contracts import phases
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.contracts import jobkinds
from therapy_rlhf.planning.planner import CloseGate, Decision, Observed, StartJob, WaitForJob
from therapy_rlhf.contracts.spec import RunManifest

from therapy_rlhf.operator.jobstate import job_key, job_state


def missing(observed: Observed, paths: RunPaths, digests: Mapping[str, str], selecting: bool = False) -> set[str]:
    """Record names of outputs the store holds (their markers are there) but the record lacks,
    and of gate.json objects the operator may have closed before a restart. ``selecting``: the
    run's feedback.selection writes a selection.json beside each batch."""
    names: list[str] = []
    if observed.sft_done:
        names += integrity.job_outputs(jobkinds.SFT, 0, paths)
    for r, ro in observed.rounds.items():
        if ro.batch:
            names += integrity.job_outputs(jobkinds.GENERATE, r, paths, selecting)
        if ro.policy:
            names += integrity.job_outputs(jobkinds.PPO, r, paths)
        if ro.gate_unrecorded:
            names.append(integrity.gate_name(paths, r))
    if observed.eval_unrecorded:  # the evaluate Job's report, read after a restart (or a planted file: found nowhere)
        names += integrity.job_outputs(jobkinds.EVALUATE, 0, paths)
    return {n for n in names if n not in digests}


def producers(paths: RunPaths, name: str) -> list[tuple[str, int]]:
    """(kind, round) of the jobs that can write the output ``name``, in the job-kind table's order:
    round r's batch comes from a generate Job or from round r-1's ppo-generate Job, round r's
    policy from ppo or ppo-generate."""
    parts = name.split("/")
    r = int(parts[1]) if len(parts) >= 3 and parts[0] == "rounds" and parts[1].isdigit() else None
    found = []
    for row in jobkinds.TABLE.values():
        rounds = [0] if row.run_level else ([] if r is None else [r, r - 1])
        for round_no in rounds:
            if (row.run_level or round_no >= 1) and name in integrity.job_outputs(row.name, round_no, paths, selecting=True):
                found.append((row.name, round_no))
    return found


def _container(obj: dict[str, Any]) -> dict[str, Any]:
    containers = ((((obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers")) or [{}]
    return containers[0]


def expected_in_job(job: dict[str, Any]) -> dict[str, str]:
    """The ``--expect NAME=SHA256`` pairs a Job was created with."""
    command = [str(a) for a in (_container(job).get("command") or []) + (_container(job).get("args") or [])]
    pairs = [command[i + 1] for i, arg in enumerate(command[:-1]) if arg == "--expect"]
    try:
        return integrity.parse_expect(pairs)
    except integrity.IntegrityError:
        return {}


def reported_outputs(pods: Iterable[dict[str, Any]], allowed: Iterable[str]) -> dict[str, str]:
    """The outputs a Job's pod reported in its termination message.

    A failed pod counts too: ppo-generate reports its update before it samples,
    so a pod that died while sampling has round r's checkpoint in its message.
    (Only the container writes that file; a failed container with nothing in it
    gets its log tail instead, which never parses as a report.)
    """
    allowed = list(allowed)
    newest: tuple[str, dict[str, str]] | None = None
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            ended = (container.get("state") or {}).get("terminated") or {}
            if not ended:
                continue
            found = integrity.parse_outputs(ended.get("message") or "", allowed)
            when = ended.get("finishedAt") or ""
            if found and (newest is None or when >= newest[0]):
                newest = (when, found)
    return newest[1] if newest else {}


def recover(
    jobs: list[dict[str, Any]],
    read_pods,
    paths: RunPaths,
    wanted: set[str],
    read_already: set[str],
) -> tuple[dict[str, str], bool]:
    """Digests of ``wanted`` names from the run's Jobs: outputs from finished Jobs' pods
    (``read_pods(job_name)``, once per Job), gate digests from the PPO Jobs' arguments.

    Also whether a Job that may still report a wanted output is not finished yet
    (its marker can be in the store before the Job controller says it succeeded).
    """
    found: dict[str, str] = {}
    pending = False
    # Oldest attempt first: a later attempt's report is the one whose output the store holds.
    for job in sorted(jobs, key=lambda j: job_key(j) or ("", 0, 0)):
        key = job_key(job)
        if key is None:
            continue
        kind, round_no, _attempt = key
        for name, digest in expected_in_job(job).items():
            if name in wanted and name.endswith("gate.json") and kind in jobkinds.GATED_KINDS:
                found.setdefault(name, digest)
        name = (job.get("metadata") or {}).get("name", "")
        outputs = set(integrity.job_outputs(kind, round_no, paths, selecting=True)) & wanted
        if not outputs or name in read_already:
            continue
        state = job_state(job)[0]
        if state == "running":
            pending = True
        if state == "running":
            continue
        read_already.add(name)
        found.update(reported_outputs(read_pods(name), outputs))
    return found, pending


# ------------------------------------------------------------------ per run


@dataclass
class DigestMemory:
    """What the operator keeps between reconciles of one run (lost on restart; rebuilt from the cluster)."""

    recorded: dict[str, str] = field(default_factory=dict)  # recorded here, maybe not yet back in status
    outputs_read: set[str] = field(default_factory=set)  # Jobs whose pods were read
    search: frozenset | None = None  # the missing names last searched for in vain
    awaiting_reports: set[str] = field(default_factory=set)  # outputs a Job not yet finished may report


def refresh(api, namespace: str, run: str, paths: RunPaths, observed: Observed, record: dict[str, str],
            memory: DigestMemory, selecting: bool = False) -> bool:
    """Fill the record from the run's Jobs: outputs they reported, gates a PPO Job was given.

    Searched only when something is missing, and again only when what is
    missing changes (a new marker) or a producing Job was still running: the
    Jobs that could report are the operator's own, so a run whose record is
    complete -- or cannot be completed -- costs no API call per tick.
    """
    wanted = missing(observed, paths, record, selecting)
    memory.awaiting_reports = set()
    search = frozenset(wanted)
    if not wanted or search == memory.search:
        return False
    jobs = api.list_jobs(namespace, run)
    found, pending = recover(jobs, lambda name: api.list_job_pods(namespace, name), paths, wanted, memory.outputs_read)
    if pending:  # a marker is in the store before its Job is reported finished
        memory.awaiting_reports = wanted - set(found)
    else:  # nothing more can come until the store changes
        memory.search = search
    record.update(found)
    memory.recorded.update(found)
    return bool(found)


def hold_for_reports(decision: Decision, observed: Observed, manifest: RunManifest, memory: DigestMemory) -> Decision:
    """Hold a StartJob whose input's Job wrote its output but is not reported finished yet:
    the next tick starts it with the digest that Job reports, rather than now without it.
    Likewise a CloseGate whose round's selection.json is not reported yet (the gate takes the
    model's predictions from the selection the operator verified), and a retry of a Job whose own
    output is written but not reported yet: the evaluation counts as done only once eval/results.json
    is recorded, and its Job can be seen succeeded in the same tick that saw it still running."""
    action = decision.action
    if not isinstance(action, (StartJob, CloseGate)) or not memory.awaiting_reports:
        return decision
    paths = RunPaths(manifest.namespace, manifest.name)
    if isinstance(action, CloseGate):
        needs = {integrity.relative(paths, paths.selection(action.round))}
    else:
        needs = set(integrity.job_inputs(action.kind, action.round, manifest.spec, paths))
        needs |= set(integrity.job_outputs(action.kind, action.round, paths, selecting=True))
    for name in sorted(memory.awaiting_reports & needs):
        candidates = producers(paths, name)
        if not candidates:
            continue
        # The producer that is still running (a batch can come from either of two Jobs), else the first.
        running = [c for c in candidates if (j := observed.jobs.get(c)) is not None and j.state == "running"]
        kind, round_no = (running or [c for c in candidates if c in observed.jobs] or candidates)[0]
        job = observed.jobs.get((kind, round_no))
        return Decision(
            WaitForJob(kind, round_no, job.attempt if job is not None else 1), jobkinds.PHASE_OF_JOB[kind], round_no,
            phases.R_JOB_RUNNING, f"waiting for the {kind} Job to report the digest of {name}",
        )
    return decision
