"""The drift rule on planted rating streams (issue 21): a model no better than the mean of the experts' fresh
ratings never decides, one that finds its skill again decides again; and its predictions stay out of a rater's
sight on a local store until the gate closes."""

from __future__ import annotations

import os
import random
import stat

import pytest

from tests.support.selection_rounds import PATHS, manifest, predictions_of, rate_all, sample_round, truth

from therapy_rlhf.contracts import phases
from therapy_rlhf.feedback import predictions as sealed
from therapy_rlhf.feedback.gate import close_gate
from therapy_rlhf.feedback.rounds import load_round
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.contracts.records import Rating
from therapy_rlhf.store import integrity
from therapy_rlhf.store.runs import freeze_spec


def rate_at_random(store, m, round_no: int, seed: int) -> None:
    """A rater whose scores have nothing to do with the text: no model can beat their mean."""
    rng = random.Random(seed)
    fb = m.spec.feedback
    state = load_round(store, PATHS, round_no, feedback=fb)
    for r in state.responses:
        value = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0])
        submit_rating(store, PATHS, state, Rating(response_id=r.id, rater="dr-kim", criteria={"empathy": value}, reward=value), fb)


def test_no_skill_falls_back_and_returning_skill_resumes_selection(local_store):
    m = manifest(budget=16, minRatings=16, unselected="model", holdout=8)
    freeze_spec(local_store, m)
    decisions, checks = [], {}
    for r in range(1, 10):
        chosen = sample_round(local_store, m, r)
        decisions.append(chosen.decision)
        if r <= 4:
            rate_at_random(local_store, m, r, seed=r)  # rounds 1-4: noise
        else:
            rate_all(local_store, m, r)  # from round 5 the experts follow a rule the text shows
        gate = close_gate(local_store, PATHS, r, m.spec.feedback).gate
        checks[r] = gate.reward_model
        if chosen.model_decides:
            assert gate.model_scored  # a model that decides scores the rest
        else:
            assert gate.model_scored == {}  # never on probation, never after a drift
    assert decisions[0] == phases.R_SELECTION_COLD_START
    assert decisions[1] == phases.R_SELECTION_PROBATION  # fitted, never judged: random picks judge it
    # Noise: the gates of rounds 2-4 judge it no better than the mean, so rounds 3-5 fall back.
    assert all(checks[r].judged and checks[r].drifted for r in (2, 3, 4))
    assert decisions[2:5] == [phases.R_REWARD_MODEL_DRIFT] * 3
    # The rule's ratings accumulate; the first gate that finds skill sends the next round back to the model.
    back = next(r for r in range(5, 10) if not checks[r].drifted)
    assert checks[back].judged and checks[back].skill_lower > 0 and back < 9
    assert decisions[back] == phases.R_REWARD_MODEL_RECOVERED  # round back+1 (decisions is 0-based)
    # And every round follows the newest judgement, both ways.
    for r in range(3, 10):
        assert (decisions[r - 1] == phases.R_REWARD_MODEL_DRIFT) == checks[r - 1].drifted, r


def test_a_round_with_too_few_fresh_ratings_leaves_the_judgement_standing(local_store):
    m = manifest(budget=4, minJudged=6, probation=False)
    freeze_spec(local_store, m)
    for r in range(1, 6):
        chosen = sample_round(local_store, m, r)
        rate_all(local_store, m, r, noise=0.5 if r >= 4 else 0.0)
        check = close_gate(local_store, PATHS, r, m.spec.feedback).gate.reward_model
        if check is not None:
            assert check.responses == 4 and not check.judged and not check.drifted
    assert chosen.mode == "active" and chosen.decision == phases.R_SELECTION_SKILLED


def test_predictions_are_out_of_a_raters_sight_on_a_local_store_until_the_gate(local_store, tmp_path):
    m = manifest()
    freeze_spec(local_store, m)
    private = sealed.PrivateFolder(tmp_path / "runner" / "private")
    for r in (1, 2):
        sample_round(local_store, m, r, vault=private)
        rate_all(local_store, m, r)
        close_gate(local_store, PATHS, r, m.spec.feedback, vault=private)
    chosen = sample_round(local_store, m, 3, vault=private)
    assert chosen.predictions_sha256 and chosen.trained_on == 16
    # Everything a rater can read in the shared store folder: no prediction anywhere in it.
    readable = {k: local_store.read_bytes(k) for k in local_store.list(PATHS.root + "/")}
    assert PATHS.predictions(3) not in readable
    stored = local_store.read_json(PATHS.selection(3))
    assert stored["predictions"] == {} and "predicted" not in str(stored)
    secret = private.get(3)
    some_prediction = f'{next(iter(sealed.unseal(private, chosen).predictions.values()))[0]}'.encode()
    assert secret and all(some_prediction not in data for key, data in readable.items() if not key.endswith("batch.jsonl"))
    # ... and the private folder is the runner's alone.
    assert stat.S_IMODE(os.stat(private.folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(private.folder / "predictions-r0003.json").st_mode) == 0o600
    # The gate closes from them, and only then publishes them into the store, for the record.
    rate_all(local_store, m, 3)
    gate = close_gate(local_store, PATHS, 3, m.spec.feedback, vault=private).gate
    assert gate.reward_model is not None and gate.reward_model.responses == 8
    assert local_store.read_bytes(PATHS.predictions(3)) == secret
    assert predictions_of(local_store, 3)


def test_predictions_changed_after_the_selection_are_refused(local_store, tmp_path):
    m = manifest()
    freeze_spec(local_store, m)
    private = sealed.PrivateFolder(tmp_path / "private")
    for r in (1, 2):
        sample_round(local_store, m, r, vault=private)
        rate_all(local_store, m, r)
        close_gate(local_store, PATHS, r, m.spec.feedback, vault=private)
    sample_round(local_store, m, 3, vault=private)
    rate_all(local_store, m, 3)
    doc = private.get(3).replace(b'"predictions"', b'"predictions" ', 1)  # any other bytes
    private.put(3, doc)
    with pytest.raises(integrity.IntegrityError, match="does not match the digest its selection.json records"):
        close_gate(local_store, PATHS, 3, m.spec.feedback, vault=private)
    (private.folder / "predictions-r0003.json").unlink()
    with pytest.raises(integrity.IntegrityError, match="is missing"):
        close_gate(local_store, PATHS, 3, m.spec.feedback, vault=private)


def test_the_truth_rule_is_what_the_planted_streams_assume():
    from tests.support.selection_rounds import responses

    values = {truth(r) for r in responses(1)}
    assert len(values) > 2  # the rule varies, so a skilled model can beat the mean


# -------------------------------------------------------------- budget forms, safety outside it, driftBound


def _selection_spec(**sel):
    from tests.support.manifests import run_manifest

    return run_manifest({"model": {"source": "tiny:mistral"}, "storage": {"localPath": "/x"},
                         "feedback": {"selection": {"mode": "uniform", **sel}}}).spec.feedback.selection


@pytest.mark.parametrize("budget,batch,count", [(8, 32, 8), ("25%", 32, 8), ("25%", 10, 3), ("1%", 10, 1), ("100%", 7, 7), (50, 7, 7)])
def test_budget_is_a_count_or_a_share_of_the_batch(budget, batch, count):
    from therapy_rlhf.contracts.spec import responses_of

    assert responses_of(_selection_spec(budget=budget).budget, batch) == count


@pytest.mark.parametrize("bad", ["25", "0%", "101%", "a quarter", 0, -3, True, 2.5])
def test_a_budget_that_is_neither_is_refused_in_one_line(bad):
    from therapy_rlhf.contracts.spec import SpecError

    with pytest.raises(SpecError) as err:
        _selection_spec(budget=bad)
    text = str(err.value)
    assert "\n" not in text and "spec.feedback.selection.budget" in text
    assert "a count (a whole number from 1, e.g. 8) or a share of the batch ('25%')" in text


def test_a_share_budget_picks_that_share_and_safety_comes_on_top(local_store):
    m = manifest(mode="uniform", budget="25%", safetyCap="10%")
    freeze_spec(local_store, m)
    chosen = sample_round(local_store, m, 1, flagged=5)
    assert chosen.budget == 8 and len(chosen.safety_selected) == 5 and len(chosen.selected) == 5 + 8
    assert chosen.safety_cap == 3 and chosen.safety_cap_exceeded


def test_drift_bound_is_accepted_with_a_warning_naming_its_replacement(tmp_path, capsys):
    import yaml

    from tests.support.manifests import run_doc
    from therapy_rlhf.cli import main

    spec = {"model": {"source": "tiny:mistral"}, "storage": {"localPath": "/x"},
            "feedback": {"selection": {"mode": "active", "driftBound": 0.2}}}
    assert _selection_spec(driftBound=0.2).warnings() == [
        "feedback.selection.driftBound (0.2) is no longer used: the reward model's drift is judged by its skill over "
        "the mean (feedback.selection.driftConfidence)"
    ]
    assert _selection_spec().warnings() == [] and "driftBound" not in str(_selection_spec().to_json_dict())
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(run_doc(spec, "old")))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr()
    assert f"{path}: ok" in out.out and "driftBound (0.2) is no longer used" in out.err
