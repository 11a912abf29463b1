"""Files shipped with the jobs (``therapy_rlhf/jobs/fixtures``): the tiny corpus, the prompt suite."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def fixture_path(name: str) -> Path:
    """A file shipped in ``therapy_rlhf/jobs/fixtures``."""
    return Path(str(resources.files("therapy_rlhf.jobs") / "fixtures" / name))
