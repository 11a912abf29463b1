"""`therapy-rlhf run MANIFEST --scoring auto --store STORE` as a subprocess, for the end-to-end job tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.budget import budget


def run_auto(manifest: Path, store: Path, cwd: Path, cache: Path, quiet_seconds: float) -> subprocess.CompletedProcess:
    """The local runner with the simulated rater, the model cache at ``cache``, waited for up to budget(quiet_seconds)."""
    return subprocess.run(
        [sys.executable, "-m", "therapy_rlhf.cli", "run", str(manifest), "--scoring", "auto", "--store", str(store)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=budget(quiet_seconds),
        env=dict(os.environ, THERAPY_RLHF_CACHE=str(cache)),
    )
