"""What every job shares: the context it runs in, its errors, timing and output.

The job convention (used by ``python -m therapy_rlhf.jobs``):

* each kind lives in ``therapy_rlhf.jobs.<kind>`` (``sft``, ``generate``,
  ``ppo``, ``evaluate``) and exposes ``main(ctx: JobContext) -> None``;
* the module imports torch/transformers at module level or inside ``main``;
  either way the import counts as start-up, because the dispatcher imports the
  module after it has started the clock;
* ``main`` loads what it needs (model, data), then calls ``ctx.begin_work()``:
  everything before is *start-up*, everything after is *work*;
* an expected failure (bad input, missing checkpoint, unsupported setting) is
  raised as ``JobError("what is wrong")``; the dispatcher prints it as one line
  ``error: what is wrong`` on stderr and exits 1. ``SpecError``, ``RecordError``
  and the store's ``NotFound``/``StoreUnavailable`` are treated the same way;
* nothing partial is ever visible: build files in ``ctx.scratch(...)`` (a
  private temp dir removed at exit), upload them with ``ctx.upload_dir``, and
  write the job's marker object LAST with ``ctx.write_metrics(key, {...})``,
  which adds ``startup_seconds`` / ``work_seconds`` / ``device`` / ``kind``
  and writes the object whole. The planner only trusts markers, so a job that
  dies mid-upload leaves a round that is simply "not done" and is retried.

Multi-GPU: under ``accelerate launch`` every process runs ``main``; only the
main process (``ctx.is_main_process``) may write to the store.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.contracts.spec import RunManifest, RunSpec
from therapy_rlhf.store.backends import NotFound, Store
from therapy_rlhf.jobs.errors import JobError  # noqa: F401  (every job raises it as common.JobError)

CACHE_ENV = "THERAPY_RLHF_CACHE"
OFFLINE_ENVS = ("THERAPY_RLHF_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
DEFAULT_CACHE = "~/.cache/therapy-rlhf"
LOGGER_NAME = "therapy_rlhf.jobs"
LIBRARY_LOGGERS = ("bitsandbytes",)
CPU_THREADS_ENV = "THERAPY_RLHF_CPU_THREADS"
DEFAULT_CPU_THREADS = 1


def process_start_time() -> float:
    """Wall-clock time this process started (Linux /proc), else now.

    Start-up time is measured from here, so it includes interpreter start and
    every import, not just the part after the dispatcher runs. The process's
    age comes from /proc/uptime (10 ms resolution), not from /proc/stat's
    boot time, which is in whole seconds and would skew a sub-second start-up
    by up to a second.
    """
    try:
        stat = Path("/proc/self/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat, after pid and comm
        hz = os.sysconf("SC_CLK_TCK")
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        age = max(0.0, uptime - start_ticks / hz)
        return time.time() - age
    except (OSError, ValueError, IndexError):
        return time.time()


def cache_dir() -> Path:
    """The model cache: $THERAPY_RLHF_CACHE, default ~/.cache/therapy-rlhf."""
    path = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def offline() -> bool:
    """True when the hub must not be contacted (set any of OFFLINE_ENVS to 1)."""
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes") for name in OFFLINE_ENVS)


def quiet_libraries() -> None:
    """Environment and warning settings for every job; before transformers is imported
    (it reads its verbosity then), so the job entrypoint and the warm worker's preload call it first."""
    # Download/shard progress bars would drown the job log; nothing is downloaded anyway.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    # peft and trl read transformers' deprecated `(is_)gradient_checkpointing` on every
    # model they wrap: warnings per job that nobody running the job can act on.
    warnings.filterwarnings("ignore", message="`(is_)?gradient_checkpointing` is deprecated", category=FutureWarning)
    # Library warnings belong in the job log (stdout), not on stderr where the
    # operator expects at most the one error line.
    def _log_warning(message, category, filename, lineno, file=None, line=None):
        import logging

        text = " ".join(str(message).split())[:300]
        logging.getLogger("therapy_rlhf.jobs").warning("%s: %s", category.__name__, text)

    warnings.showwarning = _log_warning


def detect_device() -> str:
    """'cuda:N' under accelerate/torchrun (LOCAL_RANK, pinned as the current device), 'cuda' with one GPU, else 'cpu'."""
    from therapy_rlhf.jobs.distributed import pin_device

    return pin_device()


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is now (tests and notebooks swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def configure_cpu_threads(device: str) -> int | None:
    """On CPU, use $THERAPY_RLHF_CPU_THREADS (or $OMP_NUM_THREADS) torch threads, default 1.

    CPU runs are the tiny models of tests, demos and CI, whose ops are far too
    small for intra-op parallelism; and torch's spinning worker threads make a
    job many times slower when the cores are shared (measured here: SFT work
    1.0 s with one thread, 15-22 s with two on a busy 2-core machine). Returns
    the thread count, or None on GPU (left to torch).
    """
    if not device.startswith("cpu"):
        return None
    import torch

    explicit = os.environ.get(CPU_THREADS_ENV) or os.environ.get("OMP_NUM_THREADS") or ""
    threads = int(explicit) if explicit.strip().isdigit() and int(explicit) > 0 else DEFAULT_CPU_THREADS
    torch.set_num_threads(threads)
    return threads


def make_logger() -> logging.Logger:
    """Progress lines with UTC timestamps on stdout (stderr is kept for the error line)."""
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = _StdoutHandler(sys.stdout)
        fmt = logging.Formatter("%(asctime)s.%(msecs)03dZ %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
        fmt.converter = time.gmtime
        handler.setFormatter(fmt)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        # Libraries that log without configuring a handler would reach stderr through
        # logging's last resort; stderr is kept for the one error line. bitsandbytes
        # notes on import, with its CPU backend, that an optional kernels package is missing.
        for name in LIBRARY_LOGGERS:
            library = logging.getLogger(name)
            if not library.handlers:
                library.addHandler(handler)
                library.propagate = False
    return logger


@dataclass
class JobContext:
    """Everything a job needs: the run, where to read and write, and its clock."""

    kind: str
    manifest: RunManifest
    round: int
    store: Store
    device: str = "cpu"
    cache_dir: Path = field(default_factory=cache_dir)
    log: logging.Logger = field(default_factory=make_logger)
    started_at: float = field(default_factory=process_start_time)
    work_started_at: float | None = None
    # Where the job reports its outputs' digests (--outputs-file); the entrypoint reports at the end,
    # ppo-generate also between its halves.
    outputs_file: str | None = None
    # The executor's private folder (--private-dir; the local runner's): where the reward model's predictions
    # wait for the gate, out of the raters' sight (feedback.predictions).
    private_dir: str | None = None
    _scratch_root: Path | None = None

    # -- the run --------------------------------------------------------
    @property
    def spec(self) -> RunSpec:
        return self.manifest.spec

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.manifest.namespace, self.manifest.name)

    @property
    def is_main_process(self) -> bool:
        """False on every accelerate/torchrun worker but rank 0."""
        return int(os.environ.get("RANK", "0")) == 0

    # -- progress and timing -------------------------------------------
    def progress(self, message: str, *args: Any) -> None:
        """One timestamped progress line, prefixed with the job kind and round."""
        self.log.info(f"[{self.kind} r{self.round}] " + message, *args)

    def begin_work(self) -> float:
        """Mark the end of start-up (imports, model and data load); returns start-up seconds."""
        if self.work_started_at is None:
            self.work_started_at = time.time()
            self.progress("start-up done in %.2fs", self.work_started_at - self.started_at)
        return self.work_started_at - self.started_at

    def timings(self) -> dict[str, float]:
        """startup_seconds and work_seconds so far (work 0 if begin_work was never called)."""
        now = time.time()
        work_start = self.work_started_at or now
        return {
            "startup_seconds": round(work_start - self.started_at, 3),
            "work_seconds": round(now - work_start, 3),
        }

    # -- local files -----------------------------------------------------
    def scratch(self, name: str) -> Path:
        """A fresh private directory for this job's files (deleted by close())."""
        if self._scratch_root is None:
            self._scratch_root = Path(tempfile.mkdtemp(prefix=f"therapy-rlhf-{self.kind}-"))
        path = self._scratch_root / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def close(self) -> None:
        if self._scratch_root is not None:
            shutil.rmtree(self._scratch_root, ignore_errors=True)
            self._scratch_root = None

    # -- store -----------------------------------------------------------
    def fetch_prefix(self, prefix: str, what: str = "checkpoint") -> Path:
        """Download every object under a store prefix into a scratch dir.

        Raises JobError naming the missing prefix when nothing is stored there
        (a checkpoint the run expects but that is not in the store).
        """
        dest = self.scratch(prefix.strip("/").replace("/", "__"))
        try:
            self.store.get_dir(prefix, dest)
        except NotFound:
            raise JobError(f"{what} missing from the store: nothing under {self.store.describe(prefix)}") from None
        self.progress("fetched %s from %s", what, self.store.describe(prefix))
        return dest

    def upload_dir(self, local_dir: Path, prefix: str) -> list[str]:
        """Upload a finished local directory under a store prefix (main process only)."""
        if not self.is_main_process:
            return []
        keys = self.store.put_dir(local_dir, prefix)
        self.progress("uploaded %d files to %s", len(keys), self.store.describe(prefix))
        return keys

    def write_metrics(self, key: str, metrics: dict[str, Any]) -> dict[str, Any]:
        """Write a job's marker/metrics object whole, with timings; call it LAST."""
        doc = dict(metrics)
        doc.setdefault("kind", self.kind)
        doc.setdefault("round", self.round)
        doc.setdefault("device", self.device)
        doc.update(self.timings())
        if self.is_main_process:
            self.store.write_json(key, doc)
            self.progress("wrote %s", self.store.describe(key))
        return doc


def write_json_file(path: Path, value: Any) -> None:
    """Write a local JSON file whole (temp + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
