"""Kill the operator at every phase boundary of a run, in both Job shapes (issue 22).

One emulated cluster, one operator, one two-round run per Job shape. At each kill
point the operator is stopped (everything it held in memory is lost), any fault
that held it there is lifted, a new operator is started, and after it has
reconciled the run a few times (observed ticks, not a fixed sleep) nothing may
have been done twice. The kill points:

* before a Job is created (creating Jobs fails with HTTP 500, as from an API
  server under load, until the kill): the SFT Job, and round 2's update;
* during each Job (the harness holds it pending), and while ratings are awaited;
* one Job per round: inside ``ppo-generate``, after its update and before its batch;
* while a Job's outputs are recorded (every status patch fails from the moment the
  generate Job is let go until the kill: the batch is stored, its digest not recorded);
* at the gate: round 1's gate.json written, and then creating the PPO Job, every
  status patch and the GateClosed Event all fail until the kill -- a crash right
  after the gate was written.

At the end: every Job created and run once, one JobCreated Event per Job, one gate
object per round and one GateClosed Event per round, no GateReplaced or JobMissing
Warning, each condition once in the status, and the record holds every output.
"""

from __future__ import annotations

from collections import Counter

import pytest

from therapy_rlhf.contracts import phases
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.rounds import read_gate
from therapy_rlhf.store.runs import read_frozen_run
from therapy_rlhf.feedback.simrater import rate_round
from therapy_rlhf.contracts.spec import PLURAL

from therapy_rlhf.operator import handlers

from tests.support.budget import budget

PATHS = RunPaths("default", "demo")
# Reconciles of the run a restarted operator must have finished before anything is checked.
TICKS_AFTER_RESTART = 2


class Faults:
    """HTTP 500 for the requests named, until lifted (the emulator asks it about every request)."""

    def __init__(self, store):
        self.store = store
        self.jobs = False  # creating Jobs
        self.status = False  # patching the run's status
        self.status_once_gate = 0  # patching the run's status once this round's gate.json exists
        self.gate_events = False  # posting GateClosed Events
        self.refused: Counter = Counter()

    def lift(self) -> None:
        self.jobs = self.status = self.gate_events = False
        self.status_once_gate = 0

    def __call__(self, request) -> bool:
        what = self._refused(request)
        if what:
            self.refused[what] += 1
        return bool(what)

    def _refused(self, request) -> str:
        plural = getattr(request.resource, "plural", None)
        method = str(getattr(request.method, "value", request.method)).upper()
        if self.jobs and plural == "jobs" and method == "POST":
            return "jobs"
        if plural == PLURAL and request.subresource == "status" and method == "PATCH":
            if self.status or (self.status_once_gate and self.store.exists(PATHS.gate(self.status_once_gate))):
                return "status"
        data = request.data if isinstance(request.data, dict) else {}
        if self.gate_events and plural == "events" and method == "POST" and data.get("reason") == phases.R_GATE_CLOSED:
            return "events"
        return ""

    async def wait(self, cluster, what: str, since: int = 0) -> None:
        """Until the operator has tried (and failed) ``what`` more than ``since`` times: it got that far."""
        async def tried():
            return self.refused[what] > since

        await cluster.wait_for(tried, what=f"the operator to try {what}")


class Ticks:
    """Counts finished reconciles of each run (the real handler, wrapped)."""

    def __init__(self, monkeypatch):
        self.count: Counter = Counter()
        real = handlers.reconcile

        def counted(body, *args, **kwargs):
            try:
                return real(body, *args, **kwargs)
            finally:
                self.count[body["metadata"]["name"]] += 1

        monkeypatch.setattr(handlers, "reconcile", counted)

    async def wait(self, cluster, name: str, n: int) -> None:
        start = self.count[name]

        async def ticked():
            return self.count[name] >= start + n

        await cluster.wait_for(ticked, what=f"{n} reconciles of {name}")


async def _finished(cluster, name: str) -> bool:
    for job in await cluster.jobs():
        if job["metadata"]["name"] == name:
            return bool((job.get("status") or {}).get("conditions"))
    return False


def _names(jobs) -> list[str]:
    return sorted(j["metadata"]["name"] for j in jobs)


@pytest.mark.slow
@pytest.mark.timeout(budget(90))
@pytest.mark.parametrize("one_job", [True, False], ids=["one-job-per-round", "separate-jobs"])
async def test_killed_at_every_phase_boundary_everything_happens_once(cluster, run_spec, run_store, tmp_path,
                                                                      monkeypatch, one_job):
    faults = Faults(run_store)
    cluster.emulator.refuse = faults
    ticks = Ticks(monkeypatch)
    hold = tmp_path / "go-on-after-the-update"
    cluster.job_env["STANDIN_HOLD_AFTER_UPDATE"] = str(hold)
    cluster.paused = True
    spec = run_spec()
    spec["ppo"]["oneJobPerRound"] = one_job

    async def restart() -> list[str]:
        """Kill, lift the faults, start again and let it reconcile a few times; the Jobs before the kill."""
        before = _names(await cluster.jobs())
        await cluster.kill_operator()
        faults.lift()
        await cluster.start_operator()
        await ticks.wait(cluster, "demo", TICKS_AFTER_RESTART)
        return before

    async def active() -> str:
        run = await cluster.run("demo")
        return ((run.get("status") or {}).get("activeJob") or {}).get("name") or ""

    async def run_job(name: str) -> None:
        cluster.release(name)
        await cluster.wait_for(lambda: _finished(cluster, name), budget(cluster.PHASE_SECONDS), f"{name} to finish")

    async def ready_reason(reason: str):
        async def check():
            run = await cluster.run("demo")
            conds = (run.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Ready" and c["reason"] == reason for c in conds)
        await cluster.wait_for(check, what=f"Ready reason {reason}")

    async def unchanged(where: str, before: list[str], phase: str) -> None:
        assert _names(await cluster.jobs()) == before, f"a restart {where} changed the Jobs"
        now = ((await cluster.run("demo")).get("status") or {}).get("phase")
        assert now == phase, f"a restart {where} moved the run from {phase} to {now}"

    # 1. Before the SFT Job is created.
    faults.jobs = True
    await cluster.start_operator()
    await cluster.create_run("demo", spec)
    await ready_reason(phases.R_KUBE_API_ERROR)
    assert await cluster.jobs() == []
    await restart()
    await cluster.wait_phase("demo", phases.SFT)
    # 2. During the SFT Job.
    await unchanged("during the SFT Job", await restart(), phases.SFT)
    await run_job("demo-sft-r0-a1")
    # 3. During the generate Job, then while its outputs are recorded.
    await cluster.wait_phase("demo", phases.GENERATING, round_no=1)
    await unchanged("during the generate Job", await restart(), phases.GENERATING)
    faults.status = True
    await run_job("demo-generate-r1-a1")
    await faults.wait(cluster, "status", faults.refused["status"])  # it saw the finished Job, could not record it
    assert "rounds/0001/batch.jsonl" not in ((await cluster.run("demo")).get("status") or {}).get("digests", {})
    await restart()
    run = await cluster.wait_phase("demo", phases.AWAITING_RATINGS, round_no=1)
    assert "rounds/0001/batch.jsonl" in run["status"]["digests"]
    await unchanged("while ratings are awaited", await restart(), phases.AWAITING_RATINGS)
    # 4. At the gate: written, then nothing else gets through until the kill.
    faults.status_once_gate, faults.jobs, faults.gate_events = 1, True, True
    rate_round(run_store, PATHS, read_frozen_run(run_store, PATHS), 1)
    await cluster.wait_for(lambda: _exists(run_store, PATHS.gate(1)), what="round 1's gate.json")
    for what in ("events", "jobs", "status"):  # it went on after the gate, as far as it could
        await faults.wait(cluster, what)
    gate_bytes = run_store.read_bytes(PATHS.gate(1))
    assert not [n for n in _names(await cluster.jobs()) if "-ppo" in n]
    await restart()
    run = await cluster.wait_phase("demo", phases.UPDATING, round_no=1)
    assert run_store.read_bytes(PATHS.gate(1)) == gate_bytes, "the restarted operator rewrote its own gate"
    # 5. During the update (and, with one Job per round, between its update and its batch).
    update = await active()
    assert update == ("demo-ppo-generate-r1-a1" if one_job else "demo-ppo-r1-a1")
    await unchanged("during the update Job", await restart(), phases.UPDATING)
    if one_job:
        cluster.release(update)  # stores round 1's update, then holds before sampling round 2
        await cluster.wait_phase("demo", phases.GENERATING, round_no=2)
        await cluster.wait_for(lambda: _exists(run_store, PATHS.policy_metrics(1)), what="round 1's update")
        await unchanged("between the update and the batch of ppo-generate", await restart(), phases.GENERATING)
        assert await active() == update
        hold.touch()
        await cluster.wait_for(lambda: _finished(cluster, update), budget(cluster.PHASE_SECONDS), f"{update} to finish")
    else:
        await run_job(update)
        await cluster.wait_phase("demo", phases.GENERATING, round_no=2)
        await unchanged("during round 2's generate Job", await restart(), phases.GENERATING)
        await run_job("demo-generate-r2-a1")
    # 6. Before round 2's update Job is created.
    await cluster.wait_phase("demo", phases.AWAITING_RATINGS, round_no=2)
    faults.jobs = True
    rate_round(run_store, PATHS, read_frozen_run(run_store, PATHS), 2)
    await ready_reason(phases.R_KUBE_API_ERROR)
    await restart()
    await cluster.wait_phase("demo", phases.UPDATING, round_no=2)
    await unchanged("during round 2's update Job", await restart(), phases.UPDATING)
    await run_job(await active())
    # 7. During the evaluation.
    await cluster.wait_phase("demo", phases.EVALUATING)
    await unchanged("during the evaluate Job", await restart(), phases.EVALUATING)
    cluster.paused = False
    run = await cluster.wait_phase("demo", phases.SUCCEEDED)

    names = _names(await cluster.jobs())
    expected = ["demo-sft-r0-a1", "demo-generate-r1-a1", "demo-ppo-r2-a1", "demo-evaluate-r0-a1"]
    expected += ["demo-ppo-generate-r1-a1"] if one_job else ["demo-ppo-r1-a1", "demo-generate-r2-a1"]
    assert names == sorted(expected)
    assert sorted(cluster.job_log) == names, "a Job ran twice"
    events = await cluster.events()
    reasons = Counter(e["reason"] for e in events)
    created = Counter(e["message"].split(":")[0].removeprefix("created Job ") for e in events if e["reason"] == "JobCreated")
    assert created == Counter(names), f"JobCreated Events: {created}"
    assert reasons[phases.R_GATE_CLOSED] == 2, [e["message"] for e in events if e["reason"] == phases.R_GATE_CLOSED]
    assert reasons[phases.R_GATE_REPLACED] == 0 and reasons["JobMissing"] == 0 and reasons[phases.R_SUCCEEDED] == 1
    assert all(read_gate(run_store, PATHS, r).closed_by == "operator" for r in (1, 2))
    conditions = Counter(c["type"] for c in run["status"]["conditions"])
    assert set(conditions.values()) == {1}, conditions
    assert {c["type"]: c["status"] for c in run["status"]["conditions"]}["Ready"] == "True"
    digests = run["status"]["digests"]
    for name in ("sft/adapter/", "rounds/0001/batch.jsonl", "rounds/0001/gate.json", "rounds/0001/policy/",
                 "rounds/0002/batch.jsonl", "rounds/0002/gate.json", "rounds/0002/policy/"):
        assert name in digests, name


async def _exists(store, key: str) -> bool:
    return store.exists(key)
