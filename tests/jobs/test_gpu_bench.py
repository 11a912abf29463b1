"""bench/gpu_bench.py: its CPU dry run goes through every step (no GPU was lent to check it on one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.budget import budget

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_bench.py"


def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES=""), timeout=budget(30))
    assert proc.returncode == 0 and proc.stdout.strip() == "no CUDA device: skipped"
    assert json.loads(out.read_text()) == {"skipped": "no CUDA device"}


@pytest.mark.slow
def test_cpu_smoke_runs_every_step(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(out), "--total-seconds", str(budget(150))],
                          capture_output=True, text=True, timeout=budget(200))
    doc = json.loads(out.read_text())
    assert proc.returncode == 0 and doc["errors"] == {}, proc.stdout[-3000:] + proc.stderr[-2000:]
    steps = doc["steps"]
    assert list(steps) == ["matmul_peak", "tiny_jobs", "mistral7b_bf16_lora", "mistral_4bit", "mixtral_layer_4bit"]
    assert steps["tiny_jobs"]["ppo_device"] == "cpu" and steps["tiny_jobs"]["responses"] > 0
    assert steps["mistral7b_bf16_lora"]["ppo_train_tokens_per_s"] > 0 and "mfu_6n_pct" in steps["mistral7b_bf16_lora"]
    four = steps["mistral_4bit"]
    assert four["linear_weights"] == four["linear_weights_4bit"] > 0
    assert steps["mixtral_layer_4bit"]["experts_4bit"] is True
    assert all(s["step_seconds"] > 0 for s in steps.values())
