"""Scoring without the TUI: `rate --from FILE` (CSV, JSONL) through the TUI's rules, `pending`, and the
CLI seams (every command takes NAME, NS/NAME or a manifest; --rater is a rater id everywhere)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from therapy_rlhf.cli import main
from therapy_rlhf.feedback.gate import close_gate
from therapy_rlhf.feedback.rounds import load_round
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.contracts.records import Rating

from .test_cli_commands import PATHS, RUN, seed_run

CRITERIA = ["empathy", "boundaries", "safe-language", "guidance", "overall"]


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_sheet(path, rows: list[dict]) -> None:
    """A filled-in sheet as a spreadsheet saves it (the columns of the first row)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(out.getvalue())


def stored(store, rater="dr-lee"):
    return {r.response_id: r for (resp, who), r in load_round(store, PATHS, 1).latest().items() if who == rater}


GOOD_AND_BAD = (
    "response_id,empathy,boundaries,Safe language,guidance,overall,flags,comment,note:empathy\n"
    'r0001-p-s0,3,4,4,n/a,3,,"Warm.\nAsks a question.",names the feeling\n'  # good, with N/A and a note
    "r0001-p-s1,0,2,0,1,0,dismissive;harmful,Minimises the problem.,\n"  # good, two flags
    "r0001-p-s2,5,4,4,4,4,,out of scale,\n"  # bad: level 5 on a 0-4 scale
    "r0001-nope,1,1,1,1,1,,no such response,\n"  # bad: not in the batch
    "r0001-p-s2,1,1,1,1,,,overall missing,\n"  # bad: a criterion not scored
    "r0001-p-s2,1,1,1,1,1,sarcastic,unknown flag,\n"  # bad: unknown flag
)


def test_import_stores_good_rows_and_names_each_bad_one(local_store, capsys, tmp_path):
    seed_run(local_store)
    sheet = tmp_path / "scores.csv"
    sheet.write_text(GOOD_AND_BAD)
    code, out, err = cli(capsys, "rate", RUN, "--from", str(sheet), "--rater", "dr-lee", "--store", local_store.uri)
    assert code == 1  # some rows were bad
    bad = [line for line in err.splitlines() if line.startswith("error: ")]
    assert bad == [
        f"error: {sheet} line 5: empathy: 5 is not a level 0-4",
        f"error: {sheet} line 6: response 'r0001-nope' does not exist in this round's batch",
        f"error: {sheet} line 7: overall is not scored",
        f"error: {sheet} line 8: unknown flag 'sarcastic' (flags: harmful, missed crisis, medical advice, dismissive, off topic)",
    ]
    mine = stored(local_store)
    assert set(mine) == {"r0001-p-s0", "r0001-p-s1"}
    first = mine["r0001-p-s0"]
    assert first.not_applicable == ["guidance"] and first.criteria == {
        "empathy": 0.75, "boundaries": 1.0, "safe-language": 1.0, "overall": 0.75,
    }
    assert first.reward == pytest.approx(0.875) and first.comment == "Warm.\nAsks a question."
    assert first.notes == {"empathy": "names the feeling"} and first.client.startswith("therapy-rlhf-import/")
    assert mine["r0001-p-s1"].flags == ["dismissive", "harmful"]
    # the same file again: nothing is stored twice
    before = local_store.list(PATHS.ratings_prefix(1))
    code, out, err = cli(capsys, "rate", RUN, "--from", str(sheet), "--rater", "dr-lee", "--store", local_store.uri)
    assert out.count("already stored") == 2 and local_store.list(PATHS.ratings_prefix(1)) == before


def test_dry_run_checks_everything_and_writes_nothing(local_store, capsys, tmp_path):
    seed_run(local_store)
    sheet = tmp_path / "scores.jsonl"
    sheet.write_text(
        json.dumps({"response_id": "r0001-p-s0", "criteria": dict.fromkeys(CRITERIA, 4), "comment": "fine"}) + "\n"
        + '{"response_id": "r0001-p-s1", "criteria": \n'
        + json.dumps({"response_id": "r0001-p-s2", "criteria": {**dict.fromkeys(CRITERIA, 2), "overall": "n/a"}}) + "\n"
    )
    before = local_store.list("")
    code, out, err = cli(capsys, "rate", RUN, "--from", str(sheet), "--dry-run", "--rater", "dr-lee", "--store", local_store.uri)
    assert code == 1 and local_store.list("") == before
    assert "line 1: response 1 (r0001-p-s0): ok, would be stored 1.00" in out
    assert f"error: {sheet} line 2: not valid JSON" in err
    assert "line 3: response 3 (r0001-p-s2): ok, would be stored 0.50" in out
    assert "dry run: 2 row(s) would be stored, 0 already stored, 1 bad; nothing written" in err


def test_import_refuses_a_closed_batch_and_unknown_columns(local_store, capsys, tmp_path):
    m = seed_run(local_store)
    sheet = tmp_path / "scores.csv"
    sheet.write_text("response_id,empathy,tone\nr0001-p-s0,1,2\n")
    code, _, err = cli(capsys, "rate", RUN, "--from", str(sheet), "--rater", "dr-lee", "--store", local_store.uri)
    assert code == 1 and err.count("\n") == 1 and "unknown column 'tone'" in err
    state = load_round(local_store, PATHS, 1)
    for resp in state.responses:
        submit_rating(local_store, PATHS, state, Rating(response_id=resp.id, rater="bob", criteria=dict.fromkeys(CRITERIA, 0.5)), m.spec.feedback)
    close_gate(local_store, PATHS, 1, m.spec.feedback)
    sheet.write_text("response_id,empathy\n")
    code, _, err = cli(capsys, "rate", RUN, "--from", str(sheet), "--round", "1", "--rater", "dr-lee", "--store", local_store.uri)
    assert code == 1 and "is closed (scoring finished); new scores would not count" in err


def test_pending_lists_what_awaits_a_rater_and_its_sheet_round_trips(local_store, capsys, tmp_path):
    m = seed_run(local_store, min_raters=2)
    state = load_round(local_store, PATHS, 1)
    for who in ("bob", "carol"):
        submit_rating(local_store, PATHS, state, Rating(response_id="r0001-p-s0", rater=who, criteria=dict.fromkeys(CRITERIA, 0.5)), m.spec.feedback)
    submit_rating(local_store, PATHS, state, Rating(response_id="r0001-p-s2", rater="bob", criteria=dict.fromkeys(CRITERIA, 0.5)), m.spec.feedback)
    code, out, _ = cli(capsys, "pending", "--rater", "dr-lee", "--store", local_store.uri)
    assert code == 0
    doc = json.loads(out)
    (batch,) = doc["rounds"]
    assert (batch["run"], batch["round"], batch["responses"], batch["fullyScored"], batch["minRaters"]) == ("default/demo", 1, 3, 1, 2)
    # least covered first: s1 has no rater, s2 one, s0 already has both
    assert [(r["responseId"], r["raters"], r["needsRaters"]) for r in batch["toScore"]] == [
        ("r0001-p-s1", 0, True), ("r0001-p-s2", 1, True), ("r0001-p-s0", 2, False),
    ]
    sheet = tmp_path / "sheet.csv"
    code, _, _ = cli(capsys, "pending", RUN, "--csv", "--rater", "dr-lee", "--store", local_store.uri, "-o", str(sheet))
    rows = list(csv.DictReader(io.StringIO(sheet.read_text())))
    assert [r["response_id"] for r in rows] == ["r0001-p-s1", "r0001-p-s2", "r0001-p-s0"]
    assert "cheer up" in rows[0]["response"] and rows[0]["empathy"] == ""
    for r in rows:  # the psychologist fills the sheet in
        r.update(dict.fromkeys(CRITERIA, "2"), comment="from the sheet")
    write_sheet(sheet, rows)
    code, _, err = cli(capsys, "rate", RUN, "--from", str(sheet), "--rater", "dr-lee", "--store", local_store.uri)
    assert code == 0, err
    assert len(stored(local_store)) == 3
    code, out, _ = cli(capsys, "pending", "--rater", "dr-lee", "--store", local_store.uri)
    assert json.loads(out)["rounds"][0]["toScore"] == []


def test_every_command_takes_a_run_the_same_way(local_store, capsys, tmp_path):
    seed_run(local_store)
    manifest = tmp_path / "demo.yaml"
    import yaml

    from .test_cli_commands import manifest_doc

    doc = manifest_doc()
    doc["spec"]["storage"] = {"localPath": local_store.uri}
    manifest.write_text(yaml.safe_dump(doc))
    local_store.write_json(PATHS.eval_results(), {"systems": [{"label": "base", "scores": {"f1": 0.5}, "n": 2}]})
    for run in (RUN, f"default/{RUN}", str(manifest)):
        for command in ("status", "report", "pending", "export"):
            code, out, err = cli(capsys, command, run, "--store", local_store.uri) if run != str(manifest) else cli(capsys, command, run)
            assert code == 0, (command, run, err)
    code, _, err = cli(capsys, "report", RUN, "-n", "other", "--store", local_store.uri)
    assert code == 1 and "no run other/demo" in err and "(it holds default/demo)" in err


def test_rater_is_a_rater_id_everywhere(capsys, tmp_path):
    code, _, err = cli(capsys, "run", "examples/tiny-local.yaml", "--rater", "auto")
    assert code == 2 and err == "error: --rater is your rater id; to choose how batches are scored use --scoring auto\n"
    code, _, err = cli(capsys, "run", "no-such-run", "--store", str(tmp_path))
    assert code == 1 and "no run default/no-such-run" in err
