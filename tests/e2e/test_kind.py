"""The end-to-end test on kind (a real Kubernetes API), driven by run-kind.sh.

It needs Docker, kind, kubectl and helm; without them it is skipped and says
which is missing. The emulated-cluster suite (tests/operator) runs everywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("run-kind.sh")
TOOLS = ("docker", "kind", "kubectl", "helm")


def missing_reason() -> str | None:
    absent = [t for t in TOOLS if shutil.which(t) is None]
    if absent:
        return f"kind e2e needs {', '.join(TOOLS)}; not installed here: {', '.join(absent)}"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "kind e2e needs a Docker engine; 'docker info' failed here"
    return None


@pytest.mark.e2e
@pytest.mark.timeout(3600)
def test_tiny_run_succeeds_on_kind():
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    env = dict(os.environ, E2E_REQUIRED="1")
    result = subprocess.run(["bash", str(SCRIPT)], env=env)
    assert result.returncode == 0, "run-kind.sh failed; its output above has the dump"


def test_script_skips_honestly_without_docker(tmp_path):
    """With no tools on PATH the script says why and does not pretend to pass a test."""
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}
    bash = shutil.which("bash")
    result = subprocess.run([bash, str(SCRIPT)], env=env, capture_output=True, text=True)
    assert result.returncode == 0
    assert "SKIPPED: kind end-to-end test not run" in result.stderr and "docker" in result.stderr
    env["E2E_REQUIRED"] = "1"
    assert subprocess.run([bash, str(SCRIPT)], env=env, capture_output=True).returncode == 77
