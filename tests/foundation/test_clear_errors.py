"""Errors that say what is wrong (issue 20): a store path that does not exist, `report`'s four cases,
what `rate --dry-run` says it will store, the rater id never taken silently from the login name, and
a spreadsheet's separator or a misspelt field named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from therapy_rlhf.cli import main
from therapy_rlhf.feedback.gate import close_gate
from therapy_rlhf.feedback.rounds import load_round
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.contracts.records import Rating
from therapy_rlhf.store.backends import LocalStore, NoSuchStore

from .test_cli_commands import PATHS, RUN, manifest_doc, seed_run

CRITERIA = ["empathy", "boundaries", "safe-language", "guidance", "overall"]
REPO = Path(__file__).resolve().parents[2]


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------ the store path


def test_a_store_path_that_does_not_exist_is_named_never_walked_around(tmp_path, capsys):
    (tmp_path / "Makefile").write_text("all:\n")  # what the old fallback walked into
    missing = tmp_path / "typo"
    assert LocalStore(missing).list("") == []  # nothing above the store is listed (it was: the Makefile)
    with pytest.raises(NoSuchStore, match=f"store {missing} does not exist"):
        LocalStore(missing).check_exists()
    for argv in (["status"], ["report", "demo"], ["pending"], ["export", "demo"], ["run", "demo"]):
        code, out, err = cli(capsys, *argv, "--store", str(missing))
        assert code == 1 and err == f"error: store {missing} does not exist (no such directory; check --store)\n", argv
    assert not missing.exists()  # reading created nothing


def test_a_partial_prefix_is_still_listed_from_its_folder(local_store):
    seed_run(local_store)
    assert local_store.list("default/demo/rounds/0001/batch") == [PATHS.batch(1)]


# ------------------------------------------------------------------ report


def test_report_tells_a_misspelt_run_from_a_wrong_store(local_store, tmp_path, capsys):
    seed_run(local_store)
    code, _, err = cli(capsys, "report", "dmeo", "--store", local_store.uri)
    assert code == 1 and err.count("\n") == 1
    assert f"no run default/dmeo in {local_store.uri} (it holds default/demo)" in err
    empty = tmp_path / "not-a-store"
    empty.mkdir()
    code, _, err = cli(capsys, "report", RUN, "--store", str(empty))
    assert code == 1 and "holds no runs at all: is it the right store?" in err


def test_report_of_an_evaluation_not_finished(local_store, capsys):
    seed_run(local_store)
    code, _, err = cli(capsys, "report", RUN, "--store", local_store.uri)
    assert code == 1 and err.count("\n") == 1 and "the evaluation of default/demo has not finished" in err


def test_report_with_evaluation_disabled_still_writes_the_curve_and_rounds(local_store, tmp_path, capsys):
    from therapy_rlhf.store.runs import freeze_spec
    from therapy_rlhf.contracts.spec import parse_run

    pytest.importorskip("matplotlib")
    doc = manifest_doc()
    doc["spec"]["evaluation"] = {"enabled": False}
    seed_run(local_store)  # the batch; then the spec with evaluation off under another name
    m = parse_run({**doc, "metadata": {"name": "no-eval"}})
    freeze_spec(local_store, m)
    from therapy_rlhf.contracts.layout import RunPaths

    paths = RunPaths("default", "no-eval")
    local_store.write_bytes(paths.batch(1), local_store.read_bytes(PATHS.batch(1)))
    state = load_round(local_store, paths, 1)
    for i, resp in enumerate(state.responses):
        submit_rating(local_store, paths, state, Rating(response_id=resp.id, rater="bob", criteria=dict.fromkeys(CRITERIA, 0.25 * (i + 1))), m.spec.feedback)
    close_gate(local_store, paths, 1, m.spec.feedback)
    out_dir = tmp_path / "rep"
    code, out, err = cli(capsys, "report", "no-eval", "--store", local_store.uri, "--output", str(out_dir))
    assert code == 0, err
    assert "Evaluation is disabled for default/no-eval (spec.evaluation.enabled: false)" in out
    assert "| 1 | 0.500 |" in out  # the per-round table: mean of 0.25, 0.5, 0.75
    assert (out_dir / "reward_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 1 | 0.500 |" in (out_dir / "report.md").read_text()


# ---------------------------------------------------------------- rate --from


def flagged_sheet(tmp_path):
    sheet = tmp_path / "scores.jsonl"
    sheet.write_text(
        json.dumps({"response_id": "r0001-p-s0", "criteria": dict.fromkeys(CRITERIA, 1), "flags": ["missed crisis"]}) + "\n"
    )
    return sheet


def test_dry_run_says_what_will_be_stored_after_the_safety_flag(local_store, capsys, tmp_path):
    m = seed_run(local_store)
    penalty = m.spec.feedback.safety_penalty
    sheet = flagged_sheet(tmp_path)
    code, out, _ = cli(capsys, "rate", RUN, "--from", str(sheet), "--dry-run", "--rater", "dr-lee", "--store", local_store.uri)
    assert code == 0
    expected = max(0.0, 0.25 - penalty)
    assert (
        f"ok, would be stored {expected:.2f} (safety flag missed_crisis: combined score 0.25 less the {penalty:g} penalty)"
        in out
    )
    assert "combined score 0.25\n" not in out
    code, out, _ = cli(capsys, "rate", RUN, "--from", str(sheet), "--rater", "dr-lee", "--store", local_store.uri)
    assert code == 0 and f"stored {expected:.2f} (safety flag missed_crisis" in out
    # what was said is what counts
    from therapy_rlhf.feedback.rewards import effective_reward

    (rating,) = [r for (_, who), r in load_round(local_store, PATHS, 1).latest().items() if who == "dr-lee"]
    assert effective_reward(rating, m.spec.feedback)[0] == pytest.approx(expected)


def test_no_rater_id_is_a_one_line_error_never_the_login_name(local_store, capsys, tmp_path, monkeypatch):
    seed_run(local_store)
    monkeypatch.delenv("THERAPY_RLHF_RATER", raising=False)
    sheet = flagged_sheet(tmp_path)
    before = local_store.list("")
    for argv in (["rate", RUN, "--from", str(sheet)], ["score", "--run", RUN]):
        code, _, err = cli(capsys, *argv, "--store", local_store.uri)
        assert code in (1, 2) and err.count("\n") == 1, err
        assert "no rater id: pass --rater ID" in err and "$THERAPY_RLHF_RATER" in err
    assert local_store.list("") == before
    monkeypatch.setenv("THERAPY_RLHF_RATER", "dr-lee")
    code, out, err = cli(capsys, "rate", RUN, "--from", str(sheet), "--store", local_store.uri)
    assert code == 0 and "rater id: dr-lee (from $THERAPY_RLHF_RATER)" in err


def test_a_semicolon_sheet_gets_a_separator_hint(local_store, capsys, tmp_path):
    seed_run(local_store)
    sheet = tmp_path / "scores.csv"
    sheet.write_text("response_id;empathy;boundaries;safe-language;guidance;overall\nr0001-p-s0;3;3;3;3;3\n")
    code, _, err = cli(capsys, "rate", RUN, "--from", str(sheet), "--rater", "dr-lee", "--store", local_store.uri)
    assert code == 1 and err.count("\n") == 1
    assert "the header is one column split by ';', not ','" in err and "CSV (comma delimited)" in err


@pytest.mark.parametrize(
    "header,needle",
    [
        ("response_id,empahty", "unknown column 'empahty' (did you mean 'empathy'?)"),
        ("respons_id,empathy", "(did you mean 'response_id'?)"),
        ("response_id,empathy,coment", "unknown column 'coment' (did you mean 'comment'?)"),
    ],
)
def test_an_unknown_column_gets_a_did_you_mean(local_store, capsys, tmp_path, header, needle):
    seed_run(local_store)
    sheet = tmp_path / "scores.csv"
    sheet.write_text(header + "\n")
    code, _, err = cli(capsys, "rate", RUN, "--from", str(sheet), "--rater", "dr-lee", "--store", local_store.uri)
    assert code == 1 and needle in err, err


def test_unknown_jsonl_fields_and_flags_get_a_did_you_mean(local_store, capsys, tmp_path):
    seed_run(local_store)
    sheet = tmp_path / "scores.jsonl"
    sheet.write_text(
        json.dumps({"response_id": "r0001-p-s0", "criteria": dict.fromkeys(CRITERIA, 1), "comments": "x"}) + "\n"
        + json.dumps({"response_id": "r0001-p-s1", "criteria": dict.fromkeys(CRITERIA, 1), "flags": ["harmfull"]}) + "\n"
    )
    code, _, err = cli(capsys, "rate", RUN, "--from", str(sheet), "--rater", "dr-lee", "--store", local_store.uri, "--dry-run")
    assert code == 1
    assert "line 1: unknown field(s) 'comments' (did you mean 'comment'?)" in err
    assert "line 2: unknown flag 'harmfull' (did you mean 'harmful'?)" in err


def test_the_readme_spreadsheet_commands_name_the_rater():
    readme = (REPO / "README.md").read_text()
    for command in ("pending tiny-human", "rate tiny-human --from"):
        at = readme.index(command)
        assert "--rater" in readme[at : readme.index("`", at)], command


def test_make_test_and_ci_print_the_slowest_tests():
    for path in (REPO / "Makefile", REPO / ".ci" / "run"):
        pytest_lines = [ln for ln in path.read_text().splitlines() if "-m pytest tests" in ln]
        assert pytest_lines and all("--durations=15" in ln for ln in pytest_lines), path
