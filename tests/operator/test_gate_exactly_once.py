"""The executors' gate close is exactly once across a crash at any point (issue 22), and the
operator's Events are named after what they announce. A real local store; the crash is a store
whose write never happens (the process died between recording the digest and writing)."""

from __future__ import annotations

import re

import pytest

from therapy_rlhf.store import integrity
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.contracts.records import PendingResponse, dump_batch
from therapy_rlhf.feedback.gate import close_gate
from therapy_rlhf.store.runs import freeze_spec
from therapy_rlhf.feedback.simrater import rate_round
from therapy_rlhf.store.backends import LocalStore

from therapy_rlhf.operator import builders, gateclose
from tests.support.manifests import run_manifest

PATHS = RunPaths("default", "demo")
NAME = integrity.gate_name(PATHS, 1)
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class Crashed(Exception):
    pass


class DiesBeforeWriting(LocalStore):
    """The executor's process dies when it writes gate.json: nothing is written."""

    def create_bytes(self, key, data):
        raise Crashed(key)

    write_bytes = create_bytes


@pytest.fixture
def rated(tmp_path):
    """A frozen run whose round 1 (three responses) is fully rated."""
    store = LocalStore(tmp_path / "store")
    manifest = run_manifest({"model": {"source": "tiny:mistral"}, "storage": {"localPath": "/unused"}, "ppo": {"rounds": 2}}, "demo")
    freeze_spec(store, manifest)
    store.write_bytes(PATHS.batch(1), dump_batch([
        PendingResponse(id=f"r0001-p-s{i}", round=1, prompt_id="p", prompt="I feel hopeless.", response=text)
        for i, text in enumerate(["I'm here to listen.", "Cheer up.", "That sounds painful."])
    ]))
    assert rate_round(store, PATHS, manifest, 1) == 3
    return store, manifest


def close(store, manifest, record, intents):
    def record_intent(name, digest):
        key = PATHS.gate(1)
        assert not store.exists(key) or integrity.sha256(store.read_bytes(key)) != digest, \
            "gate.json was written before its digest was recorded"
        intents.append(digest)
        record[name] = digest

    closed = close_gate(store, PATHS, 1, manifest.spec.feedback, "complete", "operator", digests=record, keep=record_intent)
    return closed.gate, closed.digest, closed.replaced


def test_the_digest_is_recorded_before_the_gate_is_written(rated):
    store, manifest = rated
    record, intents = {}, []
    gate, digest, replaced = close(store, manifest, record, intents)
    assert not replaced and intents == [digest] and record == {NAME: digest}
    assert integrity.sha256(store.read_bytes(PATHS.gate(1))) == digest and gate.round == 1


def test_a_restart_after_the_write_finds_its_own_gate(rated):
    store, manifest = rated
    record, intents = {}, []
    _, digest, _ = close(store, manifest, record, intents)
    written = store.read_bytes(PATHS.gate(1))
    # The restarted executor has only what reached its record before the crash: the intent.
    again, intents = {NAME: digest}, []
    _, same, replaced = close(store, manifest, again, intents)
    assert (same, replaced, intents) == (digest, False, [])
    assert store.read_bytes(PATHS.gate(1)) == written


def test_a_crash_between_the_record_and_the_write_closes_the_round_once_later(rated, tmp_path):
    store, manifest = rated
    record, intents = {}, []
    with pytest.raises(Crashed):
        close(DiesBeforeWriting(tmp_path / "store"), manifest, record, intents)
    assert not store.exists(PATHS.gate(1)) and list(record) == [NAME]
    _, digest, replaced = close(store, manifest, record, intents)
    assert not replaced and record[NAME] == digest == integrity.sha256(store.read_bytes(PATHS.gate(1)))


def test_a_gate_the_executor_never_recorded_is_replaced(rated):
    store, manifest = rated
    store.write_bytes(PATHS.gate(1), b'{"round": 1}')
    record, intents = {}, []
    _, digest, replaced = close(store, manifest, record, intents)
    assert replaced and intents == [digest]


def test_events_are_named_after_what_they_announce():
    run = {"name": "demo", "namespace": "default", "uid": "0f1e2d3c-aaaa-bbbb-cccc-000000000000"}
    one = builders.build_event(run, gateclose.job_event_key("ppo-generate", 3, 1), "Normal", "JobCreated", "x" * 5000, "t")
    two = builders.build_event(run, gateclose.job_event_key("ppo-generate", 3, 1), "Normal", "JobCreated", "other", "t")
    gate = builders.build_event(run, "gate-r3", "Normal", "GateClosed", "m", "t")
    assert one["metadata"]["name"] == two["metadata"]["name"] != gate["metadata"]["name"]
    assert all(DNS_SUBDOMAIN.fullmatch(e["metadata"]["name"]) for e in (one, gate))
    assert len(one["message"]) == builders.MAX_EVENT_MESSAGE and one["involvedObject"]["uid"] == run["uid"]
    assert DNS_SUBDOMAIN.fullmatch(builders.build_event({**run, "uid": ""}, "gate-r1", "Normal", "G", "m", "t")["metadata"]["name"])


def test_a_recorded_gate_not_shown_closed_may_not_have_been_announced():
    status = {
        "digests": {"rounds/0001/gate.json": "a" * 64, "rounds/0002/gate.json": "b" * 64, "rounds/0002/batch.jsonl": "c" * 64},
        "rounds": [{"round": 1, "gateClosed": True}, {"round": 2, "gateClosed": False}],
    }
    assert gateclose.unannounced_gates(status) == {2}
    assert gateclose.unannounced_gates({}) == set()
