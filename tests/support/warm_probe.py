"""A job for testing the job worker: the jobs' CLI, and a report of the process state it found.

    python -m warm_probe <probe|crash|sleep> --run-config FILE --round N --store URI

``probe`` prints one line ``probe-state: {...}`` (torch's global settings, a
random draw, whether torch was already imported when this module started,
marks a previous job may have left) and then changes all of it, as a badly
behaved job would. ``crash`` kills itself with SIGSEGV. ``sleep`` sleeps
``$PROBE_SLEEP`` seconds (default 60) after writing its pid to
``$PROBE_PID_FILE``.
"""

from __future__ import annotations

import sys

TORCH_ALREADY_IMPORTED = "torch" in sys.modules  # before this module imports it

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402


def state() -> dict:
    return {
        "pid": os.getpid(),
        "torch_already_imported": TORCH_ALREADY_IMPORTED,
        "default_dtype": str(torch.get_default_dtype()),
        "num_threads": torch.get_num_threads(),
        "grad_enabled": torch.is_grad_enabled(),
        "torch_draw": torch.rand(1).item(),
        "numpy_draw": float(np.random.random()),
        "torch_mark": getattr(torch, "_probe_mark", None),
        "env_mark": os.environ.get("PROBE_MARK"),
        "argv": sys.argv[1:],
    }


def misbehave() -> None:
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1 if torch.get_num_threads() > 1 else 3)
    torch.set_grad_enabled(False)
    torch.manual_seed(1234)
    np.random.seed(1234)
    torch._probe_mark = "left by an earlier job"
    os.environ["PROBE_MARK"] = "left by an earlier job"


def main() -> int:
    kind = sys.argv[1]
    if kind == "probe":
        print("probe-state: " + json.dumps(state()), flush=True)
        misbehave()
        return 0
    if kind == "crash":
        print("about to crash", flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
    if kind == "sleep":
        with open(os.environ["PROBE_PID_FILE"], "w") as f:
            f.write(str(os.getpid()))
        time.sleep(float(os.environ.get("PROBE_SLEEP", "60")))
        return 0
    print(f"error: unknown probe {kind!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
