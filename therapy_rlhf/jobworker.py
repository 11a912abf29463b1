"""The local runner's job worker: one process that starts every job, warm where it can.

    python -m therapy_rlhf.jobworker --control-fd N [--preload MODULE ...] [--cold]

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
runner died, even by SIGKILL), or on SIGTERM, SIGINT or SIGHUP.

Protocol (a Unix SOCK_SEQPACKET pair; one JSON object per message):

    runner -> worker  {"op": "run", "argv": [...], "env": {...}, "cwd": "..."}  + the output fd
                      {"op": "stop"}
    worker -> runner  {"event": "ready", "warm": bool, "why_cold": str, "preloaded": [...], "seconds": s}
                      {"event": "started", "pid": n, "warm": bool, "why_cold": str}
                      {"event": "exited", "pid": n, "returncode": rc}   (rc < 0: killed by signal -rc)

This module imports only the standard library: the runner imports it too.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

STOP_GRACE_SECONDS = 10.0  # SIGTERM, then SIGKILL, for a job's process group
DRAIN_SECONDS = 2.0  # after a job exits, how long its output may still arrive (a straggler holding the pipe)
MAX_MESSAGE = 1 << 20
STOP_READ_SECONDS = 0.5  # how long a worker gets to read "stop" before SIGTERM (one still preloading cannot)
EXIT_START_FAILED = 127  # like a shell's "command not found"
PR_SET_PDEATHSIG = 1


# ------------------------------------------------------------------ messages


def _send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def _recv(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """(message, fds); (None, []) when the other end has closed."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 1)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    return json.loads(data), list(fds)


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
                    message, fds = _recv(self.sock)
                    for fd in fds:
                        os.close(fd)
                    if message is None or message.get("op") == "stop":
                        self.stop_job()
                        return None
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    self.job = None
                    _kill_group(pid, signal.SIGKILL)  # anything the job left running in its group
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
            message, fds = _recv(self.sock)
            if message is None or message.get("op") == "stop":
                return
            if message.get("op") != "run" or len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                continue
            pid, module, why_cold = self.spawn(message, fds[0])
            os.close(fds[0])
            _send(self.sock, {"event": "started", "pid": pid, "warm": module is not None, "why_cold": why_cold})
            code = self.wait(pid)
            if code is None:
                return
            _send(self.sock, {"event": "exited", "pid": pid, "returncode": code})


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


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


def stop_process_group(pgid: int, wait: Callable[[float], bool], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM a job's process group, SIGKILL it if its leader has not exited after ``grace`` s."""
    _kill_group(pgid, signal.SIGTERM)
    if not wait(grace):
        _kill_group(pgid, signal.SIGKILL)
        wait(grace)
    _kill_group(pgid, signal.SIGKILL)  # stragglers left in the group


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m therapy_rlhf.jobworker", description=__doc__.splitlines()[0])
    parser.add_argument("--control-fd", type=int, required=True, help="This end of the runner's socket pair.")
    parser.add_argument("--preload", action="append", default=[], metavar="MODULE", help="Import once, before any job.")
    parser.add_argument("--cold", action="store_true", help="Exec every job (no warm start).")
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.control_fd)
    os.set_inheritable(sock.fileno(), False)

    def on_signal(signum: int, _frame: Any) -> None:
        raise _Stop(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    worker = Worker(sock, warm=not args.cold, why_cold="started with --cold" if args.cold else "")
    try:
        ready = worker.preload(args.preload if not args.cold else [])
        _send(sock, ready)
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


# ------------------------------------------------------------- runner side


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
        cmd = [sys.executable, "-m", "therapy_rlhf.jobworker", "--control-fd", str(theirs.fileno())]
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
            message, fds = _recv(self._sock)
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
                _send(self._sock, request, [write_fd])
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
                _send(self._sock, {"op": "stop"})
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


if __name__ == "__main__":
    sys.exit(main())
