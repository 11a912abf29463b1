"""The digest record's pure parts: what jobs read and write, reports, and recovery from Jobs."""

from __future__ import annotations

import hashlib

from therapy_rlhf.store import integrity
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.contracts import phases
from therapy_rlhf.planning.planner import CloseGate, Decision, JobObservation, Observed, RoundObservation, StartJob, WaitForJob

from therapy_rlhf.operator import digests
from tests.support.manifests import run_manifest

PATHS = RunPaths("default", "demo")
D1, D2 = "a" * 64, "b" * 64


def manifest(**sft):
    return run_manifest({"model": {"source": "tiny:mistral"}, "storage": {"localPath": "/x"}, "ppo": {"rounds": 3},
                               "sft": {"enabled": True, **sft}}, "demo")


def spec(**sft):
    return manifest(**sft).spec


def test_each_job_reads_exactly_its_inputs():
    s = spec()
    assert integrity.job_inputs("generate", 1, s, PATHS) == ["sft/adapter/"]
    assert integrity.job_inputs("generate", 2, s, PATHS) == ["rounds/0001/policy/"]
    assert integrity.job_inputs("ppo", 2, s, PATHS) == [
        "rounds/0002/batch.jsonl", "rounds/0002/gate.json", "rounds/0001/policy/", "rounds/0001/optimizer.pt",
        "sft/adapter/"]  # the KL reference
    assert integrity.job_inputs("ppo", 1, s, PATHS) == [
        "rounds/0001/batch.jsonl", "rounds/0001/gate.json", "sft/adapter/"]  # policy and reference in one
    assert integrity.job_inputs("ppo", 1, spec(enabled=False), PATHS) == ["rounds/0001/batch.jsonl", "rounds/0001/gate.json"]
    assert "rounds/0003/policy/" in integrity.job_inputs("evaluate", 0, s, PATHS)  # 'final'
    assert integrity.job_inputs("sft", 0, s, PATHS) == []


def test_a_folder_digest_is_its_sorted_listing_and_order_free():
    files = {"b.json": hashlib.sha256(b"2").hexdigest(), "a.bin": hashlib.sha256(b"1").hexdigest()}
    listing = f"{files['a.bin']}  a.bin\n{files['b.json']}  b.json\n"
    assert integrity.tree_digest(files) == hashlib.sha256(listing.encode()).hexdigest()
    assert integrity.tree_digest(dict(reversed(list(files.items())))) == integrity.tree_digest(files)
    written = {f"{PATHS.policy_prefix(1)}/{k}": v for k, v in files.items()}
    written[PATHS.optimizer_state(1)] = D1
    out = integrity.output_digests("ppo", 1, PATHS, written)
    assert out == {"rounds/0001/policy/": integrity.tree_digest(files), "rounds/0001/optimizer.pt": D1}


def test_a_report_yields_only_well_formed_digests_of_the_kinds_outputs():
    text = integrity.format_outputs({"rounds/0001/batch.jsonl": D1})
    assert integrity.parse_outputs(text, ["rounds/0001/batch.jsonl"]) == {"rounds/0001/batch.jsonl": D1}
    assert integrity.parse_outputs(text, ["rounds/0002/batch.jsonl"]) == {}  # not this job's output
    assert integrity.parse_outputs('{"outputs": {"rounds/0001/batch.jsonl": "short"}}', ["rounds/0001/batch.jsonl"]) == {}
    assert integrity.parse_outputs("error: something\nlog tail", ["x"]) == {}


def job(kind, round_no, attempt, state, command=()):
    condition = {"succeeded": "Complete", "failed": "Failed"}.get(state)
    status = {"conditions": [{"type": condition, "status": "True"}]} if condition else {}
    return {"metadata": {"name": f"demo-{kind}-r{round_no}-a{attempt}",
                         "labels": {"rlhf.therapy.dev/run": "demo", "rlhf.therapy.dev/job-kind": kind,
                                    "rlhf.therapy.dev/round": str(round_no), "rlhf.therapy.dev/attempt": str(attempt)}},
            "spec": {"template": {"spec": {"containers": [{"command": list(command)}]}}}, "status": status}


def pod(message, code=0, when="2026-01-01T00:00:00Z"):
    return {"status": {"containerStatuses": [{"state": {"terminated": {"exitCode": code, "message": message, "finishedAt": when}}}]}}


def test_the_one_job_round_reads_what_ppo_reads_and_reports_the_update_and_the_next_batch():
    s = spec()
    assert integrity.job_inputs("ppo-generate", 2, s, PATHS) == integrity.job_inputs("ppo", 2, s, PATHS)
    assert integrity.job_outputs("ppo-generate", 2, PATHS) == [
        "rounds/0002/policy/", "rounds/0002/optimizer.pt", "rounds/0003/batch.jsonl"]
    assert "ppo-generate" in integrity.OUTPUT_KINDS  # the local runner takes in its reports


def test_outputs_come_from_succeeded_jobs_termination_messages_once():
    report = integrity.format_outputs({"rounds/0001/batch.jsonl": D1})
    pods = {"demo-generate-r1-a1": [pod("error: boom", code=1)], "demo-generate-r1-a2": [pod(report)]}
    reads = []

    def read_pods(name):
        reads.append(name)
        return pods.get(name, [])

    jobs = [job("generate", 1, 2, "succeeded"), job("generate", 1, 1, "failed")]
    read: set[str] = set()
    found, pending = digests.recover(jobs, read_pods, PATHS, {"rounds/0001/batch.jsonl"}, read)
    assert found == {"rounds/0001/batch.jsonl": D1} and not pending
    assert sorted(reads) == ["demo-generate-r1-a1", "demo-generate-r1-a2"]  # a failed pod's log tail reports nothing
    assert digests.recover(jobs, read_pods, PATHS, {"rounds/0001/batch.jsonl"}, read) == ({}, False)
    assert sorted(reads) == ["demo-generate-r1-a1", "demo-generate-r1-a2"]  # each Job's pods are read once
    running = [job("generate", 2, 1, "running")]
    assert digests.recover(running, read_pods, PATHS, {"rounds/0002/batch.jsonl"}, set()) == ({}, True)


def test_a_ppo_generate_job_that_died_while_sampling_still_records_its_update():
    # It reported round 1's checkpoint before sampling round 2, then the pod was killed.
    report = integrity.format_outputs({"rounds/0001/policy/": D1, "rounds/0001/optimizer.pt": D2})
    fused = job("ppo-generate", 1, 1, "failed", ["--expect", f"rounds/0001/gate.json={D2}"])
    wanted = {"rounds/0001/policy/", "rounds/0001/optimizer.pt", "rounds/0001/gate.json"}
    found, pending = digests.recover([fused], lambda name: [pod(report, code=137)], PATHS, wanted, set())
    assert found == {"rounds/0001/policy/": D1, "rounds/0001/optimizer.pt": D2, "rounds/0001/gate.json": D2}
    assert not pending


def test_a_start_waits_for_the_ppo_generate_job_still_sampling_its_input():
    m = manifest()
    observed = Observed(rounds={2: RoundObservation(2, batch=True)},
                        jobs={("ppo-generate", 1): JobObservation("ppo-generate", 1, 3, "running")})
    memory = digests.DigestMemory(awaiting_reports={"rounds/0002/batch.jsonl"})
    start = Decision(StartJob("ppo-generate", 2, 1), phases.UPDATING, 2, phases.R_JOB_STARTED, "start")
    held = digests.hold_for_reports(start, observed, m, memory)
    assert held.action == WaitForJob("ppo-generate", 1, 3)


def test_a_retry_waits_for_the_finished_evaluate_job_to_report_its_results():
    """The evaluate Job wrote eval/results.json and was running when the record was searched, and is seen
    succeeded by the time the planner looks: not "output missing" (a second attempt) but wait for its report."""
    m = manifest()
    observed = Observed(eval_unrecorded=True, jobs={("evaluate", 0): JobObservation("evaluate", 0, 1, "succeeded")})
    retry = Decision(StartJob("evaluate", 0, 2), phases.EVALUATING, 0, phases.R_JOB_RETRYING, "retry")
    memory = digests.DigestMemory(awaiting_reports={"eval/results.json"})
    assert digests.hold_for_reports(retry, observed, m, memory).action == WaitForJob("evaluate", 0, 1)
    assert digests.hold_for_reports(retry, observed, m, digests.DigestMemory()) is retry


def test_a_gate_waits_for_the_job_that_has_not_reported_its_selection():
    # feedback.selection: the gate takes the model's predictions from the selection.json whose digest
    # the sampling Job reports; closing before that report would close without them.
    m = manifest()
    observed = Observed(rounds={2: RoundObservation(2, batch=True, rated=2, total=2, complete=True)},
                        jobs={("ppo-generate", 1): JobObservation("ppo-generate", 1, 1, "running")})
    close = Decision(CloseGate(2, "complete"), phases.AWAITING_RATINGS, 2, phases.R_GATE_CLOSED, "close")
    memory = digests.DigestMemory(awaiting_reports={"rounds/0002/selection.json"})
    assert digests.hold_for_reports(close, observed, m, memory).action == WaitForJob("ppo-generate", 1, 1)
    # Reported (or no selection to wait for): the gate closes.
    assert digests.hold_for_reports(close, observed, m, digests.DigestMemory()) is close
    other = digests.DigestMemory(awaiting_reports={"rounds/0003/selection.json"})
    assert digests.hold_for_reports(close, observed, m, other) is close


def test_a_gates_digest_is_recovered_from_the_ppo_job_created_with_it():
    ppo = job("ppo", 1, 1, "running", ["python", "-m", "therapy_rlhf.jobs", "ppo", "--expect", f"rounds/0001/gate.json={D2}"])
    found, _ = digests.recover([ppo], lambda name: [], PATHS, {"rounds/0001/gate.json"}, set())
    assert found == {"rounds/0001/gate.json": D2}
    assert digests.expected_in_job(job("ppo", 1, 1, "running", ["--expect", "bad"])) == {}


def test_missing_names_what_the_store_holds_but_the_record_lacks():
    observed = Observed(sft_done=True, rounds={1: RoundObservation(1, batch=True, gate=True, policy=True),
                                               2: RoundObservation(2, batch=True, gate_unrecorded=True)})
    record = {"sft/adapter/": D1, "rounds/0001/batch.jsonl": D1, "rounds/0001/policy/": D1}
    assert digests.missing(observed, PATHS, record) == {
        "rounds/0001/optimizer.pt", "rounds/0002/batch.jsonl", "rounds/0002/gate.json"}
    assert digests.producers(PATHS, "rounds/0002/batch.jsonl") == [("generate", 2), ("ppo-generate", 1)]
    assert digests.producers(PATHS, "rounds/0001/batch.jsonl") == [("generate", 1)]
    assert digests.producers(PATHS, "rounds/0002/policy/") == [("ppo", 2), ("ppo-generate", 2)]
    assert digests.producers(PATHS, "sft/adapter/") == [("sft", 0)]
    assert digests.producers(PATHS, "rounds/0002/gate.json") == []


class JobsApi:
    """The two reads refresh makes, over fixed Job and Pod objects; counts the Job listings."""

    def __init__(self, jobs, pods):
        self.jobs, self.pods, self.listings = jobs, pods, 0

    def list_jobs(self, namespace, run):
        self.listings += 1
        return self.jobs

    def list_job_pods(self, namespace, name):
        return self.pods.get(name, [])


def test_refresh_searches_again_only_when_what_is_missing_changes_or_a_job_may_still_report():
    report = integrity.format_outputs({"rounds/0001/batch.jsonl": D1})
    # A batch whose generate Job is gone (no report can come): searched once, then not
    # again while only ratings arrive (the store's keys change, the missing names do not).
    api, memory, record = JobsApi([], {}), digests.DigestMemory(), {}
    one = Observed(sft_done=False, rounds={1: RoundObservation(1, batch=True)})
    for _ in range(3):
        assert not digests.refresh(api, "default", "demo", PATHS, one, record, memory)
    assert api.listings == 1
    # A new marker is a new search.
    two = Observed(sft_done=False, rounds={1: RoundObservation(1, batch=True), 2: RoundObservation(2, batch=True)})
    digests.refresh(api, "default", "demo", PATHS, two, record, memory)
    assert api.listings == 2
    # A Job still running may report: searched on every call until it has.
    api = JobsApi([job("generate", 1, 1, "running")], {"demo-generate-r1-a1": [pod(report)]})
    memory = digests.DigestMemory()
    for _ in range(2):
        assert not digests.refresh(api, "default", "demo", PATHS, one, record, memory)
    assert api.listings == 2 and memory.awaiting_reports == {"rounds/0001/batch.jsonl"}
    api.jobs = [job("generate", 1, 1, "succeeded")]
    assert digests.refresh(api, "default", "demo", PATHS, one, record, memory)
    assert record == {"rounds/0001/batch.jsonl": D1} and memory.recorded == record and not memory.awaiting_reports
    assert not digests.refresh(api, "default", "demo", PATHS, one, record, memory) and api.listings == 3  # complete


def test_a_job_failing_after_its_report_keeps_both_the_digests_and_its_error_line(tmp_path):
    # ppo-generate reports its update, then fails while sampling: Kubernetes takes the pod's
    # termination message from the outputs file, so the reason has to be written there too.
    from therapy_rlhf.jobs.__main__ import EXIT_FAILED, _fail
    from therapy_rlhf.operator.jobstate import pod_failure

    report = tmp_path / "termination-log"
    report.write_text(integrity.format_outputs({"rounds/0001/policy/": D1}) + "\n")
    assert _fail("error: sampling failed", EXIT_FAILED, str(report)) == EXIT_FAILED
    message = report.read_text()
    assert integrity.parse_outputs(message, ["rounds/0001/policy/"]) == {"rounds/0001/policy/": D1}
    assert pod_failure([pod(message, code=1)]) == "error: sampling failed"
    # Without a report the file stays empty: the kubelet falls back to the log's tail as before.
    empty = tmp_path / "empty"
    empty.write_text("")
    _fail("error: bad input", EXIT_FAILED, str(empty))
    assert empty.read_text() == ""
