"""CSV cells both ways: a sheet we write must not run as formulas, a sheet we read must not crash us.

Writing (``pending --csv``): the sheet carries text we did not write (the
patient's words, the model's response), and a spreadsheet runs a cell that
starts with ``=``, ``+``, ``-`` or ``@`` (or a tab / carriage return ahead of
one) as a formula. Following OWASP's CSV-injection advice, such a cell gets a
leading single quote, which spreadsheets show as text. The guarded columns
(patient, response, crisis cues) are information only on import, so a filled
sheet reads back unchanged; ``unguard`` strips the quote where it was added
should a guarded column ever be read for its value.

Reading: a cell over the csv module's field size limit is a ``csv.Error``
mid-iteration, and duplicate headers (after case folding) would silently keep
only the last column's value; both become one-line refusals of the file.
"""

from __future__ import annotations

import csv
from typing import Any, Iterable, Iterator

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
GUARD = "'"


def guard(cell: Any) -> Any:
    """A text cell a spreadsheet would evaluate, with a leading quote; other cells unchanged."""
    if isinstance(cell, str) and cell.startswith(FORMULA_STARTS):
        return GUARD + cell
    return cell


def unguard(cell: str) -> str:
    """The inverse of guard, for a cell that guard wrote (a quote followed by a formula start)."""
    if cell.startswith(GUARD) and cell[1:].startswith(FORMULA_STARTS):
        return cell[1:]
    return cell


def guarded_rows(rows: Iterable[Iterable[Any]]) -> Iterator[list[Any]]:
    for row in rows:
        yield [guard(cell) for cell in row]


def duplicate_header(header: list[str]) -> str | None:
    """The first column named twice (ignoring case and surrounding spaces), None when all differ."""
    seen: set[str] = set()
    for name in header:
        key = name.strip().casefold()
        if key in seen:
            return name
        seen.add(key)
    return None


def read_records(reader: csv.DictReader, on_error) -> Iterator[dict]:
    """The reader's records; a csv.Error (a cell over the field size limit, a stray NUL) goes to on_error,
    which raises, with the line it happened on."""
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            on_error(reader.line_num + 1, err)  # line_num counts the lines read before the failing one
            return
        yield record
