"""Writing a command's --output file (shared by crd and export)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_output(path: str, text: str) -> str | None:
    """Write ``text`` to ``path`` whole (a temp file renamed over it): None, or a one-line error.

    A reader never sees half a file, and a failed write leaves the old one as it was.
    """
    out = Path(path)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        return f"error: cannot write {path}: {err.strerror}"
    return None
