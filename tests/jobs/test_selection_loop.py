"""feedback.selection through the real jobs: the local runner (verified mode, the warm worker, the fused
ppo-generate job) and the in-process round loop the benchmark uses.

The runner run checks the trust path end to end: the job that samples a batch reads earlier batches and
gates only as the digests the runner recorded, reports selection.json's digest, and the gate is closed from
that verified selection; the simulated rater sees only the responses sent to the experts."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys

import yaml
from tests.support.budget import budget

from therapy_rlhf.jobs import learning
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.execution.workdir import work_dir_for
from therapy_rlhf.store.backends import LocalStore

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPTS = [  # no crisis cue: a flagged response always goes to the experts, which would fill the budget
    {"id": "down-lately", "text": "I've been feeling really down lately.", "category": "depression"},
    {"id": "cannot-sleep", "text": "My thoughts race every night and I can't fall asleep.", "category": "anxiety"},
]


def test_runner_selects_scores_and_checks_through_verified_jobs(tmp_path, tiny_cache):
    doc = yaml.safe_load(open(os.path.join(REPO, "examples", "tiny-local.yaml")))
    spec = doc["spec"]
    spec["sft"] = {"enabled": False}
    spec["evaluation"] = {"enabled": False, "checkpoints": ["base"]}
    spec["ppo"].update(rounds=3, prompts=PROMPTS, generation={**spec["ppo"]["generation"], "maxNewTokens": 8})
    spec["feedback"]["selection"] = {"mode": "active", "budget": 3, "minRatings": 2, "unselected": "model", "probation": False}
    manifest = tmp_path / "run.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    store = tmp_path / "store"
    proc = subprocess.run(
        [sys.executable, "-m", "therapy_rlhf.cli", "run", str(manifest), "--scoring", "auto", "--store", str(store)],
        capture_output=True, text=True, cwd=tmp_path, timeout=budget(90),
        env=dict(os.environ, THERAPY_RLHF_CACHE=str(tiny_cache)),
    )
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-4000:]
    paths = RunPaths("default", "tiny-local")
    selections = [json.loads((store / paths.selection(r)).read_text()) for r in (1, 2, 3)]
    assert [s["mode"] for s in selections] == ["uniform", "active", "active"]
    assert [len(s["selected"]) for s in selections] == [3, 3, 3] and selections[2]["trained_on"] == 6
    for r in (1, 2, 3):
        ratings = list((store / paths.ratings_prefix(r)).rglob("*.json"))
        assert len(ratings) == 3  # the simulated rater scored what the experts were sent, nothing else
        gate = json.loads((store / paths.gate(r)).read_text())
        assert sorted(gate["rewards"]) == sorted(selections[r - 1]["selected"])
        assert len(gate["model_scored"]) == (0 if r == 1 else 5)
        metrics = json.loads((store / paths.policy_metrics(r)).read_text())
        assert metrics["model_scored"] == len(gate["model_scored"])
    assert json.loads((store / paths.gate(3)).read_text())["reward_model"]["responses"] == 3
    assert "model-scored (not seen by the experts)" in proc.stderr + proc.stdout
    # The runner's digest record holds every selection its jobs reported.
    work = work_dir_for(paths, LocalStore(store).uri)
    recorded = json.loads((work / "state.json").read_text())
    assert all(f"rounds/{r:04d}/selection.json" in json.dumps(recorded) for r in (1, 2, 3))
    # The model chose its features by held-out skill from all three sets (the MiniLM ones embedded once per text,
    # in the model cache); its predictions waited in the runner's private folder and reached the store after the gate.
    assert set(selections[2]["feature_skill"]) == {"hashed", "tokens", "embedding"} and selections[2]["feature_set"]
    assert len(list((tiny_cache / "embeddings").rglob("*.npy"))) >= 6
    for r in (2, 3):
        assert selections[r - 1]["predictions"] == {} and selections[r - 1]["predictions_sha256"]
        published = (store / paths.predictions(r)).read_bytes()
        assert published == (work / "private" / f"predictions-r{r:04d}.json").read_bytes()
        assert hashlib.sha256(published).hexdigest() == selections[r - 1]["predictions_sha256"]
    assert stat.S_IMODE((work / "private").stat().st_mode) == 0o700


def test_the_learning_loop_trains_on_expert_and_model_scored_rewards(tmp_path, tiny_cache):
    feedback = {"selection": {"mode": "active", "budget": 32, "minRatings": 16, "unselected": "model", "probation": False}}
    prompts = [{**p, "id": p["id"]} for p in PROMPTS] + [
        {"id": "exams", "text": "My exams are next week and I can't stop panicking.", "category": "anxiety"},
        {"id": "alone", "text": "I moved to a new city and I feel so alone.", "category": "other"},
    ]
    manifest = learning.learning_manifest(tmp_path / "store", feedback=feedback, rounds=2, prompts=prompts)
    results = learning.run_loop(manifest, LocalStore(tmp_path / "store"), 2, cache_dir=tiny_cache)
    assert [r.expert_ratings for r in results] == [32, 32]
    assert [r.model_scored for r in results] == [0, 96]
    assert results[0].model_error is None and results[1].model_error is not None
    metrics = LocalStore(tmp_path / "store").read_json(RunPaths("default", "learning").policy_metrics(2))
    assert metrics["model_scored"] == 96 and metrics["responses"] == 128
