"""One time budget for every wait in the test suite.

CI runs on a shared 2-core machine where a step that takes 10 s alone can take
60 s. A test never waits with a number that only a quiet machine meets: it asks
``budget(seconds)`` for a wait sized from what the step takes on a quiet
machine, scaled by one factor for the whole suite.

``THERAPY_RLHF_TEST_TIME_SCALE`` (default 8) sets that factor: raise it on a
slower machine instead of editing timeouts one by one.
"""

from __future__ import annotations

import os

SCALE_ENV = "THERAPY_RLHF_TEST_TIME_SCALE"
DEFAULT_SCALE = 8.0


def scale() -> float:
    raw = os.environ.get(SCALE_ENV, "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_SCALE
    except ValueError:
        raise ValueError(f"{SCALE_ENV}={raw!r}: expected a number such as 8") from None
    if value <= 0:
        raise ValueError(f"{SCALE_ENV}={raw!r}: must be positive")
    return value


def budget(quiet_seconds: float) -> float:
    """Seconds to wait for a step that takes ``quiet_seconds`` on an idle machine."""
    return quiet_seconds * scale()
