"""The local runner's job worker: one process that starts every job, warm where it can.

    python -m therapy_rlhf.execution.worker_server --control-fd N [--preload MODULE ...] [--cold]

Importing torch and transformers takes 5 s on an idle 2-core machine and
13 s on a busy one, against well under a second of work per tiny job. The
worker pays that once: it imports ``--preload`` modules (for the jobs:
``therapy_rlhf.jobs.preload``) and then, for each job, forks a fresh child.

* A job whose command is ``<this python> -m MODULE ARGS`` (the jobs' own
  command) runs *warm*: the child runs MODULE as ``python -m`` would
  (``runpy``, ``sys.argv``, ``SystemExit``, atexit), with the preloaded modules
  already in memory. Each job is still its own process: whatever it changes
  (torch's default dtype, seeds, threads, module globals) dies with it; its
  random generators are reseeded as a fresh interpreter's are.
* Any other command, or one whose environment or working directory differs
  from the worker's own, runs *cold*: the child ``exec``s it.

Either way the child leads its own session and process group (the runner
stops a job with ``killpg``), reads /dev/null, writes stdout and stderr to
the pipe the runner passed with the request, and gets SIGKILL if the worker
dies (``PR_SET_PDEATHSIG``). The worker stops its job and exits when the
runner says so, when the runner's end of the control socket closes (the
runner died, even by SIGKILL), or on SIGTERM, SIGINT or SIGHUP. The worker
itself gets SIGTERM from the kernel when the runner dies (``PR_SET_PDEATHSIG``
with ``--runner-pid``), so a runner killed while the worker still imports
(when nothing reads the socket) does not leave it running: SIGTERM rather
than SIGKILL so that it still stops its job's whole process group (a job's
own children would outlive a SIGKILL of the worker and the job).

Protocol (a Unix SOCK_SEQPACKET pair; one JSON object per message):

    runner -> worker  {"op": "run", "argv": [...], "env": {...}, "cwd": "..."}  + the output fd
                      {"op": "stop"}
    worker -> runner  {"event": "ready", "warm": bool, "why_cold": str, "preloaded": [...], "seconds": s}
                      {"event": "started", "pid": n, "warm": bool, "why_cold": str}
                      {"event": "exited", "pid": n, "returncode": rc}   (rc < 0: killed by signal -rc)

The runner talks to it through ``worker_client``; both speak ``worker_protocol``.
Standard library only.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import sys
import threading
import time
from typing import Any

from therapy_rlhf.execution.worker_protocol import (
    kill_group,
    recv_message,
    send_message,
    stop_process_group,
)

EXIT_START_FAILED = 127  # like a shell's "command not found"
PR_SET_PDEATHSIG = 1


# ------------------------------------------------------------------ messages


# ------------------------------------------------------------- worker side


class _Stop(BaseException):
    """SIGTERM, SIGINT or SIGHUP reached the worker."""


def _set_parent_death_signal(sig: int) -> None:
    """Linux: have the kernel send ``sig`` to this process when its parent dies (best effort)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _exit_code(exc: SystemExit) -> int:
    """What the interpreter would exit with for this SystemExit."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _reseed_random_generators() -> None:
    """A fresh interpreter seeds its generators from the OS; a forked child inherits its parent's.
    (Python's ``random`` reseeds itself after fork.)"""
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed()
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.seed()  # CPU now; CUDA generators lazily, without initialising CUDA here


def _run_module_as_main(module: str, args: list[str]) -> int:
    """``python -m module args`` inside this (forked) process; returns the exit code."""
    import atexit
    import io
    import runpy
    import traceback

    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True, errors="backslashreplace")
    sys.argv = [module, *args]
    _reseed_random_generators()
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = _exit_code(exc)
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
    except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    # What interpreter shutdown does before the process exits.
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return code


class Worker:
    """The worker process's state: its start environment and the job it is running."""

    def __init__(self, sock: socket.socket, warm: bool, why_cold: str):
        self.sock = sock
        self.warm = warm
        self.why_cold = why_cold
        self.env = dict(os.environ)
        self.cwd = os.getcwd()
        self.pid = os.getpid()
        self.job: int | None = None

    # -- preload ----------------------------------------------------------
    def preload(self, modules: list[str]) -> dict[str, Any]:
        import importlib

        started = time.perf_counter()
        loaded: list[str] = []
        for name in modules:
            try:
                importlib.import_module(name)
                loaded.append(name)
            except Exception as err:  # noqa: BLE001 - a job that needs it will say why
                self._go_cold(f"preloading {name} failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
        if threading.active_count() > 1:
            self._go_cold(f"preloading started {threading.active_count() - 1} thread(s): forking would copy them half-way")
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            self._go_cold("preloading initialised CUDA, which a forked child cannot use")
        return {
            "event": "ready", "warm": self.warm, "why_cold": self.why_cold, "preloaded": loaded,
            "seconds": round(time.perf_counter() - started, 3),
        }

    def _go_cold(self, why: str) -> None:
        if self.warm:
            self.warm, self.why_cold = False, why

    # -- jobs -------------------------------------------------------------
    def warm_module(self, argv: list[str], env: dict[str, str], cwd: str) -> tuple[str | None, str]:
        """(the module to run in a forked child, or None to exec the command; why not warm)."""
        if not self.warm:
            return None, self.why_cold
        if len(argv) < 3 or argv[1] != "-m" or os.path.abspath(argv[0]) != os.path.abspath(sys.executable):
            return None, "not `<this python> -m MODULE`"
        if env != self.env:
            # Modules read the environment when they are imported: only a new interpreter sees a change.
            changed = sorted(k for k in set(env) | set(self.env) if env.get(k) != self.env.get(k))
            return None, f"environment differs from the worker's ({', '.join(changed[:5])})"
        if os.path.abspath(cwd) != self.cwd:
            return None, "working directory differs from the worker's"
        return argv[2], ""

    def spawn(self, request: dict[str, Any], out_fd: int) -> tuple[int, str | None, str]:
        argv, env, cwd = list(request["argv"]), dict(request["env"]), str(request["cwd"])
        module, why_cold = self.warm_module(argv, env, cwd)
        for stream in (sys.stdout, sys.stderr):  # nothing of the worker's own output in the job's
            stream.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the worker's loop
            code = EXIT_START_FAILED
            try:
                self._child_setup(out_fd)
                if module is not None:
                    code = _run_module_as_main(module, argv[3:])
                else:
                    os.chdir(cwd)
                    os.execvpe(argv[0], argv, env)
            except BaseException as err:  # noqa: BLE001
                try:
                    os.write(2, f"error: cannot start the job {argv[:3]}: {err}\n".encode())
                except OSError:
                    pass
            finally:
                os._exit(code)
        self.job = pid
        return pid, module, why_cold

    def _child_setup(self, out_fd: int) -> None:
        os.setsid()
        _set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != self.pid:  # the worker died before the line above
            os._exit(EXIT_START_FAILED)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.sock.close()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.close(devnull)
        os.close(out_fd)

    def wait(self, pid: int) -> int | None:
        """The job's exit code; None when the runner went away or said stop (the job is then stopped)."""
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        try:
            while True:
                watched = [self.sock] + ([pidfd] if pidfd is not None else [])
                ready, _, _ = select.select(watched, [], [], None if pidfd is not None else 0.05)
                if self.sock in ready:
                    message, fds = recv_message(self.sock)
                    for fd in fds:
                        os.close(fd)
                    if message is None or message.get("op") == "stop":
                        self.stop_job()
                        return None
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    self.job = None
                    kill_group(pid, signal.SIGKILL)  # anything the job left running in its group
                    return os.waitstatus_to_exitcode(status)
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def stop_job(self) -> None:
        pid, self.job = self.job, None
        if pid is not None:
            stop_process_group(pid, lambda timeout: _reap(pid, timeout))

    def serve(self) -> None:
        while True:
            message, fds = recv_message(self.sock)
            if message is None or message.get("op") == "stop":
                return
            if message.get("op") != "run" or len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                continue
            pid, module, why_cold = self.spawn(message, fds[0])
            os.close(fds[0])
            send_message(self.sock, {"event": "started", "pid": pid, "warm": module is not None, "why_cold": why_cold})
            code = self.wait(pid)
            if code is None:
                return
            send_message(self.sock, {"event": "exited", "pid": pid, "returncode": code})


def _reap(pid: int, timeout: float) -> bool:
    """waitpid with a timeout, for a child of this process; True once it is gone."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return True
        if done:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m therapy_rlhf.execution.worker_server", description=__doc__.splitlines()[0])
    parser.add_argument("--control-fd", type=int, required=True, help="This end of the runner's socket pair.")
    parser.add_argument("--preload", action="append", default=[], metavar="MODULE", help="Import once, before any job.")
    parser.add_argument("--cold", action="store_true", help="Exec every job (no warm start).")
    parser.add_argument("--runner-pid", type=int, help="The runner's pid: the worker stops when that process dies.")
    args = parser.parse_args(argv)
    if args.runner_pid is not None:
        _set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != args.runner_pid:  # the runner died before the line above
            return 0
    sock = socket.socket(fileno=args.control_fd)
    os.set_inheritable(sock.fileno(), False)

    def on_signal(signum: int, _frame: Any) -> None:
        raise _Stop(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    worker = Worker(sock, warm=not args.cold, why_cold="started with --cold" if args.cold else "")
    try:
        ready = worker.preload(args.preload if not args.cold else [])
        send_message(sock, ready)
        worker.serve()
    except _Stop:
        pass
    except (BrokenPipeError, ConnectionResetError):
        pass  # the runner went away
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # stop the job once, uninterrupted
        worker.stop_job()
    return 0


if __name__ == "__main__":
    sys.exit(main())
