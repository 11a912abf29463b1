"""Finding the processes a test started, by a mark in their environment.

Every process a test starts inherits ``THERAPY_RLHF_TEST_PROCESS_MARK`` (set
it with the ``mark`` fixture pattern below), however it was started: the
runner, its job worker, jobs forked or exec'd, their children. So "nothing the
run started is still alive" is a scan of /proc for that mark.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

MARK_ENV = "THERAPY_RLHF_TEST_PROCESS_MARK"


def marked_processes(mark: str) -> list[int]:
    """Live processes (zombies excluded) whose environment carries this mark."""
    needle = f"{MARK_ENV}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def kill_marked(mark: str) -> None:
    for pid in marked_processes(mark):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_until(predicate, seconds: float, what: str):
    """Poll ``predicate`` until it returns something truthy; AssertionError after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds:.0f}s waiting for {what}")
