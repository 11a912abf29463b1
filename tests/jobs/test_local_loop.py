"""The whole loop locally: `therapy-rlhf run examples/tiny-*.yaml --scoring auto` produces eval results."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tests.support.budget import budget
import yaml

from therapy_rlhf.contracts.layout import RunPaths

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(tmp_path, tiny_cache, manifest):
    store = tmp_path / "store"
    env = dict(os.environ, THERAPY_RLHF_CACHE=str(tiny_cache))
    proc = subprocess.run(
        [sys.executable, "-m", "therapy_rlhf.cli", "run", str(manifest), "--scoring", "auto", "--store", str(store)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=budget(110),  # ~70 s on a quiet machine
    )
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-4000:]
    return store


def _check(store, tmp_path, run, rounds):
    paths = RunPaths("default", run)
    assert not (tmp_path / "local-store").exists()  # --store replaced spec.storage
    sft = json.loads((store / paths.sft_metrics()).read_text())
    assert sft["steps"] > 0
    for r in range(1, rounds + 1):
        assert (store / paths.gate(r)).is_file()
        assert (store / paths.policy_metrics(r)).is_file()
    results = json.loads((store / paths.eval_results()).read_text())
    assert [s["name"] for s in results["systems"]] == ["base", "sft", "final"]
    assert [p["round"] for p in results["reward_curve"]] == list(range(1, rounds + 1))
    assert (store / paths.eval_reward_curve()).read_bytes()[:4] == b"\x89PNG"
    assert "| PPO (final) |" in (store / paths.eval_report()).read_text()


@pytest.mark.slow
def test_tiny_mistral_example_end_to_end(tmp_path, tiny_cache):
    """The README's command, exactly: examples/tiny-local.yaml with its 3 rounds."""
    store = _run(tmp_path, tiny_cache, os.path.join(REPO, "examples", "tiny-local.yaml"))
    _check(store, tmp_path, "tiny-local", 3)


@pytest.mark.slow
def test_tiny_mixtral_example_end_to_end(tmp_path, tiny_cache):
    """examples/tiny-mixtral-local.yaml, cut to one round and fewer eval examples to keep CI short."""
    doc = yaml.safe_load(open(os.path.join(REPO, "examples", "tiny-mixtral-local.yaml")))
    doc["spec"]["ppo"]["rounds"] = 1
    doc["spec"]["evaluation"]["maxExamples"] = 4
    manifest = tmp_path / "run.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    store = _run(tmp_path, tiny_cache, manifest)
    _check(store, tmp_path, "tiny-mixtral-local", 1)
