"""Guidelines, help, summary (blind by default), mouse scoring and the light theme."""

from __future__ import annotations

from therapy_rlhf.feedback.gate import close_gate
from therapy_rlhf.feedback.rounds import load_round
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.contracts.records import Rating
from therapy_rlhf.contracts.spec import FeedbackSpec
from therapy_rlhf.tui.app import ScoringApp
from therapy_rlhf.tui.catalog import run_report
from therapy_rlhf.tui.guidelines_screen import GuidelinesScreen, guidelines_markdown
from therapy_rlhf.tui.help_screen import HelpScreen
from therapy_rlhf.tui.rate_screen import RateScreen
from therapy_rlhf.tui.rubric import RubricPanel
from therapy_rlhf.tui.summary_screen import HIDDEN, rater_rows, report_rows

from .conftest import make_run
from .helpers import DEMO, saved, settle


def test_guidelines_come_from_the_spec_then_the_rubric():
    fb = FeedbackSpec(guidelines="# Clinic rules\nRate what the response does.", safety_penalty=0.4)
    text = guidelines_markdown(fb)
    assert text.startswith("# Clinic rules")
    assert "### Empathy" in text and "Empathetic acknowledgment" in text
    assert "- `3` Clear: reflects the patient's own feelings" in text  # what each level means
    assert "lowers the combined score by 1.6 of 4" in text  # the 0.4 penalty on the rater's 0-4 scale
    assert "0.25" not in text
    assert guidelines_markdown(fb, "# Mine").startswith("# Mine")


def _rate(store, manifest, rater, rewards):
    state = load_round(store, DEMO, 1)
    for rid, reward in rewards.items():
        crit = {c.name: reward for c in manifest.spec.feedback.rubric}
        submit_rating(
            store, DEMO, state,
            Rating(response_id=rid, rater=rater, criteria=crit, reward=reward, seconds_spent=30),
            manifest.spec.feedback,
        )


def test_summary_hides_round_means_until_the_gate_closes(local_store):
    m = make_run(local_store, n=2)
    _rate(local_store, m, "alice", {"r0001-p0-s0": 1.0, "r0001-p1-s1": 0.5})
    _rate(local_store, m, "bob", {"r0001-p0-s0": 0.75, "r0001-p1-s1": 0.25})
    rows = report_rows(run_report(local_store, DEMO, m), "alice", unblind=False)
    assert rows == [("1", "2 of 2", "open", HIDDEN, HIDDEN)]
    assert rater_rows(run_report(local_store, DEMO, m)) == [("alice", "2", "1 min 00 s"), ("bob", "2", "1 min 00 s")]
    unblind = report_rows(run_report(local_store, DEMO, m), "alice", unblind=True)[0]
    assert unblind[3] == "0.62" and unblind[4] == "too few shared (2 of 3)"  # not a misleading 0.000
    close_gate(local_store, DEMO, 1, m.spec.feedback)
    closed = report_rows(run_report(local_store, DEMO, m), "alice", unblind=False)[0]
    assert closed[2] == "closed" and closed[3] == "0.62"


async def test_panels_open_and_close(demo_store):
    app = ScoringApp(demo_store, "alice", ("default", "demo"), 1)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, GuidelinesScreen)
        await pilot.press("escape", "H")
        assert isinstance(app.screen, HelpScreen)
        text = str(app.screen.query_one("#help-text").render())
        for words in ("Take back your last score", "Skip this response", "missed crisis", "0-9", "Not applicable", "Switch light/dark"):
            assert words in text
        await pilot.press("escape", "t")
        await settle(pilot)
        await pilot.press("escape")
        assert isinstance(app.screen, RateScreen)


async def test_mouse_click_scores_a_level(demo_store):
    app = ScoringApp(demo_store, "alice", ("default", "demo"), 1)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        # first row: "> " + 15-column name, then three columns per level: level 3 at 26..28
        await pilot.click(RubricPanel, offset=(27, 0))
        await pilot.pause()
        assert app.screen.form.levels == {"empathy": 3}
        assert app.screen.form.current == "boundaries"


async def test_light_theme_toggle(demo_store):
    app = ScoringApp(demo_store, "alice", ("default", "demo"), 1)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        dark = app.theme
        await pilot.press("ctrl+t")
        assert app.theme != dark and "light" in app.theme
        await pilot.press(*"44444", "enter")
        await saved(pilot)
