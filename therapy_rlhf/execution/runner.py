"""The local runner: the whole loop on one machine, no cluster.

    therapy-rlhf run examples/tiny-local.yaml --scoring auto

It carries out the shared planner's actions with local processes (one job
at a time, ``python -m therapy_rlhf.jobs <kind> ...``), waits at each gate
until ratings arrive (from the simulated rater, the scoring TUI in this
terminal, or anywhere else), and can be stopped with Ctrl-C or killed at any
moment: every step's output is written whole with its marker last, so the
next start observes the store and continues where the run was.

Jobs start through a warm worker (``therapy_rlhf.execution.worker_server``): one process
that imports torch, transformers and peft once and forks a fresh child per
job, so a job starts in a fraction of a second instead of re-importing for
seconds, and is still its own process (own session and process group, its
exit code, its crash a failed attempt). ``--cold-jobs`` (or
``THERAPY_RLHF_WARM_WORKER=0``) starts every job as a new interpreter.

Stopping: Ctrl-C, SIGTERM and SIGHUP stop the running job's process group,
then the worker, then the runner (exit 128 + the signal). If the runner is
killed outright (SIGKILL), the worker sees its socket close and stops the job.

The runner is the local executor of ``therapy_rlhf.store.integrity``: it keeps the
digests of the gates it closed and of its jobs' outputs (reported in a file in
its private work folder) in ``state.json`` there, and starts each job with the
digests of its inputs, so nothing written to the store by anyone else trains
the model.
"""

from __future__ import annotations

import collections
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from therapy_rlhf.contracts import phases
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.contracts.spec import RunManifest, RunSpec
from therapy_rlhf.execution import preview, step, workdir
from therapy_rlhf.execution.worker_client import JobExit, JobWorkerClient
from therapy_rlhf.feedback.predictions import PrivateFolder
from therapy_rlhf.execution.workdir import JOBS_MODULE, default_console, default_job_command, default_warm, work_dir_for
from therapy_rlhf.planning.observe import observe_store
from therapy_rlhf.planning.planner import (
    CloseGate, Decision, Fail, Finish, JobObservation, StartJob, Suspend, WaitForJob, WaitForRatings, plan,
)
from therapy_rlhf.store import integrity, lease
from therapy_rlhf.store.backends import Store
from therapy_rlhf.store.runs import dump_manifest, freeze_spec

ScoringMode = Literal["auto", "tui", "none"]
# The scoring app in this terminal (--scoring tui): (store URI, rater id, (namespace, run), round) -> exit code.
# The CLI wires the TUI in; the runner never imports it.
ScoringApp = Callable[[str, "str | None", "tuple[str, str]", int], int]

# Exit codes of `therapy-rlhf run`.
EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_SUSPENDED = 3
EXIT_PAUSED = 4  # the rater closed the scoring TUI before the gate closed
EXIT_HELD = 5  # another runner, or the operator, holds the run's lease
EXIT_INTERRUPTED = 130

# Imported once by the warm worker when the jobs are the project's own.
JOBS_PRELOAD = ("therapy_rlhf.jobs.preload",)
LOG_TAIL_LINES = 20
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # SIGINT arrives as KeyboardInterrupt
POLL_SECONDS_LOCAL = 0.5
POLL_SECONDS_S3 = 2.0


class RunnerError(RuntimeError):
    """The runner cannot go on (a one-line reason)."""


class Stopped(BaseException):
    """SIGTERM or SIGHUP reached the runner: stop the job and exit like Ctrl-C does."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@dataclass
class LocalRunner:
    manifest: RunManifest
    store: Store
    # How each batch gets its scores: 'auto' the simulated rater, 'tui' the scoring app in this
    # terminal (``scoring_app``), 'none' from anywhere else.
    scoring: ScoringMode = "none"
    rater_id: str | None = None
    scoring_app: ScoringApp | None = None
    # Seconds between store polls at a gate; None: POLL_SECONDS_LOCAL for a local directory
    # (a listing costs nothing), POLL_SECONDS_S3 for S3 (each poll is a LIST request).
    poll_interval: float | None = None
    job_command: list[str] = field(default_factory=default_job_command)
    console: Console = field(default_factory=default_console)
    # Fork jobs from a worker that has imported the jobs' libraries once (see module docstring).
    warm: bool = field(default_factory=default_warm)
    # What that worker imports; None: the jobs' libraries when job_command is the jobs module.
    preload: tuple[str, ...] | None = None
    # Called while waiting for ratings in 'none' mode (tests use it to rate from "elsewhere").
    on_wait: Callable[[WaitForRatings], None] | None = None
    max_polls: int | None = None
    # How long the run's lease lasts unrenewed (renewed every third of it while the runner runs).
    lease_seconds: float = lease.LOCAL_LEASE_SECONDS

    def __post_init__(self) -> None:
        if self.poll_interval is None:
            self.poll_interval = POLL_SECONDS_S3 if self.store.uri.startswith("s3://") else POLL_SECONDS_LOCAL
        self.paths = RunPaths(self.manifest.namespace, self.manifest.name)
        self.jobs: dict[tuple[str, int], JobObservation] = {}
        # The executor's digests (integrity): name -> digest of what it closed or its jobs wrote.
        self.digests: dict[str, str] = {}
        self._last_message = ""
        self.worker: JobWorkerClient | None = None
        self._worker_announced = False
        self.keeper: lease.LeaseKeeper | None = None

    # ------------------------------------------------------------------ loop
    def prepare(self, write_config: bool = True) -> tuple[RunManifest, RunSpec]:
        """Freeze the spec in the store (a restart keeps the frozen one) and write the jobs' run config
        (``run()`` writes it only once it holds the run's lease: a refused runner changes nothing)."""
        frozen = freeze_spec(self.store, self.manifest)
        spec = step.effective_spec(frozen.spec, self.manifest.spec)
        self.work_dir = work_dir_for(self.paths, self.store.uri)
        self.config_file = self.work_dir / "run.json"
        self._config = dump_manifest(frozen.model_copy(update={"spec": spec})).encode("utf-8")
        self.config_sha = integrity.sha256(self._config)
        if write_config:
            self.write_config()
        self.state_file = self.work_dir / "state.json"
        # Where jobs seal the reward model's predictions until the runner closes the gate (feedback.predictions).
        self.private_dir = self.work_dir / "private"
        self.digests = self.load_state()
        return frozen, spec

    def run(self) -> int:
        """Drive the run until it succeeds, fails or is suspended; returns an exit code."""
        restore = self._catch_stop_signals()
        try:
            # 1. Freeze the spec and read this runner's digests (the jobs' run config is written
            #    once this runner holds the run's lease, in 2.).
            frozen, spec = self.prepare(write_config=False)
            self.say(f"run {self.paths.root} in {self.store.uri}")
            warned: set[int] = set()
            polls = 0
            awaiting = None  # the round awaiting ratings as last read: polls read only new ratings
            # Reports of jobs that finished while no runner watched (an earlier runner was killed).
            self.absorb_outputs()
            while True:
                # 3. Observe the store and plan the single next action.
                observed, awaiting = observe_store(
                    self.store, self.paths, spec, jobs=self.jobs, now=time.time(), previous=awaiting,
                    executor_digests=self.digests,
                )
                for r, ro in observed.rounds.items():
                    if ro.gate_unrecorded and r not in warned:
                        warned.add(r)
                        self.say(f"[yellow]round {r}: ignoring a gate.json this runner did not close[/] "
                                 "(it is replaced when the round's gate closes)")
                decision = plan(spec, observed)
                self.report(decision)
                action = decision.action
                # 2. Before acting: hold the run's lease (one executor per run), and start the warm
                #    job worker, whose imports overlap the scoring: a job is coming. A finished, failed
                #    or suspended run needs neither and says so at once, changing nothing.
                if not isinstance(action, (Finish, Fail, Suspend)):
                    self.hold()
                    if self.worker is None and self._preload():
                        self.worker = self._start_worker()
                # 4. Carry it out.
                if isinstance(action, StartJob):
                    self.run_job(action)
                elif isinstance(action, CloseGate):
                    try:
                        done = step.close_round_gate(
                            self.store, self.paths, spec, action, "runner", "local-runner", self.digests,
                            lambda name, digest: self.keep_digests({name: digest}), previous=awaiting,
                            vault=PrivateFolder(self.private_dir),
                        )
                    except step.GateNotClosed as err:
                        raise RunnerError(str(err)) from None
                    self.keep_digests(done.digests)
                    for notice in done.notices:
                        self.say(f"[yellow]{notice.message}[/]" if notice.level == step.WARNING else notice.message)
                elif isinstance(action, WaitForRatings):
                    if not self.wait_for_ratings(action, frozen):
                        self.say(
                            f"round {action.round}: scoring closed at {action.rated}/{action.total} rated; "
                            "run the same command again to continue rating"
                        )
                        return EXIT_PAUSED
                    polls += 1
                    if self.max_polls is not None and polls >= self.max_polls:
                        return EXIT_SUSPENDED
                elif isinstance(action, WaitForJob):  # jobs run synchronously here
                    raise RunnerError(f"unexpected running job {action}")
                elif isinstance(action, Suspend):
                    if decision.reason == phases.R_FLUENCY_COLLAPSE:
                        self.say(f"[bold yellow]paused ({decision.reason})[/]: {decision.message}")
                    else:
                        self.say("suspended (spec.suspend is true): no new jobs; set it to false and run again")
                    return EXIT_SUSPENDED
                elif isinstance(action, Finish):
                    self.say(f"[bold green]run succeeded[/]: see `therapy-rlhf status {self.paths.run} --store {self.store.uri}`")
                    return EXIT_SUCCEEDED
                elif isinstance(action, Fail):
                    self.say(f"[bold red]run failed[/]: {action.reason}")
                    return EXIT_FAILED
        except lease.LeaseHeld as err:
            self.say(f"[bold red]refused[/]: {err}")
            return EXIT_HELD
        except RunnerError as err:
            self.say(f"[bold red]error[/]: {err}")
            return EXIT_FAILED
        except (KeyboardInterrupt, Stopped) as stop:
            self._ignore_stop_signals()  # a second signal must not cut the clean-up short
            self.stop_child()
            name = signal.Signals(stop.signum).name if isinstance(stop, Stopped) else "Ctrl-C"
            self.say(f"stopped ({name}); run the same command again to continue where the run was")
            return 128 + stop.signum if isinstance(stop, Stopped) else EXIT_INTERRUPTED
        finally:
            self.close()
            restore()

    def write_config(self) -> None:
        (self.work_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.config_file.write_bytes(self._config)

    # ------------------------------------------------------ process control
    def hold(self) -> None:
        """Take the run's lease once (LeaseHeld if another executor has it), then keep it; RunnerError
        once it was taken over."""
        if self.keeper is None:
            holding = lease.acquire(self.store, self.paths, lease.local_holder(), lease.KIND_LOCAL, self.lease_seconds)
            if holding.took_over:
                self.say(f"[yellow]took over the run's lease[/] from {holding.took_over}")
            self.keeper = lease.LeaseKeeper(holding, self.lease_seconds)
            self.keeper.start()
            self.write_config()
        if self.keeper.lost:
            raise RunnerError(self.keeper.lost)

    def _preload(self) -> tuple[str, ...]:
        if not self.warm:
            return ()
        if self.preload is not None:
            return tuple(self.preload)
        return JOBS_PRELOAD if self.job_command == [sys.executable, "-m", JOBS_MODULE] else ()

    def _start_worker(self) -> JobWorkerClient:
        worker = JobWorkerClient(list(self._preload()), self.warm, self.work_dir / "logs" / "worker.log")
        worker.start()
        return worker

    def _catch_stop_signals(self) -> Callable[[], None]:
        """SIGTERM/SIGHUP raise Stopped, SIGINT KeyboardInterrupt (main thread only); returns a function
        restoring the old handlers."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def on_signal(signum: int, _frame) -> None:
            raise Stopped(signum)

        previous = {sig: signal.getsignal(sig) for sig in (*STOP_SIGNALS, signal.SIGINT)}
        for sig in STOP_SIGNALS:
            signal.signal(sig, on_signal)
        # Ctrl-C is KeyboardInterrupt even when the runner was started with SIGINT ignored
        # (a shell without job control starts background commands so): `kill -INT` still stops it.
        signal.signal(signal.SIGINT, signal.default_int_handler)

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

        return restore

    def _ignore_stop_signals(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (*STOP_SIGNALS, signal.SIGINT):
                signal.signal(sig, signal.SIG_IGN)

    # ------------------------------------------------------------- progress
    def say(self, message: str) -> None:
        self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {message}")

    def report(self, decision: Decision) -> None:
        text = f"[bold]{decision.phase:<15}[/] {decision.message}"
        if text != self._last_message:
            self._last_message = text
            self.say(text)

    # ------------------------------------------------------------------ jobs
    def run_job(self, action: StartJob) -> None:
        """Run one job to completion, streaming its output, and record the outcome."""
        # One file per launch: a job that outlived a killed runner keeps its report.
        outputs_file = self.work_dir / "outputs" / f"{action.kind}-r{action.round}-a{action.attempt}-{uuid.uuid4().hex[:8]}.json"
        outputs_file.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            *self.job_command,
            action.kind,
            "--run-config",
            str(self.config_file),
            "--round",
            str(action.round),
            "--store",
            self.store.uri,
            *integrity.expect_args(action.kind, action.round, self.manifest.spec, self.paths, self.digests, self.config_sha),
            "--outputs-file",
            str(outputs_file),
            "--private-dir",
            str(self.private_dir),
        ]
        log_path = self.work_dir / "logs" / f"{action.kind}-r{action.round}-a{action.attempt}.log"
        tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        started = time.monotonic()
        if self.worker is None:  # no preload to overlap, or run_job called on its own
            self.worker = self._start_worker()
        with open(log_path, "w", encoding="utf-8") as log:

            def on_line(line: str) -> None:
                log.write(line + "\n")
                log.flush()
                tail.append(line.rstrip())
                self.console.print(Text.assemble((f"  {action.kind}> ", "dim"), line.rstrip()), highlight=False)

            # The job gets its own session so Ctrl-C reaches the runner first,
            # which then stops the job cleanly (nothing half-written survives).
            outcome = self.worker.run(cmd, on_line)
        self._announce_worker()
        if outputs_file.is_file():  # also a failed job's: ppo-generate reports its update before it samples
            self.keep_digests(self.read_outputs(outputs_file, action.kind, action.round))
        self.observe_outcome(action, outcome, list(tail), time.monotonic() - started, log_path)

    def observe_outcome(self, action: StartJob, outcome: JobExit, tail: list[str], elapsed: float, log_path: Path) -> None:
        """The one place a job's end becomes the planner's JobObservation."""
        prior = self.jobs.get((action.kind, action.round))
        failures = prior.failures if prior else 0
        code = outcome.returncode
        how = "warm start" if outcome.warm else f"cold start: {outcome.why_cold}" if outcome.why_cold else "cold start"
        if code == 0:
            self.jobs[(action.kind, action.round)] = JobObservation(
                action.kind, action.round, action.attempt, "succeeded", failures
            )
            self.say(f"{action.kind} job finished in {elapsed:.1f}s ({how})")
            return
        errors = [ln for ln in tail if ln.startswith("error:")]
        if outcome.worker_died:
            reason = "the job worker died while the job ran"
        elif code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
            reason = f"the job process was killed by {name}"
        else:
            reason = errors[-1] if errors else (tail[-1] if tail else f"exit code {code}")
        self.jobs[(action.kind, action.round)] = JobObservation(
            action.kind, action.round, action.attempt, "failed", failures + 1, reason.removeprefix("error:").strip()
        )
        self.say(f"[red]{action.kind} job failed[/] (exit {code}) after {elapsed:.1f}s; log: {log_path}")

    def _announce_worker(self) -> None:
        ready = self.worker.ready if self.worker else None
        if ready is not None and not self._worker_announced:
            self._worker_announced = True
            if ready["warm"]:
                loaded = ", ".join(ready["preloaded"]) or "nothing"
                self.say(f"job worker: jobs start warm (preloaded {loaded} in {ready['seconds']:.1f}s)")
            else:
                self.say(f"job worker: jobs start cold ({ready['why_cold']})")

    # ----------------------------------------------------------- the digests
    def load_state(self) -> dict[str, str]:
        """The digests recorded by earlier starts of this runner for this run."""
        try:
            return workdir.read_digests(self.state_file)
        except ValueError as err:
            raise RunnerError(str(err)) from None

    def read_outputs(self, path: Path, kind: str, round_no: int) -> dict[str, str]:
        return workdir.read_report(path, kind, round_no, self.paths)

    def absorb_outputs(self) -> None:
        """Take in the reports of jobs that finished while no runner watched (it was killed)."""
        found = workdir.unread_reports(self.work_dir, self.paths)
        self.keep_digests({k: v for k, v in found.items() if self.digests.get(k) != v})

    def keep_digests(self, digests: dict[str, str]) -> None:
        """Add digests to the runner's digests and write them whole (temp + rename) before going on."""
        if digests:
            self.digests.update(digests)
            workdir.write_digests(self.state_file, self.digests)

    def stop_child(self) -> None:
        if self.worker is not None:
            self.worker.stop_job()

    def close(self) -> None:
        """Stop the job worker and release the lease (run() does this itself before it returns)."""
        if self.worker is not None:
            self.worker.close()
            self.worker = None
        if self.keeper is not None:
            self.keeper.stop()
            self.keeper = None

    # --------------------------------------------------------------- ratings
    def wait_for_ratings(self, action: WaitForRatings, frozen: RunManifest) -> bool:
        """Let ratings arrive; False when the rater chose to stop (TUI closed)."""
        if self.scoring == "auto":
            from therapy_rlhf.feedback.simrater import rate_round

            written = rate_round(self.store, self.paths, frozen, action.round)
            self.say(f"round {action.round}: SIMULATED rater wrote {written} rating(s) (demo/CI only)")
            for line in preview.round_lines(self.store, self.paths, frozen.spec, action.round):
                self.say(escape(line))  # model text is not markup
            if written == 0:
                time.sleep(self.poll_interval)  # nothing to add: ratings must come from elsewhere
            return True
        if self.scoring == "tui":
            if self.scoring_app is None:
                raise RunnerError("--scoring tui needs the scoring app, which `therapy-rlhf run` provides")
            storage = frozen.spec.storage
            if storage.endpoint and self.store.uri.startswith("s3://"):
                os.environ.setdefault("AWS_ENDPOINT_URL", storage.endpoint)
            code = self.scoring_app(self.store.uri, self.rater_id, (self.paths.namespace, self.paths.run), action.round)
            if code > 128:  # the app exited on SIGHUP/SIGTERM (scores kept in its journal): stop too
                raise KeyboardInterrupt
            if code != 0:
                raise RunnerError(f"the scoring TUI could not start (exit {code})")
            # Back from the TUI: go on only if the gate can close now.
            observed, _ = observe_store(
                self.store, self.paths, frozen.spec, now=time.time(), executor_digests=self.digests
            )
            ro = observed.round(action.round)
            return ro.complete or ro.gate
        if self.on_wait is not None:
            self.on_wait(action)
        time.sleep(self.poll_interval)
        return True
