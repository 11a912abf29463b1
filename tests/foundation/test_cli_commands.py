"""status, rate --auto and export against a real store (both backends), plus --help and errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from therapy_rlhf.cli import COMMAND_MODULES, build_parser, main
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.gate import close_gate
from therapy_rlhf.feedback.rounds import load_round
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.contracts.records import PendingResponse, Rating, dump_batch
from therapy_rlhf.store.runs import freeze_spec
from therapy_rlhf.contracts.spec import parse_run
from tests.support.manifests import run_doc

RUN = "demo"
PATHS = RunPaths("default", RUN)
TEXTS = [
    "I'm sorry you're feeling this way. It sounds really hard, and I'm here to listen.",
    "Just cheer up, it is not a big deal.",
    "That sounds painful. Could you try to talk to a friend or a therapist?",
]


def manifest_doc(min_raters=1, allowed=()):
    return run_doc({
            "model": {"source": "tiny:mistral"},
            "storage": {"localPath": "/unused"},
            "ppo": {"rounds": 2},
            "feedback": {"minRaters": min_raters, "allowedRaters": list(allowed)},
        }, RUN)


def seed_run(store, round_no=1, **kw):
    """A frozen run with one batch of three responses in ``round_no``."""
    manifest = parse_run(manifest_doc(**kw))
    freeze_spec(store, manifest)
    batch = [
        PendingResponse(
            id=f"r{round_no:04d}-p-s{i}",
            round=round_no,
            prompt_id="paper-depressed-hopeless",
            prompt="I'm feeling depressed and hopeless. Can you help me?",
            context=[{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}] if i == 0 else [],
            response=text,
        )
        for i, text in enumerate(TEXTS)
    ]
    store.write_bytes(PATHS.batch(round_no), dump_batch(batch))
    store.write_json(PATHS.sft_metrics(), {"train_loss": 1.0})  # SFT is done
    return manifest


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_of_every_command():
    parser = build_parser()
    for name in ("status", "rate", "export", "crd", "validate"):
        assert name in COMMAND_MODULES and name in parser.format_help()
    for name in ("status", "rate", "export", "crd"):
        proc = subprocess.run(
            [sys.executable, "-m", "therapy_rlhf.cli", name, "--help"], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        assert "usage: therapy-rlhf " + name in proc.stdout
    rate_help = subprocess.run(
        [sys.executable, "-m", "therapy_rlhf.cli", "rate", "--help"], capture_output=True, text=True
    ).stdout
    assert "SIMULATED" in rate_help and "--auto" in rate_help


def test_rate_needs_auto(store, capsys):
    seed_run(store)
    code, out, err = cli(capsys, "rate", RUN, "--store", store.uri)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "--auto" in err
    assert store.list(PATHS.ratings_prefix(1)) == []


def test_rate_status_export_round_trip(store, capsys):
    manifest = seed_run(store, min_raters=2)
    code, out, err = cli(capsys, "rate", "--auto", RUN, "--store", store.uri)
    assert code == 0, err
    assert out.startswith("SIMULATED RATER") and "wrote 6 rating(s) for round 1" in out
    assert "3/3 responses have >= 2 raters" in out
    state = load_round(store, PATHS, 1)
    assert {r.rater for r in state.ratings} == {"sim-rater", "sim-rater-2"}
    assert all(r.client.startswith("therapy-rlhf-simrater/") for r in state.ratings)
    # rating again writes nothing new: every response is already rated by both
    code, out, _ = cli(capsys, "rate", "--auto", RUN, "--store", store.uri)
    assert code == 0 and "wrote 0 rating(s)" in out

    code, out, err = cli(capsys, "status", RUN, "--store", store.uri, "--json")
    assert code == 0, err
    doc = json.loads(out)
    (round1,) = doc["history"]
    assert (round1["round"], round1["responses"], round1["rated"], round1["ratings"]) == (1, 3, 3, 6)
    assert round1["raters"] == ["sim-rater", "sim-rater-2"]
    assert round1["gateClosed"] is False and 0.0 <= round1["meanReward"] <= 1.0
    assert doc["phase"] == "AwaitingRatings"

    gate = close_gate(store, PATHS, 1, manifest.spec.feedback, closed_by="test").gate
    code, out, _ = cli(capsys, "status", RUN, "--store", store.uri)
    assert code == 0
    assert "3/3" in out and "closed" in out and f"{gate.mean_reward:.3f}" in out

    code, out, err = cli(capsys, "export", RUN, "--store", store.uri)
    assert code == 0 and "exported 3 rated response(s)" in err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["response_id"] for r in rows] == ["r0001-p-s0", "r0001-p-s1", "r0001-p-s2"]
    for row in rows:
        assert row["reward"] == gate.rewards[row["response_id"]].reward
        assert row["raters"] == ["sim-rater", "sim-rater-2"] and row["gated"] is True
        assert row["round"] == 1 and row["completion"][0]["role"] == "assistant"
        assert all(c["comment"].startswith("SIMULATED RATER") for c in row["comments"])
    assert [t["role"] for t in rows[0]["prompt"]] == ["user", "assistant", "user"]
    assert "dismissive" in rows[1]["flags"]  # "Just cheer up" is a dismissive phrase


def test_export_uses_latest_ratings_only(local_store, capsys, tmp_path):
    manifest = seed_run(local_store)
    fb = manifest.spec.feedback
    state = load_round(local_store, PATHS, 1)
    full = {c.name: 0.25 for c in fb.rubric}
    submit_rating(local_store, PATHS, state, Rating(response_id="r0001-p-s0", rater="dr-lee", criteria=full, comment="first"), fb)
    better = {c.name: 0.75 for c in fb.rubric}
    submit_rating(local_store, PATHS, state, Rating(response_id="r0001-p-s0", rater="dr-lee", criteria=better, comment="corrected"), fb)
    submit_rating(local_store, PATHS, state, Rating(response_id="r0001-p-s1", rater="dr-lee", criteria=full), fb)
    submit_rating(local_store, PATHS, state, Rating(response_id="r0001-p-s1", rater="dr-lee", withdrawn=True), fb)
    out_file = tmp_path / "out" / "ratings.jsonl"
    code, _, err = cli(capsys, "export", RUN, "--store", local_store.uri, "--output", str(out_file), "--format", "standard")
    assert code == 0, err
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(rows) == 1  # s1 withdrawn, s2 never rated
    (row,) = rows
    assert row["reward"] == 0.75 and row["comments"] == [{"rater": "dr-lee", "comment": "corrected"}]
    assert row["criteria"] == better and row["gated"] is False
    assert row["prompt"].startswith("user: Hi.\nassistant: Hello.\nuser: I'm feeling")
    assert isinstance(row["completion"], str)


def test_status_lists_runs(store, capsys):
    seed_run(store)
    code, out, err = cli(capsys, "status", "--store", store.uri, "--json")
    assert code == 0, err
    (entry,) = json.loads(out)["runs"]
    assert (entry["namespace"], entry["name"], entry["phase"], entry["round"]) == ("default", RUN, "AwaitingRatings", 1)
    assert entry["roundsDone"] == 0 and entry["rounds"] == 2
    code, out, _ = cli(capsys, "status", "--store", store.uri)
    assert code == 0 and RUN in out and "AwaitingRatings" in out


def test_status_of_empty_store(local_store, capsys):
    local_store.root.mkdir(parents=True)  # empty, but there (a missing one is an error naming it)
    code, out, _ = cli(capsys, "status", "--store", local_store.uri)
    assert code == 0 and "no runs" in out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["status", "nope"], "no run default/nope"),
        (["status", "Bad_Name"], "invalid run name"),
        (["status", "other/demo", "--namespace", "default"], "names namespace 'other'"),
        (["rate", "--auto", "demo", "--round", "2"], "batch 2 of default/demo has no responses yet"),
        (["rate", "--auto", "demo", "--round", "0"], "invalid round 0"),
        (["rate", "--auto", "demo", "--rater", "dr/lee"], "invalid rater id 'dr/lee'"),
        (["rate", "--auto", "demo", "--rater", "stranger"], "not in feedback.allowedRaters"),
        (["export", "nope"], "no run default/nope"),
        (["export", "examples/invalid/unknown-field.yaml"], "spec.ppo.samplesPerPromt: unknown field"),
    ],
)
def test_errors_are_one_line_and_change_nothing(local_store, capsys, argv, needle):
    seed_run(local_store, allowed=["sim-rater", "dr-lee"])
    before = {k: local_store.read_bytes(k) for k in local_store.list("")}
    code, out, err = cli(capsys, *argv, "--store", local_store.uri)
    assert code == 1, (out, err)
    assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err
    assert {k: local_store.read_bytes(k) for k in local_store.list("")} == before


def test_rate_refuses_a_gated_round(local_store, capsys):
    manifest = seed_run(local_store)
    cli(capsys, "rate", "--auto", RUN, "--store", local_store.uri)
    close_gate(local_store, PATHS, 1, manifest.spec.feedback)
    code, _, err = cli(capsys, "rate", "--auto", RUN, "--store", local_store.uri)
    assert code == 1 and "no batch of default/demo is waiting for scores" in err
    code, _, err = cli(capsys, "rate", "--auto", RUN, "--store", local_store.uri, "--round", "1")
    assert code == 1 and "is closed (scoring finished)" in err


def test_an_output_file_is_written_whole_or_not_at_all(capsys, tmp_path):
    out = tmp_path / "crds" / "run.yaml"
    code, stdout, _ = cli(capsys, "crd", "--output", str(out))
    assert code == 0 and stdout.strip() == f"wrote {out}" and "kind: CustomResourceDefinition" in out.read_text()
    assert [p.name for p in out.parent.iterdir()] == ["run.yaml"]  # no temp file left beside it
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    code, _, err = cli(capsys, "crd", "--output", str(blocker / "run.yaml"))
    assert code == 1 and err.startswith(f"error: cannot write {blocker / 'run.yaml'}:") and len(err.strip().splitlines()) == 1
    assert blocker.read_text() == "keep me"
