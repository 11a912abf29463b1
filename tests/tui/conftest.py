"""Fixtures for the scoring app: a run with a pending batch in a real store,
and a store wrapper that fails (or slows) requests on purpose."""

from __future__ import annotations

import threading
import time

import pytest

from therapy_rlhf.contracts.records import PendingResponse, SafetyScreen, dump_batch
from therapy_rlhf.store.runs import freeze_spec
from therapy_rlhf.contracts.spec import parse_run
from therapy_rlhf.store.backends import Store, StoreUnavailable
from tests.support.manifests import run_doc

PROMPTS = [
    "I'm feeling depressed and hopeless. Can you help me?",
    "I can't sleep since my father died and I keep crying at work.",
    "My chest gets tight before every meeting and I want to run away.",
    "Nothing matters any more, I don't see the point of going on.",
    "I had a panic attack on the train yesterday.",
    "I keep reliving the accident every night.",
]
RESPONSES = [
    "I'm really sorry you're feeling this way. You're not alone, and it took courage to say it. "
    "Would you tell me a little about what the last few days have been like?",
    "Losing your father is a huge loss, and grief often shows up at work. It makes sense that you cry.",
    "Just try to relax, everybody gets nervous.",
    "You should take some sleeping pills and you will feel better tomorrow.",
    "Panic attacks are frightening. Slow breathing can help in the moment; would you like to try one together?",
    "Reliving it every night sounds exhausting. Have you been able to talk to anyone about the accident?",
]


def manifest(name: str = "demo", namespace: str = "default", **feedback):
    # The flow tests walk the batch in order; the ordering tests ask for the
    # product's default (least-covered first) explicitly.
    feedback.setdefault("responseOrder", "batch")
    doc = run_doc({
            "model": {"source": "tiny:mistral"},
            "storage": {"localPath": "/tmp/unused"},
            "ppo": {"rounds": 3},
            "feedback": feedback,
        }, name, namespace)
    return parse_run(doc)


def responses(round_no: int = 1, n: int = 6) -> list[PendingResponse]:
    out = []
    for i in range(n):
        safety = SafetyScreen()
        if i == 3:
            safety = SafetyScreen(crisis_cues=["no point going on"], risky_content=["medication advice"], missing_crisis_resources=True)
        out.append(
            PendingResponse(
                id=f"r{round_no:04d}-p{i % len(PROMPTS)}-s{i}",
                round=round_no,
                prompt_id=f"p{i % len(PROMPTS)}",
                prompt=PROMPTS[i % len(PROMPTS)],
                context=[{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello, how are you today?"}]
                if i == 1
                else [],
                response=RESPONSES[i % len(RESPONSES)],
                safety=safety,
                created_at="2026-11-25T12:00:00Z",
            )
        )
    return out


def make_run(store: Store, name: str = "demo", n: int = 6, round_no: int = 1, extra_lines: str = "", **feedback):
    """Freeze a run's spec and write one pending batch; returns the manifest."""
    from therapy_rlhf.contracts.layout import RunPaths

    m = freeze_spec(store, manifest(name, **feedback))
    data = dump_batch(responses(round_no, n)) + extra_lines.encode()
    store.write_bytes(RunPaths(m.namespace, m.name).batch(round_no), data)
    return m


class WrappedStore(Store):
    """Delegates to a real store; optionally fails the first N writes or adds latency."""

    def __init__(self, inner: Store, fail_creates: int = 0, latency: float = 0.0, uri: str | None = None):
        self.inner = inner
        self.uri = uri or inner.uri
        self.fail_creates = fail_creates
        self.latency = latency
        self.create_attempts = 0
        self.requests = 0
        self.reads: list[str] = []  # keys read, in order
        self._lock = threading.Lock()

    def _tick(self) -> None:
        with self._lock:
            self.requests += 1
        if self.latency:
            time.sleep(self.latency)

    def read_bytes(self, key):
        self._tick()
        self.reads.append(key)
        return self.inner.read_bytes(key)

    def write_bytes(self, key, data):
        self._tick()
        return self.inner.write_bytes(key, data)

    def create_bytes(self, key, data):
        self._tick()
        with self._lock:
            self.create_attempts += 1
            fail = self.fail_creates > 0
            if fail:
                self.fail_creates -= 1
        if fail:
            raise StoreUnavailable(f"creating {self.describe(key)} failed: simulated outage")
        return self.inner.create_bytes(key, data)

    def exists(self, key):
        self._tick()
        return self.inner.exists(key)

    def list(self, prefix):
        self._tick()
        return self.inner.list(prefix)

    def modified_at(self, key):
        self._tick()
        return self.inner.modified_at(key)


@pytest.fixture(autouse=True)
def rater_data_dir(tmp_path, monkeypatch):
    """Each test gets its own local journal directory (never the user's)."""
    path = tmp_path / "rater-data"
    monkeypatch.setenv("THERAPY_RLHF_DATA_DIR", str(path))
    return path


@pytest.fixture
def demo_store(local_store):
    make_run(local_store)
    return local_store
