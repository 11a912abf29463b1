"""Where the local runner keeps a run's files, and how it starts jobs and reports progress.

The run config it hands to jobs, its digests (``state.json``), its jobs' output
reports (``outputs/``) and the job logs live in ``$THERAPY_RLHF_CACHE/runner/<store>/<namespace>/<run>/``; the job
command is ``$THERAPY_RLHF_JOB_COMMAND`` or this Python's jobs module.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import sys
from pathlib import Path

from rich.console import Console

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.store import integrity

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


def read_digests(state_file: Path) -> dict[str, str]:
    """The digests in the runner's ``state.json`` ({} before the first); ValueError naming the file."""
    try:
        doc = json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read the runner's digests {state_file}: {err}") from None
    digests = doc.get("digests") if isinstance(doc, dict) else None
    return {k: v for k, v in (digests or {}).items() if isinstance(v, str) and integrity.DIGEST_RE.fullmatch(v)}


def write_digests(state_file: Path, digests: dict[str, str]) -> None:
    """``state.json`` written whole (temp + rename): a crash leaves the old one or the new one."""
    tmp = state_file.with_name(f".{state_file.name}.tmp")
    tmp.write_text(json.dumps({"digests": digests}, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, state_file)


def read_report(path: Path, kind: str, round_no: int, paths: RunPaths) -> dict[str, str]:
    """The digests a job of ``kind`` reported in its outputs file (only names that kind writes)."""
    allowed = integrity.job_outputs(kind, round_no, paths, selecting=True)
    return integrity.parse_outputs(path.read_text(encoding="utf-8", errors="replace"), allowed)


def unread_reports(work_dir: Path, paths: RunPaths) -> dict[str, str]:
    """The digests in every report in ``work_dir/outputs`` (``<kind>-r<round>-...json``).

    A job writes its report only after its work succeeded, into the runner's
    private folder; the latest report of an output wins, as its job wrote the
    store last.
    """
    folder = work_dir / "outputs"
    if not folder.is_dir():
        return {}
    found: dict[str, str] = {}
    for path in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime):
        kind, _, rest = path.stem.partition("-r")
        round_text = rest.split("-", 1)[0]
        if kind in integrity.OUTPUT_KINDS and round_text.isdigit():
            found.update(read_report(path, kind, int(round_text), paths))
    return found
