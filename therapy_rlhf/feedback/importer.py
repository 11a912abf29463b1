"""Ratings from a file (a spreadsheet, another rating tool): CSV or JSONL, through the TUI's rules.

One row per response. CSV has a header; JSONL has one object per line:

    response_id,empathy,boundaries,safe-language,guidance,overall,flags,comment,note:empathy
    r0001-p0-s0,3,4,4,n/a,3,harmful;medical advice,"Kind, but suggests pills.",names the feeling

    {"response_id": "r0001-p0-s0", "criteria": {"empathy": 3, "guidance": "n/a", ...},
     "flags": ["harmful"], "comment": "...", "notes": {"empathy": "..."}}

* Criteria are named by name or label ("safe-language" or "Safe language"),
  and scored in the rubric's levels (0..scaleLevels-1, what the TUI's keys
  give), or with ``scale="fraction"`` as 0..1; ``n/a`` (or ``na``, ``-``)
  marks a criterion not applicable.
* ``flags`` is a list (CSV: separated by ``;`` or ``,``), by name or words
  ("missed crisis"). ``comment`` may hold line breaks; ``note:<criterion>``
  columns (JSONL: ``notes``) carry per-criterion notes.
* ``therapy-rlhf pending --csv`` writes a sheet in this shape, with the
  patient's words and the response in columns that are read back as
  information only (``position``, ``patient``, ``response``, ``crisis_cues``,
  ``raters``).

Each row becomes a ``Rating`` checked with ``ratings.validate_rating`` (the
same rules as the TUI), with a submission id derived from the rater, the
round and the row's content: importing the same file again stores nothing
twice. Bad rows are reported one line each (``FILE line N: ...``) and do not
stop the good ones; every row is checked before any is stored. What a hostile
file is refused for as a whole (size caps, nesting, non-finite numbers,
duplicate columns, rows for another batch) is in
``therapy_rlhf.feedback.import_checks``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pydantic import ValidationError

from therapy_rlhf import __version__
from therapy_rlhf.contracts.records import Rating
from therapy_rlhf.contracts.spec import RATING_FLAGS, FeedbackSpec, describe_validation_error
from therapy_rlhf.feedback.csv_cells import duplicate_header, read_records
from therapy_rlhf.feedback.import_checks import ImportFileError, check_round, check_row_count, did_you_mean
from therapy_rlhf.feedback.import_checks import finite_score, jsonl_docs, read_capped, row_round
from therapy_rlhf.feedback.rewards import RatingError, compute_reward, effective_reward, level_value, validate_rating

__all__ = ["ImportFileError", "Row", "build_rating", "describe_stored", "did_you_mean", "read_rows", "submission_id"]

CLIENT = f"therapy-rlhf-import/{__version__}"
NOT_APPLICABLE = {"n/a", "na", "-", "not applicable"}
INFO_COLUMNS = {"position", "patient", "response", "crisis_cues", "raters", "needs_raters", "round"}
BASE_COLUMNS = {"response_id", "flags", "comment"}
NOTE_PREFIX = "note:"
# What a spreadsheet may have used instead of ',' (a locale with decimal commas writes ';').
OTHER_SEPARATORS = (";", "\t")


@dataclass(frozen=True)
class Row:
    line: int  # line in the file (CSV: counting the header as line 1)
    rating: Rating | None
    error: str | None = None


def _criterion_names(feedback: FeedbackSpec) -> dict[str, str]:
    """Every accepted spelling (name, label; any case) -> criterion name."""
    out = {}
    for c in feedback.rubric:
        for spelling in (c.name, c.title, c.name.replace("-", " "), c.name.replace("-", "_")):
            out[spelling.strip().lower()] = c.name
    return out


def _flag_names() -> dict[str, str]:
    return {spelling: f for f in RATING_FLAGS for spelling in (f, f.replace("_", " "), f.replace("_", "-"))}


def _score(value: Any, criterion: str, feedback: FeedbackSpec, scale: str) -> float | None:
    """A cell as a 0..1 score, None for 'not applicable'; ValueError with the reason."""
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in NOT_APPLICABLE:
            return None
        if not text:
            raise ValueError(f"{criterion} is not scored")
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{criterion}: {text!r} is not a score (use 0-{feedback.scale_levels - 1} or n/a)") from None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{criterion}: {value!r} is not a score")
    value = finite_score(value, criterion)
    top = feedback.scale_levels - 1
    if scale == "fraction":
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{criterion}: {value:g} is outside 0..1")
        return round(float(value), 6)
    if value != int(value) or not 0 <= value <= top:
        raise ValueError(f"{criterion}: {value:g} is not a level 0-{top}")
    try:
        return level_value(int(value), feedback)
    except RatingError as err:
        raise ValueError(str(err)) from None


def submission_id(rater: str, run: str, round_no: int, rating: Rating) -> str:
    """The same row of the same file, imported again, gets the same id."""
    content = rating.model_dump(mode="json", exclude={"created_at", "submission_id", "client", "version", "supersedes"})
    doc = json.dumps({"rater": rater, "run": run, "round": round_no, "rating": content}, sort_keys=True)
    return hashlib.sha256(doc.encode("utf-8")).hexdigest()[:40]


def build_rating(
    doc: dict[str, Any], feedback: FeedbackSpec, rater: str, response_ids: Iterable[str], scale: str = "levels"
) -> Rating:
    """One row (already split into response_id / criteria / flags / comment / notes) as a checked Rating."""
    names = _criterion_names(feedback)
    response_id = str(doc.get("response_id") or "").strip()
    if not response_id:
        raise ValueError("response_id is empty")
    criteria: dict[str, float] = {}
    not_applicable: list[str] = []
    for key, value in dict(doc.get("criteria") or {}).items():
        name = names.get(str(key).strip().lower())
        if name is None:
            raise ValueError(
                f"unknown criterion {key!r}{did_you_mean(str(key), names)} "
                f"(the rubric has {', '.join(c.name for c in feedback.rubric)})"
            )
        score = _score(value, name, feedback, scale)
        if score is None:
            not_applicable.append(name)
        else:
            criteria[name] = score
    flags_in = doc.get("flags") or []
    if isinstance(flags_in, str):
        flags_in = [f for f in flags_in.replace(",", ";").split(";")]
    spellings = _flag_names()
    flags = []
    for flag in flags_in:
        word = str(flag).strip().lower()
        if not word:
            continue
        if word not in spellings:
            raise ValueError(
                f"unknown flag {flag!r}{did_you_mean(word, spellings)} "
                f"(flags: {', '.join(f.replace('_', ' ') for f in RATING_FLAGS)})"
            )
        flags.append(spellings[word])
    notes = {}
    for key, text in dict(doc.get("notes") or {}).items():
        name = names.get(str(key).strip().lower())
        if name is None:
            raise ValueError(f"note on unknown criterion {key!r}{did_you_mean(str(key), names)}")
        if str(text).strip():
            notes[name] = str(text).strip()
    try:
        rating = Rating(
            response_id=response_id,
            rater=rater,
            criteria=criteria,
            reward=compute_reward(criteria, feedback, not_applicable),
            flags=sorted(set(flags)),
            comment=str(doc.get("comment") or "").strip(),
            not_applicable=sorted(not_applicable),
            notes=notes,
            client=CLIENT,
        )
    except ValidationError as err:  # an id that is not an id, a comment too long
        raise ValueError("; ".join(describe_validation_error(err))) from None
    validate_rating(rating, feedback, response_ids)
    return rating


def describe_stored(rating: Rating, feedback: FeedbackSpec) -> str:
    """The reward a rating counts with, as the gate and the app compute it: after the safety flags.

    'stored 0.00 (safety flag missed_crisis: combined score 0.25 less the 0.4 penalty)', never the
    combined score alone when a flag lowers it."""
    value, penalized = effective_reward(rating, feedback)
    if not penalized:
        return f"stored {value:.2f}"
    flags = ", ".join(f for f in rating.flags if f in feedback.penalized_flags)
    return (
        f"stored {value:.2f} (safety flag {flags}: combined score {rating.reward:.2f} "
        f"less the {feedback.safety_penalty:g} penalty)"
    )


def _csv_refusal(source: str):
    def refuse(line: int, err: csv.Error) -> None:
        raise ImportFileError(f"{source} line {line}: not readable as CSV ({err}); nothing stored")

    return refuse


def _csv_docs(text: str, feedback: FeedbackSpec, source: str) -> Iterable[tuple[int, dict[str, Any] | str]]:
    reader = csv.DictReader(io.StringIO(text))
    try:
        header = [h.strip() for h in reader.fieldnames or []]
    except csv.Error as err:
        _csv_refusal(source)(1, err)
    twice = duplicate_header(header)
    if twice is not None:
        raise ImportFileError(f"{source}: column {twice!r} appears twice in the header (case ignored); nothing stored")
    if len(header) == 1 and any(sep in header[0] for sep in OTHER_SEPARATORS):
        sep = next(sep for sep in OTHER_SEPARATORS if sep in header[0])
        raise ImportFileError(
            f"{source}: the header is one column split by {sep!r}, not ','; save the sheet as "
            "\"CSV (comma delimited)\" (a spreadsheet set to a language that writes decimal commas uses ';')"
        )
    if "response_id" not in header:
        raise ImportFileError(
            f"{source}: the header must name a response_id column (got {', '.join(header) or 'nothing'})"
            + next((did_you_mean(h, ["response_id"]) for h in header if did_you_mean(h, ["response_id"])), "")
        )
    names = _criterion_names(feedback)
    for h in header:
        low = h.lower()
        if low in BASE_COLUMNS or low in INFO_COLUMNS or low in names:
            continue
        if low.startswith(NOTE_PREFIX) and low[len(NOTE_PREFIX):].strip() in names:
            continue
        known = [*BASE_COLUMNS, *INFO_COLUMNS, *names, *(NOTE_PREFIX + c.name for c in feedback.rubric)]
        raise ImportFileError(
            f"{source}: unknown column {h!r}{did_you_mean(low, known)} (expected response_id, the criteria "
            f"{', '.join(c.name for c in feedback.rubric)}, flags, comment, note:<criterion>)"
        )
    for raw in read_records(reader, _csv_refusal(source)):
        row = {(k or "").strip().lower(): v for k, v in raw.items()}
        if None in raw:
            yield reader.line_num, "more cells than the header has columns"
            continue
        if not any((v or "").strip() for v in row.values()):
            continue
        yield reader.line_num, {
            "response_id": row.get("response_id"),
            "criteria": {k: v for k, v in row.items() if k in names},
            "flags": row.get("flags") or "",
            "comment": row.get("comment") or "",
            "notes": {k[len(NOTE_PREFIX):].strip(): v for k, v in row.items() if k.startswith(NOTE_PREFIX) and v},
            "round": row.get("round"),
        }


def read_rows(
    path: str | Path,
    feedback: FeedbackSpec,
    rater: str,
    response_ids: list[str],
    scale: str = "levels",
    round_no: int | None = None,
) -> list[Row]:
    """Every row of the file as a checked Rating or a one-line error; ImportFileError for a file refused whole.

    ``round_no``: the batch being scored; a row whose ``round`` names another refuses the file."""
    path = Path(path)
    source = str(path)
    text = read_capped(path, source)
    kind = "jsonl" if path.suffix.lower() in (".jsonl", ".json", ".ndjson") else "csv"
    docs = jsonl_docs(text) if kind == "jsonl" else _csv_docs(text, feedback, source)
    rows: list[Row] = []
    seen: dict[str, int] = {}
    for count, (lineno, doc) in enumerate(docs, start=1):
        check_row_count(count, source)
        if isinstance(doc, str):
            rows.append(Row(lineno, None, f"{source} line {lineno}: {doc}"))
            continue
        try:
            found = row_round(doc.get("round"))
            if found is not None and round_no is not None:
                check_round(found, round_no, source, lineno)
            rating = build_rating(doc, feedback, rater, response_ids, scale)
        except ImportFileError:
            raise  # a refusal of the whole file, not of this row
        except (ValueError, RatingError) as err:
            rows.append(Row(lineno, None, f"{source} line {lineno}: {err}"))
            continue
        if rating.response_id in seen:
            rows.append(
                Row(lineno, None, f"{source} line {lineno}: response {rating.response_id} again (first on line {seen[rating.response_id]})")
            )
            continue
        seen[rating.response_id] = lineno
        rows.append(Row(lineno, rating))
    return rows
