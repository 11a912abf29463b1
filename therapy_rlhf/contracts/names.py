"""Validated names: the only strings that may become part of a store key.

Every key in the store is built from names that passed one of these checks
(whole-string matches: ``fullmatch``, so no trailing newline slips through),
so no run name, rater id or response id can climb out of its run's prefix
(no ``/``, no ``..``, no upper case, no empty parts).
"""

from __future__ import annotations

import re

# DNS-1123 label, capped at 40 characters so that derived Job names
# ("{run}-{kind}-r{round}-a{attempt}") still fit the 63-character limit.
RUN_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
NAMESPACE_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
RATER_ID_RE = re.compile(r"^[a-z0-9-]{1,40}$")
# Response and prompt ids: lower-case words joined by "-", "_" or ".".
ITEM_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,79}$")


# Error messages quote at most this many characters of what they were given.
QUOTE_LIMIT = 200


class InvalidName(ValueError):
    """A name that may not be used in a store key or a Kubernetes object."""


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)``, cut to about ``limit`` characters: messages never echo a whole input."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def _check(kind: str, value: object, pattern: re.Pattern[str], rule: str) -> str:
    # fullmatch, never match: with `$`, re.match accepts a trailing newline ("alice\n").
    if not isinstance(value, str) or not pattern.fullmatch(value) or ".." in value:
        raise InvalidName(f"invalid {kind} {quote(value)}: {rule}")
    return value


def run_name(value: object) -> str:
    return _check(
        "run name",
        value,
        RUN_NAME_RE,
        "must be a DNS-1123 label of at most 40 characters "
        "(lower-case letters, digits and '-', starting and ending alphanumeric)",
    )


def namespace(value: object) -> str:
    return _check(
        "namespace",
        value,
        NAMESPACE_RE,
        "must be a DNS-1123 label (lower-case letters, digits and '-', at most 63 characters)",
    )


def rater_id(value: object) -> str:
    return _check(
        "rater id", value, RATER_ID_RE, "must be 1-40 characters of lower-case letters, digits and '-'"
    )


def item_id(value: object, kind: str = "response id") -> str:
    return _check(
        kind,
        value,
        ITEM_ID_RE,
        "must be 1-80 characters of lower-case letters, digits, '-', '_' or '.', "
        "starting alphanumeric, without '..'",
    )
