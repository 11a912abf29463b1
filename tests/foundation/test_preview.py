"""The local runner's preview of a round: one answer per prompt, its reward, the batch's fluency."""

from __future__ import annotations

from therapy_rlhf.execution import preview
from therapy_rlhf.feedback import simrater
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.rounds import load_round
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.contracts.records import PendingResponse, dump_batch
from therapy_rlhf.contracts.spec import RunSpec


def test_round_lines_show_answers_rewards_and_fluency(local_store):
    spec = RunSpec.model_validate({"model": {"source": "tiny:llama"}, "storage": {"localPath": "/s"}})
    paths = RunPaths("default", "demo")
    items = [
        PendingResponse(id=f"r0001-{p}-s0{k}", round=1, prompt_id=p, prompt=f"patient words {p}",
                        response=f"answer {k} to {p} " + "[and more words] " * 20)
        for p in ("a", "b", "c") for k in range(2)
    ]
    local_store.write_bytes(paths.batch(1), dump_batch(items))
    lines = preview.round_lines(local_store, paths, spec, 1)
    assert lines == [
        "  patient: patient words a",
        lines[1],
        "  patient: patient words b",
        lines[3],
    ]  # one answer per prompt, two prompts, no fluency measured yet
    assert lines[1].startswith("  model:   answer 0 to a [and more words]") and lines[1].endswith("[...]  [reward -]")
    assert len(lines[1]) < 140  # shortened; the whole answer stays in the batch

    state = load_round(local_store, paths, 1, feedback=spec.feedback)
    rating = simrater.judge(state.responses[0], spec.feedback)
    submit_rating(local_store, paths, state, rating, spec.feedback)
    local_store.write_json(paths.fluency(1), {"mean_log_likelihood": -1.14, "dictionary_share": 0.99})
    lines = preview.round_lines(local_store, paths, spec, 1)
    assert lines[1].endswith(f"[reward {rating.reward:.2f}]")
    assert lines[-1] == "  fluency: log-likelihood under the base -1.14, dictionary words 0.99"
