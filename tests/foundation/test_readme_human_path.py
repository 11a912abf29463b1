"""The README's "score as a human" path, verbatim, in a fresh directory after `make run`.

`make run` finishes the smol-local run (the bundled real model) in ./local-store; the README then tells a
newcomer to run its human-scoring command. Here both run through the real CLI
(jobs are the instant stand-ins, so this takes seconds), and the scoring app the
runner opens is the real one, driven headless with the Pilot by a rater who
types five digits and Enter per response, as the README says. Before issue 11 the
README pointed at the finished run (nothing left to score) and at `--rater`,
which meant a mode there.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

import therapy_rlhf.tui as tui
from therapy_rlhf import cli
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.rounds import load_round, read_gate
from therapy_rlhf.execution.runner import EXIT_INTERRUPTED, EXIT_SUCCEEDED
from therapy_rlhf.store.backends import open_store

REPO = Path(__file__).resolve().parents[2]
STANDIN = f"{sys.executable} {REPO / 'tests' / 'support' / 'standin_jobs.py'}"


def readme_commands() -> list[str]:
    """The shell commands in the README's fenced bash blocks, one per line."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line]


def as_argv(command: str) -> list[str]:
    words = shlex.split(command)
    assert words[0] == ".venv/bin/therapy-rlhf", f"the README names the command without the venv path: {command}"
    return words[1:]


async def score_everything(app) -> None:
    """Five digits and Enter per response, then q (what the README tells the rater)."""
    async with app.run_test(size=(80, 24)) as pilot:
        while getattr(app.screen, "session", None) is None:
            await pilot.pause(0.05)
        for _ in app.screen.session.responses:
            await pilot.press(*"44444", "enter")
        while app.writer.pending():
            await pilot.pause(0.05)
        await pilot.press("q")
        await pilot.pause()


@pytest.fixture
def fresh_clone(tmp_path, monkeypatch):
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("THERAPY_RLHF_JOB_COMMAND", STANDIN)
    monkeypatch.setenv("STANDIN_STATE_DIR", str(tmp_path / "standin"))
    monkeypatch.setenv("THERAPY_RLHF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("THERAPY_RLHF_DATA_DIR", str(tmp_path / "rater-data"))
    monkeypatch.delenv("THERAPY_RLHF_STORE", raising=False)
    return tmp_path


def test_the_readme_human_scoring_path_works_after_make_run(fresh_clone, monkeypatch):
    make_run = (REPO / "Makefile").read_text().split("\nrun:", 1)[1].splitlines()[1].strip()
    assert make_run == "$(BIN)/therapy-rlhf run examples/smol-local.yaml --scoring auto"
    assert cli.main(["run", "examples/smol-local.yaml", "--scoring", "auto"]) == EXIT_SUCCEEDED

    human = [c for c in readme_commands() if "--scoring tui" in c]
    assert len(human) == 1, human
    opened = []

    def the_scoring_app(store_uri, rater, run, round_no):
        from therapy_rlhf.tui.app import ScoringApp

        opened.append((rater, run, round_no))
        app = ScoringApp(open_store(store_uri), tui.resolve_rater(rater), run, round_no, refresh_seconds=0)
        asyncio.run(score_everything(app))
        return int(app.return_code or 0)

    monkeypatch.setattr(tui, "launch", the_scoring_app)
    assert cli.main(as_argv(human[0])) == EXIT_SUCCEEDED
    assert opened == [("dr-lee", ("default", "tiny-human"), 1), ("dr-lee", ("default", "tiny-human"), 2)]
    store = open_store("./local-store")
    paths = RunPaths("default", "tiny-human")
    for round_no in (1, 2):
        state = load_round(store, paths, round_no)
        assert {r.rater for r in state.ratings} == {"dr-lee"} and len(state.ratings) == 4
        assert read_gate(store, paths, round_no).reason == "complete"
    # the README's next commands take the run by name, in the same default store
    for command in ("status tiny-human", "pending tiny-human"):
        assert cli.main(command.split()) == 0


def test_a_session_ended_by_a_signal_stops_the_run_to_continue_later(fresh_clone, monkeypatch):
    """The app exits 128+signal on SIGHUP/SIGTERM (its scores are in the journal): the run stops, resumable."""
    monkeypatch.setattr(tui, "launch", lambda *a: 129)
    argv = ["run", "examples/tiny-human.yaml", "--scoring", "tui", "--rater", "dr-lee"]
    assert cli.main(argv) == EXIT_INTERRUPTED
    assert not open_store("./local-store").exists(RunPaths("default", "tiny-human").gate(1))
