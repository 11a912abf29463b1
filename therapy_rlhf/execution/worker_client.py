"""The runner's side of the job worker: start it, run jobs through it, stop it.

The worker (``worker_server``, ``python -m therapy_rlhf.execution.worker_server``)
runs in its own process; this module only talks to it over the control socket
(``worker_protocol``). Standard library only.
"""

from __future__ import annotations

import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from therapy_rlhf.execution.worker_protocol import (
    DRAIN_SECONDS,
    STOP_GRACE_SECONDS,
    recv_message,
    send_message,
    stop_process_group,
)

STOP_READ_SECONDS = 0.5  # how long a worker gets to read "stop" before SIGTERM (one still preloading cannot)


class WorkerGone(RuntimeError):
    """The worker process died or closed its socket."""


@dataclass
class JobExit:
    """How one job ended."""

    returncode: int
    pid: int | None
    warm: bool
    worker_died: bool = False
    why_cold: str = ""


@dataclass
class JobWorkerClient:
    """The runner's handle on its worker: start it, run jobs through it, stop it."""

    preload: list[str] = field(default_factory=list)
    warm: bool = True
    log_path: Path | None = None
    ready: dict[str, Any] | None = None
    _proc: subprocess.Popen | None = None
    _sock: socket.socket | None = None
    _job_pid: int | None = None
    _exited: int | None = None
    _warm: bool = False
    _why_cold: str = ""

    def start(self) -> None:
        """Start the worker (it preloads in the background: this returns at once)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cmd = [sys.executable, "-m", "therapy_rlhf.execution.worker_server", "--control-fd", str(theirs.fileno()),
               "--runner-pid", str(os.getpid())]
        cmd += [arg for name in self.preload for arg in ("--preload", name)]
        if not self.warm:
            cmd.append("--cold")
        log = open(self.log_path, "a", encoding="utf-8") if self.log_path else subprocess.DEVNULL
        try:
            self._proc = subprocess.Popen(
                cmd, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the runner, which stops the worker itself
                # os.environ as jobs get it (the C environment can hold more: curses sets COLUMNS/LINES)
                env=dict(os.environ),
            )
        finally:
            theirs.close()
            if log is not subprocess.DEVNULL:
                log.close()
        self._sock = ours
        self.ready = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _event(self, timeout: float | None = None) -> dict[str, Any]:
        assert self._sock is not None
        if timeout is not None:
            ready, _, _ = select.select([self._sock], [], [], timeout)
            if not ready:
                raise TimeoutError
        try:
            message, fds = recv_message(self._sock)
        except (ConnectionResetError, OSError):
            message, fds = None, []
        for fd in fds:
            os.close(fd)
        if message is None:
            raise WorkerGone("the job worker exited")
        if message.get("event") == "ready":
            self.ready = message
        return message

    def run(self, argv: list[str], on_line: Callable[[str], None], env: dict[str, str] | None = None,
            cwd: str | None = None) -> JobExit:
        """Run one job to its end, passing each line of its output to ``on_line``."""
        if not self.alive:
            self.close()
            self.start()
        read_fd, write_fd = os.pipe()
        request = {"op": "run", "argv": argv, "env": dict(os.environ if env is None else env), "cwd": cwd or os.getcwd()}
        self._job_pid, self._exited, self._warm, self._why_cold = None, None, False, ""
        try:
            try:
                send_message(self._sock, request, [write_fd])
            except OSError:
                raise WorkerGone("the job worker is not listening") from None
            finally:
                os.close(write_fd)
            self._pump(read_fd, on_line)
        except WorkerGone:
            if self._job_pid is not None:  # the job got SIGKILL from the kernel (PDEATHSIG); make sure
                stop_process_group(self._job_pid, lambda timeout: _gone(self._job_pid, timeout))
            self.close()
            return JobExit(-signal.SIGKILL, self._job_pid, self._warm, worker_died=True)
        finally:
            os.close(read_fd)
        code = self._exited if self._exited is not None else -signal.SIGKILL
        return JobExit(code, self._job_pid, self._warm, why_cold="" if self._warm else self._why_cold)

    def _pump(self, read_fd: int, on_line: Callable[[str], None]) -> None:
        """Stream the job's output until it has exited and its pipe is drained."""
        partial = b""
        sel = selectors.DefaultSelector()
        sel.register(read_fd, selectors.EVENT_READ, "out")
        sel.register(self._sock, selectors.EVENT_READ, "control")
        deadline = None
        try:
            while True:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                events = sel.select(timeout)
                if not events and deadline is not None:
                    break  # exited, and whoever still holds the pipe is not the job
                for key, _ in events:
                    if key.data == "control":
                        message = self._event()
                        if message.get("event") == "started":
                            self._job_pid, self._warm = int(message["pid"]), bool(message["warm"])
                            self._why_cold = str(message.get("why_cold") or "")
                        elif message.get("event") == "exited":
                            self._exited = int(message["returncode"])
                            sel.unregister(self._sock)
                            deadline = time.monotonic() + DRAIN_SECONDS
                        continue
                    chunk = os.read(read_fd, 65536)
                    if not chunk:
                        sel.unregister(read_fd)
                        if self._exited is not None:
                            return
                        continue
                    lines = (partial + chunk).split(b"\n")
                    partial = lines.pop()
                    for line in lines:
                        on_line(line.decode("utf-8", errors="replace"))
                if self._exited is not None and not sel.get_map().get(read_fd):
                    break
        finally:
            sel.close()
            if partial:
                on_line(partial.decode("utf-8", errors="replace"))

    def stop_job(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop the running job's process group (SIGTERM, then SIGKILL) and collect its exit."""
        pid = self._job_pid
        if pid is None or self._exited is not None:
            return

        def exited(timeout: float) -> bool:
            deadline = time.monotonic() + timeout
            while self._exited is None:
                try:
                    message = self._event(max(0.0, deadline - time.monotonic()))
                except (TimeoutError, WorkerGone):
                    return self._exited is not None
                if message.get("event") == "exited":
                    self._exited = int(message["returncode"])
            return True

        stop_process_group(pid, exited, grace)

    def close(self, timeout: float = STOP_GRACE_SECONDS + 5) -> None:
        """Stop the worker (and any job it runs) now.

        A worker still importing its preload reads no "stop" until the imports end
        (seconds to tens of seconds): after a short wait it gets SIGTERM, which its
        handler turns into a clean exit at once (it stops its job first, if any)."""
        if self._sock is not None:
            try:
                send_message(self._sock, {"op": "stop"})
            except OSError:
                pass
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            for signal_to_send, wait in ((None, STOP_READ_SECONDS), (signal.SIGTERM, timeout), (signal.SIGKILL, None)):
                if signal_to_send is not None:
                    self._proc.send_signal(signal_to_send)
                try:
                    self._proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            self._proc = None


def _gone(pid: int, timeout: float) -> bool:
    """Wait for a process that is not our child to disappear (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
