"""Finding work, and every kind of bad input giving a clear message instead of a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

from textual.widgets import DataTable, Static

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.store.backends import S3Store
from therapy_rlhf.tui.app import ScoringApp
from therapy_rlhf.tui.rate_screen import RateScreen
from therapy_rlhf.tui.start_screen import StartScreen
from therapy_rlhf.tui.too_small_screen import TooSmallScreen

from .conftest import make_run
from .helpers import settle


def text_of(app, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


async def test_start_screen_lists_rounds_waiting_for_this_rater(store):
    make_run(store, "demo")
    make_run(store, "other", n=2)
    app = ScoringApp(store, "alice")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, StartScreen)
        table = app.screen.query_one(DataTable)
        rows = [table.get_row_at(i) for i in range(table.row_count)]
        assert {r[0] for r in rows} == {"default/demo", "default/other"}
        assert ["default/other", "1", "0/2", "0/2"] == rows[[r[0] for r in rows].index("default/other")][:4]
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, RateScreen)
        await pilot.press("escape")
        await settle(pilot)
        assert isinstance(app.screen, StartScreen)


async def test_unreachable_store_says_so(s3_endpoint):
    store = S3Store("no-such-bucket-here", "p", endpoint_url="http://127.0.0.1:9")
    app = ScoringApp(store, "alice")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, timeout=60)
        message = text_of(app, "#start-message")
        assert "cannot reach the store s3://no-such-bucket-here/p" in message
        assert "Traceback" not in message


async def test_rater_not_allowed(local_store):
    make_run(local_store, allowedRaters=["bob"])
    app = ScoringApp(local_store, "alice", ("default", "demo"), 1)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        problem = text_of(app, "#problem")
        assert "rater 'alice' is not in feedback.allowedRaters ['bob']" in problem
        await pilot.press("escape")
        await settle(pilot)
        table = app.screen.query_one(DataTable)
        assert table.get_row_at(0)[-1] == "not open to you"


async def test_unknown_rubric_in_spec(local_store):
    paths = RunPaths("default", "broken")
    make_run(local_store, "demo")
    spec = local_store.read_json(RunPaths("default", "demo").spec())
    spec["metadata"]["name"] = "broken"
    spec["spec"]["feedback"]["rubric"] = "paper-v9"
    local_store.write_json(paths.spec(), spec)
    local_store.write_bytes(paths.batch(1), local_store.read_bytes(RunPaths("default", "demo").batch(1)))
    app = ScoringApp(local_store, "alice", ("default", "broken"), 1)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        problem = text_of(app, "#problem")
        assert "spec of run default/broken cannot be used" in problem and "rubric" in problem
        await pilot.press("escape")
        await settle(pilot)
        assert "cannot read default/broken" in text_of(app, "#start-problems")


async def test_malformed_batch_line_is_an_error_card_and_the_rest_rateable(local_store):
    make_run(local_store, n=2, extra_lines='{"id": "broken", "truncat\n')
    app = ScoringApp(local_store, "alice", ("default", "demo"), 1)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        card = text_of(app, "#batch-errors")
        assert "[! BATCH ERROR] batch.jsonl line 3: not valid JSON" in card
        await pilot.press(*"44444", "enter", *"33333", "enter")
        assert app.screen.session.done


async def test_terminal_too_small_says_what_it_needs(demo_store):
    app = ScoringApp(demo_store, "alice", ("default", "demo"), 1)
    async with app.run_test(size=(60, 20)) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, TooSmallScreen)
        assert "needs at least 80x24" in text_of(app, "#too-small")
        await pilot.resize_terminal(80, 24)
        await settle(pilot)
        assert isinstance(app.screen, RateScreen)


def test_score_command_rejects_a_bad_rater_id(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "therapy_rlhf.cli", "score", "--store", str(tmp_path), "--rater", "Dr. Smith"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: invalid rater id 'Dr. Smith'")
    assert "Traceback" not in proc.stderr


def test_launch_rejects_bad_input_without_starting(tmp_path, capsys):
    from therapy_rlhf.tui import launch

    assert launch(str(tmp_path), rater="ok", run=("default", "Bad_Name")) == 2
    assert "invalid run name 'Bad_Name'" in capsys.readouterr().err
    assert launch("ftp://x", rater="ok") == 2


def test_tui_never_imports_torch_or_kubernetes():
    code = (
        "import sys, therapy_rlhf.tui, therapy_rlhf.tui.app, therapy_rlhf.tui.rate_screen, "
        "therapy_rlhf.tui.start_screen, therapy_rlhf.tui.summary_screen, therapy_rlhf.tui.help_screen, "
        "therapy_rlhf.tui.guidelines_screen, therapy_rlhf.commands.score\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'kubernetes', 'kopf', 'transformers')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout.replace("'", '"')) == []


async def test_garbage_gate_object_is_a_message_not_a_crash(local_store):
    make_run(local_store)
    local_store.write_bytes(RunPaths("default", "demo").gate(1), b'{"round": "x"}')
    app = ScoringApp(local_store, "alice")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert "unexpected problem reading" in text_of(app, "#start-message")


def test_score_command_is_registered():
    proc = subprocess.run(
        [sys.executable, "-m", "therapy_rlhf.cli", "score", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    for option in ("--store", "--rater", "--run", "--round", "--guidelines", "--unblind"):
        assert option in proc.stdout


def test_finding_work_reads_open_rounds_once_and_closed_rounds_never(local_store):
    from therapy_rlhf.contracts.layout import RunPaths
    from therapy_rlhf.feedback.gate import close_gate
    from therapy_rlhf.feedback.rounds import load_round
    from therapy_rlhf.feedback.submit import submit_rating
    from therapy_rlhf.contracts.records import dump_batch
    from therapy_rlhf.feedback.simrater import judge
    from therapy_rlhf.tui.catalog import find_work

    from .conftest import WrappedStore, responses

    m = make_run(local_store, n=4, round_no=1)
    paths = RunPaths(m.namespace, m.name)
    state = load_round(local_store, paths, 1)
    for response in state.responses:
        submit_rating(local_store, paths, state, judge(response, m.spec.feedback), m.spec.feedback)
    close_gate(local_store, paths, 1, m.spec.feedback)
    local_store.write_bytes(paths.batch(2), dump_batch(responses(2, 4)))

    recording = WrappedStore(local_store)
    found = find_work(recording, "dr-lee")
    assert [(i.round, i.responses) for i in found.items] == [(2, 4)]
    assert [k for k in recording.reads if k.startswith(paths.round_prefix(1) + "/")] == [paths.gate(1)]
    assert recording.reads.count(paths.batch(2)) == 1
