"""The local runner: the whole loop on one machine, no cluster.

    therapy-rlhf run examples/tiny-local.yaml --rater auto

It carries out the shared planner's actions with local subprocesses (one job
at a time, ``python -m therapy_rlhf.jobs <kind> ...``), waits at each gate
until ratings arrive (from the simulated rater, the scoring TUI in this
terminal, or anywhere else), and can be stopped with Ctrl-C or killed at any
moment: every step's output is written whole with its marker last, so the
next start observes the store and continues where the run was.
"""

from __future__ import annotations

import collections
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from rich.console import Console
from rich.text import Text

from therapy_rlhf.layout import RunPaths
from therapy_rlhf.observe import observe_store
from therapy_rlhf.planner import (
    CloseGate,
    Decision,
    Fail,
    Finish,
    JobObservation,
    StartJob,
    Suspend,
    WaitForJob,
    WaitForRatings,
    plan,
)
from therapy_rlhf.ratings import close_gate
from therapy_rlhf.runs import dump_manifest, freeze_spec
from therapy_rlhf.spec import RunManifest
from therapy_rlhf.store import Store

RaterMode = Literal["auto", "tui", "none"]

# Exit codes of `therapy-rlhf run`.
EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_SUSPENDED = 3
EXIT_PAUSED = 4  # the rater closed the scoring TUI before the gate closed
EXIT_INTERRUPTED = 130

JOB_COMMAND_ENV = "THERAPY_RLHF_JOB_COMMAND"
LOG_TAIL_LINES = 20


class RunnerError(RuntimeError):
    """The runner cannot go on (a one-line reason)."""


def default_job_command() -> list[str]:
    """The job launcher: ``$THERAPY_RLHF_JOB_COMMAND`` (shell words) or this Python's jobs module."""
    custom = os.environ.get(JOB_COMMAND_ENV)
    if custom:
        return shlex.split(custom)
    return [sys.executable, "-m", "therapy_rlhf.jobs"]


def work_dir_for(paths: RunPaths) -> Path:
    """Where the runner keeps the run config it hands to jobs, and the job logs."""
    cache = Path(os.environ.get("THERAPY_RLHF_CACHE", Path.home() / ".cache" / "therapy-rlhf"))
    return cache / "runner" / paths.namespace / paths.run


@dataclass
class LocalRunner:
    manifest: RunManifest
    store: Store
    rater: RaterMode = "none"
    rater_id: str | None = None
    poll_interval: float = 2.0
    job_command: list[str] = field(default_factory=default_job_command)
    console: Console = field(default_factory=lambda: Console(stderr=True, highlight=False))
    # Called while waiting for ratings in 'none' mode (tests use it to rate from "elsewhere").
    on_wait: Callable[[WaitForRatings], None] | None = None
    max_polls: int | None = None

    def __post_init__(self) -> None:
        self.paths = RunPaths(self.manifest.namespace, self.manifest.name)
        self.jobs: dict[tuple[str, int], JobObservation] = {}
        self._last_message = ""
        self._child: subprocess.Popen[str] | None = None

    # ------------------------------------------------------------------ loop
    def run(self) -> int:
        """Drive the run until it succeeds, fails or is suspended; returns an exit code."""
        # 1. Freeze the spec in the store (a restart keeps the frozen one).
        frozen = freeze_spec(self.store, self.manifest)
        spec = frozen.spec.model_copy(update={"suspend": self.manifest.spec.suspend})
        self.work_dir = work_dir_for(self.paths)
        (self.work_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.config_file = self.work_dir / "run.json"
        self.config_file.write_text(dump_manifest(frozen.model_copy(update={"spec": spec})))
        self.say(f"run {self.paths.root} in {self.store.uri}")
        polls = 0
        awaiting = None  # the round awaiting ratings as last read: polls read only new ratings
        try:
            while True:
                # 2. Observe the store and plan the single next action.
                observed, awaiting = observe_store(
                    self.store, self.paths, spec, jobs=self.jobs, now=time.time(), previous=awaiting
                )
                decision = plan(spec, observed)
                self.report(decision)
                action = decision.action
                # 3. Carry it out.
                if isinstance(action, StartJob):
                    self.run_job(action)
                elif isinstance(action, CloseGate):
                    gate = close_gate(
                        self.store, self.paths, action.round, spec.feedback, action.reason, "local-runner", previous=awaiting
                    )
                    self.say(
                        f"round {action.round}: gate closed ({gate.reason}), "
                        f"{gate.responses_rewarded}/{gate.responses_total} rewarded, mean reward {gate.mean_reward:.3f}"
                    )
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
                    self.say("suspended (spec.suspend is true): no new jobs; set it to false and run again")
                    return EXIT_SUSPENDED
                elif isinstance(action, Finish):
                    self.say(f"[bold green]run succeeded[/]: see `therapy-rlhf status {self.paths.run} --store {self.store.uri}`")
                    return EXIT_SUCCEEDED
                elif isinstance(action, Fail):
                    self.say(f"[bold red]run failed[/]: {action.reason}")
                    return EXIT_FAILED
        except RunnerError as err:
            self.say(f"[bold red]error[/]: {err}")
            return EXIT_FAILED
        except KeyboardInterrupt:
            self.stop_child()
            self.say("stopped; run the same command again to continue where the run was")
            return EXIT_INTERRUPTED

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
        cmd = [
            *self.job_command,
            action.kind,
            "--run-config",
            str(self.config_file),
            "--round",
            str(action.round),
            "--store",
            self.store.uri,
        ]
        log_path = self.work_dir / "logs" / f"{action.kind}-r{action.round}-a{action.attempt}.log"
        prior = self.jobs.get((action.kind, action.round))
        failures = prior.failures if prior else 0
        tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        started = time.monotonic()
        with open(log_path, "w", encoding="utf-8") as log:
            # The job gets its own session so Ctrl-C reaches the runner first,
            # which then stops the job cleanly (nothing half-written survives).
            self._child = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                bufsize=1,
                start_new_session=True,
            )
            assert self._child.stdout is not None
            for line in self._child.stdout:
                log.write(line)
                tail.append(line.rstrip())
                self.console.print(Text.assemble((f"  {action.kind}> ", "dim"), line.rstrip()), highlight=False)
            code = self._child.wait()
            self._child = None
        elapsed = time.monotonic() - started
        if code == 0:
            self.jobs[(action.kind, action.round)] = JobObservation(
                action.kind, action.round, action.attempt, "succeeded", failures
            )
            self.say(f"{action.kind} job finished in {elapsed:.1f}s")
            return
        reason = next((ln for ln in reversed(tail) if ln.startswith("error:")), tail[-1] if tail else f"exit code {code}")
        self.jobs[(action.kind, action.round)] = JobObservation(
            action.kind, action.round, action.attempt, "failed", failures + 1, reason.removeprefix("error:").strip()
        )
        self.say(f"[red]{action.kind} job failed[/] (exit {code}) after {elapsed:.1f}s; log: {log_path}")

    def stop_child(self) -> None:
        child = self._child
        if child is not None and child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)

    # --------------------------------------------------------------- ratings
    def wait_for_ratings(self, action: WaitForRatings, frozen: RunManifest) -> bool:
        """Let ratings arrive; False when the rater chose to stop (TUI closed)."""
        if self.rater == "auto":
            from therapy_rlhf.simrater import rate_round

            written = rate_round(self.store, self.paths, frozen, action.round)
            self.say(f"round {action.round}: SIMULATED rater wrote {written} rating(s) (demo/CI only)")
            if written == 0:
                time.sleep(self.poll_interval)  # nothing to add: ratings must come from elsewhere
            return True
        if self.rater == "tui":
            from therapy_rlhf.tui import launch

            storage = frozen.spec.storage
            if storage.endpoint and self.store.uri.startswith("s3://"):
                os.environ.setdefault("AWS_ENDPOINT_URL", storage.endpoint)
            code = launch(self.store.uri, self.rater_id, (self.paths.namespace, self.paths.run), action.round)
            if code != 0:
                raise RunnerError(f"the scoring TUI could not start (exit {code})")
            # Back from the TUI: go on only if the gate can close now.
            observed, _ = observe_store(self.store, self.paths, frozen.spec, now=time.time())
            ro = observed.round(action.round)
            return ro.complete or ro.gate
        if self.on_wait is not None:
            self.on_wait(action)
        time.sleep(self.poll_interval)
        return True
