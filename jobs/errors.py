"""The jobs' expected failure: ``JobError("what is wrong")``, printed as one line (see ``common``)."""

from __future__ import annotations


class JobError(RuntimeError):
    """An expected failure: the message is the one line the operator shows."""
