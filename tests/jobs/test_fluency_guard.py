"""The fluency guard on a real (tiny) run: a batch below spec.fluency's threshold pauses the run before
anyone rates it; the measure itself separates English from noise."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from budget import budget

from therapy_rlhf.jobs import fluency
from therapy_rlhf.layout import RunPaths


def test_dictionary_share_separates_english_from_word_salad():
    english = ["I'm so sorry you're feeling this way. It sounds exhausting, and you deserve support."]
    salad = ["Hang claire loria's vies of a vagabid janibus, thrumbled quorpish."]
    assert fluency.dictionary_share(english) > 0.95
    assert fluency.dictionary_share(salad) < 0.6
    assert fluency.dictionary_share(["", "..."]) is None


@pytest.mark.slow
def test_a_gibberish_batch_pauses_the_run_before_rating(tmp_path, tiny_cache, make_run):
    """The tiny random model's answers are byte noise: with a threshold a real model meets, the run pauses."""
    manifest = make_run(
        {
            "sft": {"enabled": False},
            "ppo": {"rounds": 2, "prompts": [{"id": "p", "text": "I can't sleep."}], "samplesPerPrompt": 2},
            "fluency": {"minLogLikelihood": -4.0},
            "evaluation": {"enabled": False},
        },
        name="guarded",
    )
    store = tmp_path / "store"
    proc = subprocess.run(
        [sys.executable, "-m", "therapy_rlhf.cli", "run", str(manifest), "--scoring", "auto", "--store", str(store)],
        capture_output=True, text=True, cwd=tmp_path, timeout=budget(60),
        env=dict(os.environ, THERAPY_RLHF_CACHE=str(tiny_cache)),
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out[-3000:]  # EXIT_SUSPENDED
    assert "FluencyCollapse" in out and "fluency.minLogLikelihood -4" in out
    paths = RunPaths("default", "guarded")
    measured = json.loads((store / paths.fluency(1)).read_text())
    assert measured["mean_log_likelihood"] < -4.0 and measured["responses"] == 2
    assert (store / paths.batch(1)).is_file()
    assert not (store / paths.ratings_prefix(1)).exists() and not (store / paths.gate(1)).exists()
