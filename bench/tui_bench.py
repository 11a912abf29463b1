"""Benchmark of the scoring TUI, driven with Textual's Pilot (not a timed test).

    .venv/bin/python bench/tui_bench.py [--responses 100] [--latency 0.2]

Measures key presses per complete rating, keypress-to-screen-update latency
(p50/p95), start-up time of `therapy-rlhf score` to a populated start screen
(a fresh process), ratings per minute for a scripted rater over N
responses on a local store wrapped to add LATENCY seconds to every request,
and what the local journal costs per rating (its two fsynced appends, queued
and stored, timed on the same disk; and the submit key with the journal
against the same key with a journal that writes nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.gate import coverage
from therapy_rlhf.feedback.rounds import load_round
from therapy_rlhf.contracts.records import PendingResponse, dump_batch
from therapy_rlhf.store.runs import freeze_spec
from therapy_rlhf.store.backends import LocalStore, Store
from tests.support.manifests import run_manifest

PATHS = RunPaths("default", "bench")
KEYS_PER_RATING = ["3", "4", "2", "3", "4", "enter"]


class SlowStore(Store):
    """A real LocalStore with a fixed delay added to every request (a distant S3)."""

    def __init__(self, inner: Store, latency: float):
        self.inner, self.latency, self.uri, self.requests = inner, latency, inner.uri, 0

    def _wait(self):
        self.requests += 1
        time.sleep(self.latency)

    def read_bytes(self, key):
        self._wait()
        return self.inner.read_bytes(key)

    def write_bytes(self, key, data):
        self._wait()
        return self.inner.write_bytes(key, data)

    def create_bytes(self, key, data):
        self._wait()
        return self.inner.create_bytes(key, data)

    def exists(self, key):
        self._wait()
        return self.inner.exists(key)

    def list(self, prefix):
        self._wait()
        return self.inner.list(prefix)

    def modified_at(self, key):
        self._wait()
        return self.inner.modified_at(key)


def make_store(root: str, n: int) -> LocalStore:
    store = LocalStore(root)
    manifest = run_manifest({"model": {"source": "tiny:mistral"}, "storage": {"localPath": root}}, "bench")
    freeze_spec(store, manifest)
    batch = [
        PendingResponse(
            id=f"r0001-p{i}",
            round=1,
            prompt_id=f"p{i}",
            prompt=f"Patient message number {i}: I'm feeling depressed and hopeless. Can you help me?",
            response="I'm sorry you're feeling this way. You're not alone; can you tell me more? " * 3,
        )
        for i in range(n)
    ]
    store.write_bytes(PATHS.batch(1), dump_batch(batch))
    return store


class NoJournal:
    """Stands in for the journal to measure what it costs (writes nothing)."""

    def __init__(self, real):
        self.path, self.real = real.path, real

    def queued(self, *a):
        pass

    def stored(self, *a):
        pass

    def rejected(self, *a):
        pass

    def draft(self, *a):
        pass

    def read(self):
        return self.real.read()

    def drafts_for(self, *a):
        return {}

    def claim(self):
        return False

    def release(self):
        pass

    def sync(self):
        pass


async def scripted_rater(store: Store, n: int, journal: bool = True) -> dict:
    from therapy_rlhf.tui.app import ScoringApp
    from therapy_rlhf.tui.journal import Journal

    real = Journal.open(store.uri, "bench-rater")
    app = ScoringApp(store, "bench-rater", ("default", "bench"), 1, journal=real if journal else NoJournal(real))
    submits: list[float] = []
    latencies: list[float] = []
    painted: list[float] = []  # when a frame went to the (headless) terminal
    handled: list[float] = []  # when the rating screen finished redrawing its widgets
    presses = 0
    async with app.run_test(size=(80, 24)) as pilot:
        opened = time.perf_counter()
        while getattr(app.screen, "session", None) is None:
            await pilot.pause(0.02)
        opened = time.perf_counter() - opened
        display, redraw = app._display, app.screen.refresh_form

        def timed_display(*a, **k):
            painted.append(time.perf_counter())
            return display(*a, **k)

        def timed_redraw(*a, **k):
            out = redraw(*a, **k)
            handled.append(time.perf_counter())
            return out

        submit = app.submit

        def timed_submit(*a, **k):
            t = time.perf_counter()
            out = submit(*a, **k)
            submits.append(time.perf_counter() - t)
            return out

        app._display, app.screen.refresh_form, app.submit = timed_display, timed_redraw, timed_submit
        baseline: list[float] = []
        for _ in range(30):  # an unbound key: the Pilot's own round trip, for comparison
            t = time.perf_counter()
            await pilot.press("e")
            await pilot.pause()
            baseline.append(time.perf_counter() - t)
        start = time.perf_counter()
        for _ in range(n):
            for key in KEYS_PER_RATING:
                t = time.perf_counter()
                await pilot.press(key)
                await pilot.pause()  # the key is handled and the screen refreshed
                done = next((h for h in handled if h >= t), None)
                frame = next((f for f in painted if done is not None and f >= done), None)
                latencies.append((frame if frame is not None else time.perf_counter()) - t)
                presses += 1
        keyed = time.perf_counter() - start
        while app.writer.pending():
            await pilot.pause(0.05)
        stored = time.perf_counter() - start
        await pilot.press("q")
    return {
        "presses": presses, "latencies": latencies, "baseline": baseline, "keyed_s": keyed, "stored_s": stored,
        "open_s": opened, "submits": submits,
    }


def journal_appends(root: str, n: int = 200) -> dict[str, list[float]]:
    """Per rating: the 'queued' append (on the UI thread at Enter), the 'stored' append (writer
    thread), and the fsync that makes both crash-proof (background thread), in seconds."""
    from therapy_rlhf.contracts.records import Rating
    from therapy_rlhf.tui.journal import Journal

    journal = Journal.open("s3://bench/journal", "bench-rater")
    out: dict[str, list[float]] = {"queued": [], "stored": [], "fsync": []}
    for i in range(n):
        rating = Rating(
            response_id=f"r0001-p{i}", rater="bench-rater", criteria={"empathy": 0.75, "overall": 1.0},
            reward=0.875, comment="a comment of ordinary length " * 3, submission_id=f"{i:032x}",
        )
        t = time.perf_counter()
        journal.queued("default/bench", 1, rating)
        out["queued"].append(time.perf_counter() - t)
        t = time.perf_counter()
        journal.stored(rating.submission_id or "")
        out["stored"].append(time.perf_counter() - t)
        t = time.perf_counter()
        journal.sync()  # what the background thread does for these two lines
        out["fsync"].append(time.perf_counter() - t)
        time.sleep(0.005)
    journal.release()
    return out


def startup_seconds(root: str, runs: int = 5) -> list[float]:
    """Fresh process: import, start the app, list the waiting round, first frame."""
    child = textwrap.dedent(
        f"""
        import asyncio, sys, time
        t0 = float(sys.argv[1])
        from therapy_rlhf.store.backends import open_store
        from therapy_rlhf.tui.app import ScoringApp
        async def main():
            app = ScoringApp(open_store({root!r}), "bench-rater")
            async with app.run_test(size=(80, 24)) as pilot:
                while not getattr(app.screen, "items", None):
                    await pilot.pause(0.005)
                print(time.time() - t0)
        asyncio.run(main())
        """
    )
    out = []
    for _ in range(runs):
        t0 = time.time()
        res = subprocess.run([sys.executable, "-c", child, str(t0)], capture_output=True, text=True, check=True)
        out.append(float(res.stdout.strip().splitlines()[-1]))
    return out


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--responses", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root, tempfile.TemporaryDirectory() as data:
        os.environ["THERAPY_RLHF_DATA_DIR"] = data  # the journal goes here, not to the user's data dir
        local = make_store(root, args.responses)
        startup = startup_seconds(root)
        slow = SlowStore(local, args.latency)
        result = asyncio.run(scripted_rater(slow, args.responses))
        state = load_round(local, PATHS, 1)
        cov = coverage(state, 1)
        appends = journal_appends(data)
        with tempfile.TemporaryDirectory() as root2:
            bare = asyncio.run(scripted_rater(SlowStore(make_store(root2, args.responses), args.latency), args.responses, journal=False))
    lat_ms = [v * 1000 for v in result["latencies"]]
    rated = len(state.latest())
    print(f"responses rated and stored: {rated}/{args.responses} (gate coverage {cov.describe()})")
    print(f"key presses per complete rating: {result['presses'] / max(rated, 1):.1f}")
    base_ms = [v * 1000 for v in result["baseline"]]
    print(
        f"keypress to the next frame showing its effect: p50 {pct(lat_ms, 50):.1f} ms, p95 {pct(lat_ms, 95):.1f} ms, "
        f"max {max(lat_ms):.1f} ms"
    )
    print(
        f"  (Pilot's whole round trip for an unbound key, for scale: p50 {pct(base_ms, 50):.1f} ms, "
        f"p95 {pct(base_ms, 95):.1f} ms)"
    )
    print(f"start-up to a populated start screen: median {statistics.median(startup):.2f} s, max {max(startup):.2f} s")
    print(
        f"scripted rater, {args.latency * 1000:.0f} ms per store request: "
        f"{60 * rated / result['keyed_s']:.0f} ratings/min keyed (the UI never waits), "
        f"{60 * rated / result['stored_s']:.0f} ratings/min until all were stored "
        f"({result['stored_s']:.1f} s for {rated}; {slow.requests} store requests)"
    )
    print(f"opening the round over that store (batch read, listing, score history): {result['open_s']:.2f} s")
    ms = {k: [v * 1000 for v in vs] for k, vs in appends.items()}
    print(
        f"journal per rating ({len(ms['queued'])} ratings): at Enter (UI thread) median {statistics.median(ms['queued']):.3f} ms, "
        f"p95 {pct(ms['queued'], 95):.3f} ms; 'stored' line (writer thread) median {statistics.median(ms['stored']):.3f} ms; "
        f"fsync of both (background thread) median {statistics.median(ms['fsync']):.2f} ms, p95 {pct(ms['fsync'], 95):.2f} ms"
    )
    with_j = [v * 1000 for v in result["submits"]]
    without = [v * 1000 for v in bare["submits"]]
    print(
        f"submit key's journal+queue step: with the journal median {statistics.median(with_j):.2f} ms "
        f"(p95 {pct(with_j, 95):.2f}), without {statistics.median(without):.2f} ms (p95 {pct(without, 95):.2f}); "
        f"keypress p95 without the journal {pct([v * 1000 for v in bare['latencies']], 95):.1f} ms"
    )
    return 0 if rated == args.responses and cov.is_complete else 1


if __name__ == "__main__":
    sys.exit(main())
