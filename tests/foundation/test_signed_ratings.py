"""Signed ratings: each forgery that a holder of store write access can try is refused with a named
reason by every reader (the gate, status, export), nothing already stored changes, and a correction
signed by the right rater is accepted. A gate freezes content: an in-place edit after it closed is
seen, and every reader uses what the gate froze (what trained).

Forgeries are written straight to the store (``plant``), as anyone with write access can."""

from __future__ import annotations

import json

import pytest

from therapy_rlhf.commands.export import export_rows
from therapy_rlhf.contracts import signing
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.contracts.records import PendingResponse, Rating, dump_batch
from therapy_rlhf.feedback import rater_keys
from therapy_rlhf.feedback.gate import aggregate, close_gate, coverage
from therapy_rlhf.feedback.rewards import RatingError
from therapy_rlhf.feedback.rounds import changed_after_gate, load_round
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.feedback.summary import summarize_round
from therapy_rlhf.store.runs import freeze_spec
from tests.support.manifests import run_manifest

PATHS = RunPaths("default", "signed")
IDS = ["r0001-a", "r0001-b"]
RATERS = ["dr-lee", "dr-kim"]


def signer(rater: str) -> rater_keys.Signer:
    return rater_keys.signer_for(rater, create=True)  # type: ignore[return-value]


def scores(value: float) -> dict[str, float]:
    return {c: value for c in ("empathy", "boundaries", "safe-language", "guidance", "overall")}


def make_run(store, roster: bool = True, rounds=(1,)):
    feedback = {"raters": [{"id": r, "publicKey": signer(r).public_key} for r in RATERS]} if roster else {}
    manifest = run_manifest(
        {"model": {"source": "tiny:mistral"}, "storage": {"localPath": "/unused"}, "ppo": {"rounds": 2},
         "feedback": {"minRaters": 1, **feedback}},
        "signed",
    )
    freeze_spec(store, manifest)
    for r in rounds:
        batch = [PendingResponse(id=i, round=r, prompt_id="p", prompt="I feel hopeless.", response=f"answer {i} of round {r}")
                 for i in IDS]
        store.write_bytes(PATHS.batch(r), dump_batch(batch))
    return manifest


def honest(store, run, rater: str, response: str, value: float, round_no: int = 1) -> Rating:
    fb = run.spec.feedback
    state = load_round(store, PATHS, round_no, feedback=fb)
    rating = Rating(response_id=response, rater=rater, criteria=scores(value))
    return submit_rating(store, PATHS, state, rating, fb, signer=signer(rater) if fb.raters else None)


def plant(store, rater: str, response: str, record: dict, version: int = 1, round_no: int = 1, overwrite=False) -> None:
    key = PATHS.rating(round_no, rater, response, version)
    data = json.dumps(record).encode()
    store.write_bytes(key, data) if overwrite else store.create_bytes(key, data)


def forged(rater: str, response: str, value: float, *, version: int = 1, key_of: str | None = None, text_of=None) -> dict:
    """A rating record claiming ``rater``, signed with ``key_of``'s key (None: unsigned)."""
    record = Rating(
        response_id=response, rater=rater, criteria=scores(value), version=version,
        supersedes=f"{rater}/{response}/v{version - 1}" if version > 1 else None,
        response_sha256=signing.text_sha256(text_of or f"answer {response} of round 1"),
    ).model_dump(mode="json")
    if key_of is not None:
        record["signature"] = signer(key_of).sign(record)
    return record


def snapshot(store) -> dict[str, bytes]:
    return {k: store.read_bytes(k) for k in store.list("")}


def readers(store, run, round_no: int = 1):
    fb = run.spec.feedback
    state = load_round(store, PATHS, round_no, feedback=fb)
    warnings: list[str] = []
    rows = export_rows(store, PATHS, warnings=warnings)
    return state, aggregate(state, fb), summarize_round(store, PATHS, run, round_no, state), rows, warnings


def refusal_reasons(state) -> list[str]:
    return [r.reason for r in state.refused]


# --------------------------------------------------------------------- keys


def test_rater_key_init_keeps_the_key_private_and_never_replaces_it(tmp_path, monkeypatch, capsys):
    from therapy_rlhf.cli import main

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert main(["rater-key", "init", "--rater", "dr-lee"]) == 0
    public = capsys.readouterr().out.strip()
    path = tmp_path / "therapy-rlhf" / "keys" / "dr-lee.pem"
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    before = path.read_bytes()
    assert main(["rater-key", "init", "--rater", "dr-lee"]) == 1
    assert "already exists" in capsys.readouterr().err and path.read_bytes() == before
    assert main(["rater-key", "show", "--rater", "dr-lee"]) == 0
    assert capsys.readouterr().out.strip() == public and public.startswith("ed25519:")
    signing.parse_public_key(public)
    assert main(["rater-key", "show", "--rater", "dr-kim"]) == 1  # no key: one line, nothing made
    assert not (path.parent / "dr-kim.pem").exists()


@pytest.mark.parametrize(
    "raters, extra, why",
    [
        ([{"id": "dr-lee", "publicKey": "ed25519:AAAA"}], {}, "must be 32 bytes"),
        ([{"id": "dr-lee", "publicKey": "rsa:abc"}], {}, "must look like 'ed25519:<base64>'"),
        ("dup", {}, "duplicate rater ids"),
        ("ok", {"allowedRaters": ["dr-lee"]}, "not both"),
    ],
)
def test_the_roster_is_validated(raters, extra, why):
    from therapy_rlhf.contracts.spec import SpecError

    key = signer("dr-lee").public_key
    if raters == "dup":
        raters = [{"id": "dr-lee", "publicKey": key}, {"id": "dr-lee", "publicKey": signer("dr-kim").public_key}]
    elif raters == "ok":
        raters = [{"id": "dr-lee", "publicKey": key}]
    with pytest.raises(SpecError, match=why):
        run_manifest({"model": {"source": "tiny:mistral"}, "feedback": {"raters": raters, **extra}})


# ---------------------------------------------------------------- forgeries


def test_a_signed_rating_counts_and_an_unsigned_submit_is_refused_before_anything_is_stored(store):
    run = make_run(store)
    honest(store, run, "dr-lee", "r0001-a", 0.5)
    before = snapshot(store)
    state = load_round(store, PATHS, 1, feedback=run.spec.feedback)
    with pytest.raises(RatingError, match="accepts only signed ratings"):
        submit_rating(store, PATHS, state, Rating(response_id="r0001-b", rater="dr-kim", criteria=scores(1.0)), run.spec.feedback)
    with pytest.raises(RatingError, match="not the one this run registers"):
        submit_rating(store, PATHS, state, Rating(response_id="r0001-b", rater="dr-kim", criteria=scores(1.0)),
                      run.spec.feedback, signer=rater_keys.Signer("dr-kim", signer("someone-else").key))
    assert snapshot(store) == before
    state, rewards, summary, rows, _ = readers(store, run)
    assert state.refused == [] and rewards["r0001-a"].reward == 0.5 and summary.refused == ()


def test_a_new_version_under_another_raters_folder_is_refused(store):
    run = make_run(store)
    for resp in IDS:
        honest(store, run, "dr-lee", resp, 0.5)
    before = snapshot(store)
    plant(store, "dr-lee", "r0001-a", forged("dr-lee", "r0001-a", 0.0, version=2, key_of="dr-kim"), version=2)
    plant(store, "dr-lee", "r0001-b", forged("dr-lee", "r0001-b", 0.0, version=2), version=2)
    state, rewards, summary, rows, warnings = readers(store, run)
    assert refusal_reasons(state) == [signing.BAD_SIGNATURE, signing.UNSIGNED]
    assert {r.reward for r in rewards.values()} == {0.5} and [row["reward"] for row in rows] == [0.5, 0.5]
    assert len(summary.refused) == 2 and "refused (bad-signature)" in summary.refused[0]
    assert any("2 rating(s) refused" in w for w in warnings)
    gate = close_gate(store, PATHS, 1, run.spec.feedback).gate
    assert gate.mean_reward == 0.5 and all(r.ratings[0].endswith("/v1") for r in gate.rewards.values())
    assert {k: v for k, v in snapshot(store).items() if k in before and "gate" not in k} == before


def test_a_rating_under_an_unrostered_id_is_refused_and_closes_nothing(store):
    run = make_run(store)
    honest(store, run, "dr-lee", "r0001-a", 0.5)
    for resp in IDS:
        plant(store, "mallory", resp, forged("mallory", resp, 1.0, key_of="mallory"))
    state, rewards, summary, rows, _ = readers(store, run)
    assert refusal_reasons(state) == [signing.UNKNOWN_RATER] * 2
    assert not coverage(state, 1).is_complete and list(rewards) == ["r0001-a"]
    with pytest.raises(RatingError, match="not fully rated"):
        close_gate(store, PATHS, 1, run.spec.feedback)


def test_a_signature_moved_to_another_response_or_round_is_refused(store):
    run = make_run(store, rounds=(1, 2))
    honest(store, run, "dr-lee", "r0001-a", 0.2)
    signed = json.loads(store.read_bytes(PATHS.rating(1, "dr-lee", "r0001-a", 1)))
    moved = {**signed, "response_id": "r0001-b"}  # the signature of a's rating, on b
    plant(store, "dr-lee", "r0001-b", moved)
    b_text = signing.text_sha256("answer r0001-b of round 1")  # ... and b's digest put in too
    plant(store, "dr-lee", "r0001-b", {**moved, "version": 2, "response_sha256": b_text}, version=2)
    plant(store, "dr-lee", "r0001-a", signed, round_no=2)  # round 2's r0001-a is other text
    state1, *_ = readers(store, run, 1)
    state2, *_ = readers(store, run, 2)
    assert refusal_reasons(state1) == [signing.RESPONSE_DIGEST_MISMATCH, signing.BAD_SIGNATURE]
    assert refusal_reasons(state2) == [signing.RESPONSE_DIGEST_MISMATCH] and state2.ratings == []


def test_a_correction_signed_by_the_same_rater_is_accepted(store):
    run = make_run(store)
    honest(store, run, "dr-lee", "r0001-a", 0.2)
    corrected = honest(store, run, "dr-lee", "r0001-a", 0.8)
    assert corrected.version == 2 and corrected.signature
    state, rewards, *_ = readers(store, run)
    assert state.refused == [] and rewards["r0001-a"].reward == 0.8 and rewards["r0001-a"].ratings == ["dr-lee/r0001-a/v2"]


def test_the_simulated_rater_signs_with_keys_a_local_demo_registers(store):
    from therapy_rlhf.feedback.simrater import rate_round, with_simulated_roster

    bare = make_run(store, roster=False)
    demo = with_simulated_roster(bare)
    assert [r.id for r in demo.spec.feedback.raters] == ["sim-rater"]
    assert with_simulated_roster(demo) == demo  # the same keys on a restart: the frozen spec is unchanged
    assert rate_round(store, PATHS, demo, 1) == 2
    state = load_round(store, PATHS, 1, feedback=demo.spec.feedback)
    assert len(state.ratings) == 2 and state.refused == [] and all(r.signature for r in state.ratings)


# ------------------------------------------------------- frozen content


@pytest.mark.parametrize("roster", [True, False], ids=["signed", "unsigned"])
def test_an_edit_after_the_gate_closed_changes_nothing_that_trained(store, roster):
    run = make_run(store, roster=roster)
    for resp in IDS:
        honest(store, run, "dr-lee", resp, 0.5)
    gate = close_gate(store, PATHS, 1, run.spec.feedback).gate
    assert set(gate.contents) == {"dr-lee/r0001-a/v1", "dr-lee/r0001-b/v1"} and set(gate.frozen) == set(gate.contents)
    key = PATHS.rating(1, "dr-lee", "r0001-a", 1)
    edited = {**json.loads(store.read_bytes(key)), "criteria": scores(1.0)}
    if roster:
        edited["signature"] = signer("dr-kim").sign(edited)
    plant(store, "dr-lee", "r0001-a", edited, overwrite=True)
    state, rewards, summary, rows, warnings = readers(store, run)
    assert state.changed_after_gate == ["dr-lee/r0001-a/v1"] and state.gate is not None
    assert rewards["r0001-a"].reward == 0.5 and summary.mean_reward == gate.mean_reward == 0.5
    assert summary.changed_after_gate == ("dr-lee/r0001-a/v1",)
    assert [row["reward"] for row in rows] == [0.5, 0.5] and all(row["gated"] for row in rows)
    assert any("changed in the store after the gate closed" in w for w in warnings)
    assert changed_after_gate(store, PATHS, 1, gate) == ["dr-lee/r0001-a/v1"]


def test_a_gate_cannot_bring_in_a_rating_of_its_own(store):
    """A planted gate.json whose 'frozen' copy is not signed by the rater lends nothing."""
    run = make_run(store)
    for resp in IDS:
        honest(store, run, "dr-lee", resp, 0.5)
    gate = close_gate(store, PATHS, 1, run.spec.feedback).gate
    doc = gate.model_dump(mode="json")
    doc["frozen"]["dr-lee/r0001-a/v1"]["criteria"] = scores(1.0)
    doc["contents"]["dr-lee/r0001-a/v1"] = "0" * 64
    store.write_bytes(PATHS.gate(1), json.dumps(doc).encode())
    state, rewards, *_ = readers(store, run)
    assert state.changed_after_gate == [] and rewards["r0001-a"].reward == 0.5


def test_unauthenticated_runs_say_so(store, capsys):
    from therapy_rlhf.cli import main
    from therapy_rlhf.feedback.authenticity import authentication_note

    run = make_run(store, roster=False)
    assert "unauthenticated" in authentication_note(run.spec.feedback)
    assert authentication_note(make_run_feedback()) is None
    assert main(["status", "signed", "--store", store.uri, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ratingsAuthenticated"] is False
    assert main(["status", "signed", "--store", store.uri]) == 0
    assert "ratings are unauthenticated" in capsys.readouterr().out


def make_run_feedback():
    from therapy_rlhf.contracts.spec import FeedbackSpec

    return FeedbackSpec.model_validate({"raters": [{"id": "dr-lee", "publicKey": signer("dr-lee").public_key}]})


def test_status_lists_the_first_20_refused_ratings_and_a_count(local_store, capsys):
    from therapy_rlhf.cli import main

    ids = [f"r0001-x{i:02d}" for i in range(23)]
    run = make_run(local_store)
    batch = [PendingResponse(id=i, round=1, prompt_id="p", prompt="p", response=f"answer {i} of round 1") for i in ids]
    local_store.write_bytes(PATHS.batch(1), dump_batch(batch))
    for resp in ids:
        plant(local_store, "mallory", resp, forged("mallory", resp, 1.0, key_of="mallory"))
    assert main(["status", "signed", "--store", local_store.uri]) == 0
    out = capsys.readouterr().out
    assert out.count("refused (unknown-rater)") == 20 and "... and 3 more refused rating(s)" in out
    assert run.spec.feedback.raters


def test_rate_from_a_file_signs_every_rating(local_store, tmp_path, capsys):
    from therapy_rlhf.cli import main

    run = make_run(local_store)
    sheet = tmp_path / "scores.csv"
    sheet.write_text("response_id,empathy,boundaries,safe-language,guidance,overall\n"
                     + "".join(f"{i},2,2,2,2,2\n" for i in IDS))
    assert main(["rate", "signed", "--from", str(sheet), "--rater", "dr-lee", "--store", local_store.uri]) == 0
    state = load_round(local_store, PATHS, 1, feedback=run.spec.feedback)
    assert len(state.ratings) == 2 and state.refused == [] and all(r.signature for r in state.ratings)


def test_validate_warns_when_ratings_are_unauthenticated(capsys):
    from pathlib import Path

    from therapy_rlhf.cli import main

    example = Path(__file__).resolve().parents[2] / "examples" / "tiny-local.yaml"
    assert main(["validate", str(example)]) == 0
    assert "  warning: ratings are unauthenticated" in capsys.readouterr().out
