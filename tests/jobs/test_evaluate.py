"""The evaluate job: checkpoints and external systems scored, report + plot, results last."""

from __future__ import annotations

import json

import pytest
from tests.support.budget import budget
import torch

from therapy_rlhf.cli import main as cli_main
from therapy_rlhf.jobs import data, evaluate, models
from therapy_rlhf.jobs.common import JobContext, JobError
from therapy_rlhf.jobs.report import results_table
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.contracts.records import Gate, ResponseReward
from therapy_rlhf.contracts.spec import DatasetSpec, load_run

PATHS = RunPaths("default", "tiny-test")
N = 4


# feedback.selection 'all': no model scores, no model check, in a round of the reward curve.
NO_MODEL = {"model_scored": 0, "model_error": None, "model_compared": 0, "model_drifted": False}
# rounds/r/fluency.json (issue 17): not written by these tests
NO_MODEL.update(fluency_log_likelihood=None, dictionary_share=None)
# issue 18: frozen ratings whose stored object changed after the gate (none here)
NO_MODEL.update(changed_after_gate=0)

def _store_adapter(ctx, prefix, marker, bump):
    """A LoRA adapter that differs from the base, stored with its marker."""
    torch.manual_seed(0)
    policy, _, _ = models.load_policy(ctx, None, trainable=True)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, bump)
    out = ctx.scratch("adapter-" + prefix.replace("/", "-"))
    policy.save_pretrained(str(out))
    ctx.store.put_dir(out, prefix)
    ctx.store.write_json(marker, {"done": True})


def _gate(round_no, rewards):
    return Gate(
        round=round_no,
        reason="complete",
        min_raters=1,
        responses_total=len(rewards),
        responses_rewarded=len(rewards),
        rewards={f"r{round_no:04d}-p-{i}": ResponseReward(reward=r, raters=["sim"], ratings=[f"sim/x/v1"]) for i, r in enumerate(rewards)},
        mean_reward=sum(rewards) / len(rewards),
        batch_sha256="0" * 64,
    ).model_dump(mode="json")


@pytest.mark.slow
def test_evaluate_checkpoints_and_external_systems(tmp_path, make_run, local_store, capsys):
    ext = tmp_path / "gpt.jsonl"
    manifest = load_run(
        make_run(
            {
                "ppo": {"rounds": 2},
                "evaluation": {
                    "maxExamples": N,
                    "maxNewTokens": 6,
                    "checkpoints": ["base", "sft", "round-1", "final"],
                    "externalResponses": [{"name": "gpt-3-5", "path": str(ext)}],
                },
            }
        )
    )
    # the evaluated examples: N spread across the fixture's test conversations
    refs = evaluate.select_examples(manifest.spec.evaluation).examples
    assert len(refs) == N and len({e.conversation for e in refs}) == N
    ext.write_text(
        "\n".join(
            [json.dumps({"id": refs[0].id, "response": refs[0].response}), "",
             json.dumps({"context": refs[1].context[-1]["content"], "response": refs[1].response}),
             json.dumps({"id": "not-an-example", "response": "ignored"})]
        )
        + "\n"
    )
    setup = JobContext(kind="setup", manifest=manifest, round=0, store=local_store)
    _store_adapter(setup, PATHS.sft_adapter(), PATHS.sft_metrics(), 0.5)
    _store_adapter(setup, PATHS.policy_prefix(1), PATHS.policy_metrics(1), 1.0)
    _store_adapter(setup, PATHS.policy_prefix(2), PATHS.policy_metrics(2), 2.0)
    setup.close()
    local_store.write_json(PATHS.gate(1), _gate(1, [0.2, 0.4]))
    local_store.write_json(PATHS.gate(2), _gate(2, [0.5, 0.7, 0.9]))

    ctx = JobContext(kind="evaluate", manifest=manifest, round=0, store=local_store)
    evaluate.main(ctx)
    ctx.close()

    root = local_store.root
    results = json.loads((root / PATHS.eval_results()).read_text())
    assert results["examples"] == N and results["example_ids"] == [e.id for e in refs]
    assert results["conversations"] == N and results["split"] == "whole file"
    assert results["bertscore"]["layer"] == 6 and results["bertscore"]["rescaled"] is False
    by_name = {s["name"]: s for s in results["systems"]}
    assert list(by_name) == ["base", "sft", "round-1", "final", "gpt-3-5"]
    assert by_name["final"]["source"] == PATHS.policy_prefix(2)
    gpt = by_name["gpt-3-5"]
    assert gpt["n"] == 2 and gpt["scores"]["f1"] == 1.0 and gpt["scores"]["rouge1"] == 1.0
    assert gpt["scores"]["bertscore"] == pytest.approx(1.0, abs=1e-4)
    for s in results["systems"]:
        assert set(s["scores"]) == {"bertscore", "rouge1", "rougeL", "f1", "bleu2", "distinct1", "distinct2"}
        assert all(0.0 <= v <= 1.0 for v in s["scores"].values())
    answers = {name: [smp["responses"][name] for smp in results["samples"]] for name in ("base", "sft", "final")}
    assert answers["base"] != answers["sft"] != answers["final"]  # each checkpoint really answered
    assert results["reward_curve"] == [
        {"round": 1, "mean": 0.3, "std": 0.1, "min": 0.2, "max": 0.4, "n": 2, **NO_MODEL},
        {"round": 2, "mean": 0.7, "std": pytest.approx(0.163299, abs=1e-6), "min": 0.5, "max": 0.9, "n": 3, **NO_MODEL},
    ]
    assert "The reward model's part" not in (root / PATHS.eval_report()).read_text()  # a run that sends everything
    report = (root / PATHS.eval_report()).read_text()
    assert results_table(results) in report and "| PPO (final) |" in report and "| gpt-3-5 |" in report
    png = (root / PATHS.eval_reward_curve()).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    mtimes = {k: (root / k).stat().st_mtime for k in (PATHS.eval_report(), PATHS.eval_reward_curve(), PATHS.eval_results())}
    assert mtimes[PATHS.eval_results()] >= max(mtimes.values())

    capsys.readouterr()
    from therapy_rlhf.store.runs import freeze_spec

    freeze_spec(local_store, manifest)  # report reads the run's frozen spec (whether evaluation is on)
    assert cli_main(["report", "tiny-test", "--store", str(root)]) == 0
    out = capsys.readouterr().out
    assert "| Model | BERTScore | ROUGE-1 | F1 | ROUGE-L | BLEU-2 | Dist-1 | Dist-2 | n |" in out
    assert f"Reward curve: {root}/{PATHS.eval_reward_curve()}" in out


def test_external_responses_that_match_nothing(tmp_path):
    refs = data.load_dataset_spec(DatasetSpec(), "test")[:3]
    ext = tmp_path / "x.jsonl"
    ext.write_text(json.dumps({"id": "zzz", "response": "hi"}) + "\n")
    with pytest.raises(JobError, match="no line matches an evaluation example"):
        evaluate.read_external(str(ext), refs)
    ext.write_text('{"id": "a", "response": "hi"}\n{"id": \n')
    with pytest.raises(JobError, match="line 2: not valid JSON"):
        evaluate.read_external(str(ext), refs)


def test_report_command_without_results(tmp_path, capsys):
    assert cli_main(["report", "tiny-test", "--store", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run default/tiny-test" in err[0] and "holds no runs at all" in err[0]


def test_report_command_does_not_import_torch(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; from therapy_rlhf.cli import main; "
        f"rc = main(['report', 'x', '--store', {str(tmp_path)!r}]); "
        "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules, sorted(sys.modules); print(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=budget(8))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"


def test_the_evaluate_job_takes_its_bertscore_model_from_s3(tmp_path, make_run, local_store, s3_bucket):
    """evaluation.bertscoreModel: s3://... (both cluster examples) is downloaded into the cache, not read as a path."""
    from therapy_rlhf.jobs import text_metrics
    from therapy_rlhf.store.backends import open_store

    open_store(f"s3://{s3_bucket}").put_dir(text_metrics.bundled_encoder(), "models/minilm")
    manifest = load_run(make_run({"evaluation": {"bertscoreModel": f"s3://{s3_bucket}/models/minilm", "bertscoreLayer": 4}}))
    ctx = JobContext(kind="evaluate", manifest=manifest, round=0, store=local_store, cache_dir=tmp_path / "cache")
    scorer = evaluate.make_scorer(ctx)
    ctx.close()
    assert scorer.settings.layer == 4 and scorer.settings.layer_from == "evaluation.bertscoreLayer"
    assert str(tmp_path / "cache") in scorer.path
    assert scorer.score(["I hear you."], ["I hear you."]) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("example", ["mistral-7b-s3.yaml", "mixtral-8x7b-qlora.yaml"])
def test_cluster_examples_evaluate_on_esconvs_test_split_with_a_resolvable_bertscore(example):
    from pathlib import Path

    from therapy_rlhf.jobs import text_metrics

    spec = load_run(Path(__file__).resolve().parents[2] / "examples" / example).spec
    ev = spec.evaluation
    assert ev.dataset.path and ev.dataset.path.endswith("/ESConv.json") and ev.dataset.split == "test"
    assert spec.sft.dataset.path == ev.dataset.path and spec.sft.dataset.split == "auto"  # train + dev of the same split
    settings = text_metrics.bertscore_settings(ev.bertscore_model, ev.bertscore_model_type, ev.bertscore_layer,
                                               ev.rescale_with_baseline)
    assert (settings.model_type, settings.layer) == ("roberta-large", 17)
