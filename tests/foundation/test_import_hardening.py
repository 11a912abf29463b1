"""`rate --from FILE` with hostile or malformed input: one line per problem, never a traceback, and a file
refused as a whole stores nothing (issue 18)."""

from __future__ import annotations

import csv
import json
import os

import pytest

from therapy_rlhf.feedback import import_checks
from therapy_rlhf.feedback.rounds import load_round

from .test_cli_commands import PATHS, RUN, seed_run
from .test_rate_from_file_and_pending import CRITERIA, cli

GOOD = {"response_id": "r0001-p-s0", "criteria": dict.fromkeys(CRITERIA, 3)}


def _import(capsys, store, path, *extra):
    return cli(capsys, "rate", RUN, "--from", str(path), "--rater", "dr-lee", "--store", store.uri, *extra)


def _stored_nothing(store):
    return load_round(store, PATHS, 1).ratings == []


def _errors(err):
    return [line for line in err.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize(
    "line, reason",
    [
        ('{"response_id": "r0001-p-s0", "criteria": {"empathy": Infinity}}', "not a finite number"),
        ('{"response_id": "r0001-p-s0", "criteria": {"empathy": NaN}}', "not a finite number"),
        ('{"response_id": "r0001-p-s0", "criteria": {"empathy": 1e400}}', "not a finite number"),
        ('{"response_id": "r0001-p-s0", "criteria": {"empathy": -1e400}}', "not a finite number"),
        ('{"response_id": "r0001-p-s0", "criteria": {"empathy": ' + "9" * 400 + "}}", "too large to be a score"),
        ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
        ('{"response_id": "r0001-p-s0", "criteria": [1, 2]}', "criteria must be an object"),
        ('{"response_id": "r0001-p-s0", "criteria": "empathy=3"}', "criteria must be an object"),
        ('{"response_id": "r0001-p-s0", "criteria": {"empathy": 3}, "flags": 7}', "flags must be a list"),
        ('{"response_id": "r0001-p-s0", "criteria": {"empathy": 3}, "flags": [{"a": 1}]}', "flags must be a list of words"),
        ('{"response_id": "r0001-p-s0", "criteria": {"empathy": 3}, "notes": ["x"]}', "notes must be an object"),
        ('{"response_id": "r0001-p-s0", "criteria": {"empathy": 3}, "notes": {"empathy": {"x": 1}}}', "notes must be text"),
        ('{"response_id": ["r0001-p-s0"], "criteria": {}}', "response_id must be a string"),
        ('{"response_id": "r0001-p-s0", "criteria": {"empathy": 3}, "round": "two"}', "is not a batch number"),
    ],
)
def test_jsonl_hostile_values_are_one_line_each(local_store, capsys, tmp_path, line, reason):
    seed_run(local_store)
    path = tmp_path / "scores.jsonl"
    path.write_text(line + "\n" + json.dumps(GOOD) + "\n")
    code, out, err = _import(capsys, local_store, path, "--dry-run")
    assert code == 1 and "Traceback" not in err
    (error,) = _errors(err)
    assert error.startswith(f"error: {path} line 1: ") and reason in error and "\n" not in error
    assert "line 2: response 1 (r0001-p-s0): ok" in out


@pytest.mark.parametrize("cell", ["inf", "-inf", "nan", "1e400", "NaN"])
@pytest.mark.parametrize("scale", ["levels", "fraction"])
def test_csv_non_finite_scores_are_row_errors(local_store, capsys, tmp_path, cell, scale):
    seed_run(local_store)
    path = tmp_path / "scores.csv"
    path.write_text("response_id," + ",".join(CRITERIA) + "\n" + "r0001-p-s0," + ",".join([cell, "1", "1", "1", "1"]) + "\n")
    code, _, err = _import(capsys, local_store, path, "--scale", scale)
    assert code == 1 and "Traceback" not in err and _stored_nothing(local_store)
    (error,) = _errors(err)
    assert error.startswith(f"error: {path} line 2: empathy: ")


def test_csv_cell_over_the_field_size_limit_refuses_the_file(local_store, capsys, tmp_path):
    seed_run(local_store)
    path = tmp_path / "scores.csv"
    huge = "x" * (csv.field_size_limit() + 10)
    path.write_text(
        "response_id," + ",".join(CRITERIA) + ",comment\n"
        + "r0001-p-s0,1,1,1,1,1,fine\n"
        + f'r0001-p-s1,1,1,1,1,1,"{huge}"\n'
    )
    code, _, err = _import(capsys, local_store, path)
    assert code == 1 and "Traceback" not in err and err.count("\n") == 1
    assert f"{path} line 3: not readable as CSV (field larger than field limit" in err and "nothing stored" in err
    assert _stored_nothing(local_store)  # the good row before it is not stored either


def test_duplicate_columns_after_case_folding_are_refused(local_store, capsys, tmp_path):
    seed_run(local_store)
    path = tmp_path / "scores.csv"
    path.write_text("response_id," + ",".join(CRITERIA) + ",Empathy \nr0001-p-s0,1,1,1,1,1,4\n")
    code, _, err = _import(capsys, local_store, path)
    assert code == 1 and err.count("\n") == 1
    assert "column 'Empathy' appears twice in the header (case ignored); nothing stored" in err
    assert _stored_nothing(local_store)


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_a_row_for_another_round_refuses_the_whole_file(local_store, capsys, tmp_path, kind):
    seed_run(local_store)
    path = tmp_path / f"scores.{kind}"
    if kind == "jsonl":
        rows = [{**GOOD, "round": 1}, {**GOOD, "response_id": "r0001-p-s1", "round": 2}]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text("response_id,round," + ",".join(CRITERIA) + "\nr0001-p-s0,1,1,1,1,1,1\nr0001-p-s1,2,1,1,1,1,1\n")
    code, _, err = _import(capsys, local_store, path, "--round", "1")
    assert code == 1 and err.count("\n") == 1
    assert f"{path} line {3 if kind == 'csv' else 2}: round 2 contradicts the batch being scored (1, --round)" in err
    assert _stored_nothing(local_store)
    # the matching round is accepted
    path.write_text(path.read_text().replace("2", "1") if kind == "csv" else json.dumps({**GOOD, "round": 1}) + "\n")
    code, _, err = _import(capsys, local_store, path, "--round", "1")
    assert code == 0, err


def test_size_cap_is_checked_before_reading(local_store, capsys, tmp_path, monkeypatch):
    seed_run(local_store)
    path = tmp_path / "scores.jsonl"
    with open(path, "wb") as f:  # a sparse file over the cap: refusing it must not read it
        f.truncate(import_checks.MAX_IMPORT_BYTES + 1)
    monkeypatch.setattr(import_checks, "open", lambda *a, **k: pytest.fail("opened a file over the size cap"), raising=False)
    code, _, err = _import(capsys, local_store, path)
    assert code == 1 and err.count("\n") == 1
    assert "an import takes at most 64 MiB and 100,000 rows (split the file)" in err
    assert _stored_nothing(local_store)


def test_a_file_without_a_size_is_capped_while_reading(local_store, capsys):
    """A device or a pipe reports size 0: reading stops one byte past the cap."""
    seed_run(local_store)
    code, _, err = _import(capsys, local_store, "/dev/zero")
    assert code == 1 and err.count("\n") == 1
    assert "/dev/zero is over 64 MiB; an import takes at most 64 MiB and 100,000 rows" in err
    assert _stored_nothing(local_store)


def test_row_cap_refuses_the_file_and_stores_nothing(local_store, capsys, tmp_path):
    seed_run(local_store)
    path = tmp_path / "scores.csv"
    body = "r0001-p-s0,1,1,1,1,1\n" + "\n".join(f"r0001-p-s{i % 3},1,1,1,1,1" for i in range(import_checks.MAX_IMPORT_ROWS))
    path.write_text("response_id," + ",".join(CRITERIA) + "\n" + body + "\n")
    assert os.path.getsize(path) < import_checks.MAX_IMPORT_BYTES
    code, _, err = _import(capsys, local_store, path)
    assert code == 1 and err.count("\n") == 1
    assert "has more than 100,000 rows; an import takes at most 100,000 rows and 64 MiB" in err
    assert _stored_nothing(local_store)


def test_at_most_twenty_error_lines_then_a_count(local_store, capsys, tmp_path):
    seed_run(local_store)
    path = tmp_path / "scores.jsonl"
    path.write_text("not json\n" * 25 + json.dumps(GOOD) + "\n")
    code, _, err = _import(capsys, local_store, path, "--dry-run")
    assert code == 1
    lines = err.splitlines()
    assert len(_errors(err)) == 20 and "... and 5 more" in lines
    assert lines[-1] == "dry run: 1 row(s) would be stored, 0 already stored, 25 bad; nothing written"
