"""What `rate --from FILE` refuses before a row becomes a Rating: hostile or malformed input.

A ratings file comes from outside (a spreadsheet, another tool, a colleague's
laptop), so the import treats it as untrusted: every problem is one line
naming the file and line, never a traceback, and a file that is hostile as a
whole (too big, nested too deeply, a cell over the CSV field limit,
duplicate columns, rows for another batch) is refused before anything is
stored.

* Size: at most ``MAX_IMPORT_BYTES`` (64 MiB), checked from the file's size
  before it is read, and at most ``MAX_IMPORT_ROWS`` (100,000) rows; a batch
  is a few hundred responses, so a bigger file is a mistake or an attack.
* Numbers: only finite ones; JSON's ``NaN``/``Infinity`` and literals that
  overflow a float (``1e400``) are refused, as are CSV cells reading
  ``nan``/``inf``.
* Shapes (JSONL): ``criteria`` and ``notes`` are objects, ``flags`` a list of
  words (or one string), ``comment`` and ``response_id`` strings, ``round``
  a whole number.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

MAX_IMPORT_BYTES = 64 * 1024 * 1024
MAX_IMPORT_ROWS = 100_000
# Past this many bad rows the rest are counted, not listed: a wrong file would otherwise flood the terminal.
MAX_ERROR_LINES = 20
JSONL_FIELDS = frozenset({"response_id", "criteria", "flags", "comment", "notes", "round"})


class ImportFileError(ValueError):
    """The file as a whole cannot be read (one line); nothing is stored."""


def check_file_size(path: Path, source: str) -> None:
    """Refuse a file over MAX_IMPORT_BYTES from its size alone, before reading a byte of it."""
    try:
        size = os.stat(path).st_size
    except OSError as err:
        raise ImportFileError(f"cannot read {source}: {err.strerror}") from None
    if size > MAX_IMPORT_BYTES:
        raise ImportFileError(
            f"{source} is {size / 2**20:.1f} MiB; an import takes at most {MAX_IMPORT_BYTES // 2**20} MiB "
            f"and {MAX_IMPORT_ROWS:,} rows (split the file)"
        )


def read_capped(path: Path, source: str) -> str:
    """The file's text, refused over MAX_IMPORT_BYTES: from its size before reading, and again while
    reading (a pipe or a device reports no size)."""
    check_file_size(path, source)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_IMPORT_BYTES + 1)
    except OSError as err:
        raise ImportFileError(f"cannot read {source}: {err.strerror}") from None
    if len(data) > MAX_IMPORT_BYTES:
        raise ImportFileError(
            f"{source} is over {MAX_IMPORT_BYTES // 2**20} MiB; an import takes at most "
            f"{MAX_IMPORT_BYTES // 2**20} MiB and {MAX_IMPORT_ROWS:,} rows (split the file)"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ImportFileError(f"{source} is not UTF-8 text (save the sheet as CSV UTF-8)") from None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'empathy'?)' for a near miss, '' when nothing is close."""
    close = difflib.get_close_matches(word.strip().lower(), sorted(set(choices)), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_row_count(count: int, source: str) -> None:
    if count > MAX_IMPORT_ROWS:
        raise ImportFileError(
            f"{source} has more than {MAX_IMPORT_ROWS:,} rows; an import takes at most {MAX_IMPORT_ROWS:,} rows "
            f"and {MAX_IMPORT_BYTES // 2**20} MiB (split the file)"
        )


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large a number")
    return value


def parse_json_line(line: str) -> dict[str, Any] | str:
    """One JSONL line as an object, or the one-line reason it is not one."""
    try:
        doc = json.loads(line, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        return "nested too deeply to be a rating"
    except ValueError as err:
        reason = str(err)
        if reason.endswith("is not a number") or reason.endswith("too large a number"):
            return f"not a finite number: {reason}"
        return "not valid JSON"
    if not isinstance(doc, dict):
        return "expected a JSON object"
    return doc


def jsonl_docs(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line, the row's object or why it is refused) for each non-blank line of a JSONL file."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        doc = parse_json_line(line)
        if isinstance(doc, str):
            yield lineno, doc
            continue
        extra = sorted(set(doc) - JSONL_FIELDS)
        if extra:
            yield lineno, "unknown field(s) " + ", ".join(f"{e!r}{did_you_mean(e, JSONL_FIELDS)}" for e in extra)
            continue
        problem = shape_problem(doc)
        if problem:
            yield lineno, problem
            continue
        yield lineno, doc


def shape_problem(doc: dict[str, Any]) -> str | None:
    """The first field of a JSONL row whose type is wrong, as one line; None when all fit."""
    expected = {
        "response_id": (str, "a string"),
        "criteria": (dict, "an object of criterion: score"),
        "notes": (dict, "an object of criterion: text"),
        "flags": ((list, str), "a list of flags"),
        "comment": (str, "a string"),
    }
    for field, (kind, what) in expected.items():
        value = doc.get(field)
        if value is not None and not isinstance(value, kind):
            return f"{field} must be {what}, not {type(value).__name__}"
    if isinstance(doc.get("flags"), list) and not all(isinstance(f, str) for f in doc["flags"]):
        return "flags must be a list of words"
    if isinstance(doc.get("notes"), dict) and not all(isinstance(t, str) for t in doc["notes"].values()):
        return "notes must be text"
    return None


def finite_score(value: Any, criterion: str) -> float:
    """A cell already known to be a number, as a finite float (ValueError otherwise)."""
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"{criterion}: the number is too large to be a score") from None
    if not math.isfinite(number):
        raise ValueError(f"{criterion}: {value!r} is not a score (not a finite number)")
    return number


def row_round(value: Any) -> int | None:
    """A row's `round` field as a number, None when absent; ValueError when not a whole number."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ValueError(f"round {value!r} is not a batch number")
    try:
        number = int(str(value).strip()) if isinstance(value, str) else value
    except ValueError:
        raise ValueError(f"round {value!r} is not a batch number") from None
    if not isinstance(number, int):
        raise ValueError(f"round {value!r} is not a batch number")
    return number


def check_round(found: int, expected: int, source: str, line: int) -> None:
    """A file row made for another batch: the whole file is refused (it is the wrong file, or --round is wrong)."""
    if found != expected:
        raise ImportFileError(
            f"{source} line {line}: round {found} contradicts the batch being scored ({expected}, --round); "
            "nothing stored (import a file made for this batch, or pass --round to match it)"
        )


def capped(errors: list[str]) -> list[str]:
    """At most MAX_ERROR_LINES lines, then '... and N more'."""
    if len(errors) <= MAX_ERROR_LINES:
        return list(errors)
    return [*errors[:MAX_ERROR_LINES], f"... and {len(errors) - MAX_ERROR_LINES} more"]
