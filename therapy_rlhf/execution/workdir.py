"""Where the local runner keeps a run's files, and how it starts jobs and reports progress.

The run config it hands to jobs, its digests (``state.json``) and the job logs
live in ``$THERAPY_RLHF_CACHE/runner/<store>/<namespace>/<run>/``; the job
command is ``$THERAPY_RLHF_JOB_COMMAND`` or this Python's jobs module.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import sys
from pathlib import Path

from rich.console import Console

from therapy_rlhf.contracts.layout import RunPaths

JOB_COMMAND_ENV = "THERAPY_RLHF_JOB_COMMAND"
WARM_WORKER_ENV = "THERAPY_RLHF_WARM_WORKER"
JOBS_MODULE = "therapy_rlhf.jobs"


def default_job_command() -> list[str]:
    """The job launcher: ``$THERAPY_RLHF_JOB_COMMAND`` (shell words) or this Python's jobs module."""
    custom = os.environ.get(JOB_COMMAND_ENV)
    if custom:
        return shlex.split(custom)
    return [sys.executable, "-m", JOBS_MODULE]



def default_warm() -> bool:
    """Warm job starts unless ``$THERAPY_RLHF_WARM_WORKER`` is 0/false/no."""
    return os.environ.get(WARM_WORKER_ENV, "1").strip().lower() not in ("0", "false", "no")



def default_console() -> Console:
    """Progress on stderr; lines are never wrapped where stderr is a file or a CI log."""
    console = Console(stderr=True, highlight=False)
    if not console.is_terminal:
        console.soft_wrap = True
    return console



def store_folder(uri: str) -> str:
    """A folder name for a store: readable, and unique per store URI."""
    slug = re.sub(r"[^a-z0-9]+", "-", uri.lower()).strip("-")[-40:].strip("-") or "store"
    return f"{slug}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"



def work_dir_for(paths: RunPaths, store_uri: str) -> Path:
    """Where the runner keeps the run config it hands to jobs, and the job logs: one folder per
    store and run, so runs of the same name in two stores never share them."""
    cache = Path(os.environ.get("THERAPY_RLHF_CACHE", Path.home() / ".cache" / "therapy-rlhf"))
    return cache / "runner" / store_folder(store_uri) / paths.namespace / paths.run
