"""The local runner's job-worker protocol: messages over a Unix SOCK_SEQPACKET pair, and stopping a job.

Shared by the worker (``worker_server``) and the runner's handle on it
(``worker_client``). Standard library only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from typing import Any, Callable

STOP_GRACE_SECONDS = 10.0  # SIGTERM, then SIGKILL, for a job's process group
DRAIN_SECONDS = 2.0  # after a job exits, how long its output may still arrive (a straggler holding the pipe)
MAX_MESSAGE = 1 << 20


def send_message(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def recv_message(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """(message, fds); (None, []) when the other end has closed."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 1)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    return json.loads(data), list(fds)


def kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_process_group(pgid: int, wait: Callable[[float], bool], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM a job's process group, SIGKILL it if its leader has not exited after ``grace`` s."""
    kill_group(pgid, signal.SIGTERM)
    if not wait(grace):
        kill_group(pgid, signal.SIGKILL)
        wait(grace)
    kill_group(pgid, signal.SIGKILL)  # stragglers left in the group
