"""The sft job: a real subprocess run writes the adapter and then metrics; early stopping logic."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tests.support.budget import budget
import torch
from transformers import TrainerControl, TrainerState

from therapy_rlhf.jobs import data, models, sft
from therapy_rlhf.jobs.common import JobContext, JobError
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.contracts.spec import DatasetSpec, load_run


@pytest.mark.slow
def test_sft_job_subprocess_writes_adapter_then_metrics(tmp_path, make_run, tiny_cache):
    manifest = make_run({"sft": {"maxSteps": 6, "evalSteps": 3, "batchSize": 4, "learningRate": 0.01}})
    store = tmp_path / "store"
    env = dict(os.environ, THERAPY_RLHF_CACHE=str(tiny_cache))
    proc = subprocess.run(
        [sys.executable, "-m", "therapy_rlhf.jobs", "sft", "--run-config", str(manifest), "--round", "0", "--store", str(store)],
        capture_output=True,
        text=True,
        env=env,
        timeout=budget(40),
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout[-3000:]
    assert proc.stderr.strip() == ""
    paths = RunPaths("default", "tiny-test")
    adapter = store / paths.sft_adapter()
    metrics_file = store / paths.sft_metrics()
    files = sorted(p.name for p in adapter.iterdir())
    assert "adapter_config.json" in files and "adapter_model.safetensors" in files
    assert all(p.stat().st_mtime <= metrics_file.stat().st_mtime for p in adapter.iterdir())
    metrics = json.loads(metrics_file.read_text())
    assert metrics["steps"] == 6 and metrics["kind"] == "sft" and metrics["device"] == "cpu"
    assert [h["step"] for h in metrics["eval_history"]] == [3, 6]
    assert metrics["eval_loss"] == min(h["eval_loss"] for h in metrics["eval_history"])
    # it learns: validation loss falls below where it started
    assert metrics["eval_history"][-1]["eval_loss"] < metrics["eval_history"][0]["eval_loss"]
    assert metrics["train_loss"] < 7.0 and metrics["stopped_early"] is False
    assert metrics["train_examples"] + metrics["validation_examples"] == len(data.load_dataset_spec(load_run(manifest).spec.sft.dataset, "train"))
    assert metrics["startup_seconds"] > 0 and metrics["work_seconds"] > 0
    # TRL's SFTConfig turns gradient checkpointing on by default; the job keeps it to
    # model.gradientCheckpointing on GPU only (prepare_for_training), so off on this CPU run
    assert metrics["gradient_checkpointing"] is False
    assert "start-up done in" in proc.stdout
    assert "FutureWarning" not in proc.stdout  # library deprecation noise stays out of the job log
    # the stored adapter is trained: it no longer equals the base model
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    from safetensors.torch import load_file

    weights = load_file(adapter / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())


def test_split_is_deterministic_and_never_empty():
    examples = data.load_dataset_spec(DatasetSpec(), "train")
    train, val = sft.split_examples(examples, 0.1, seed=3)
    again = sft.split_examples(examples, 0.1, seed=3)
    assert [e.id for e in train] == [e.id for e in again[0]]
    assert len(train) + len(val) == len(examples) and not {e.id for e in train} & {e.id for e in val}
    assert round(len(examples) * 0.1) <= len(val) < len(examples) // 2
    tr, va = sft.split_examples(examples[:2], 0.01, seed=0)
    assert len(tr) == 1 and len(va) == 1
    with pytest.raises(JobError, match="at least 2 examples"):
        sft.split_examples(examples[:1], 0.1, seed=0)


def test_split_keeps_each_conversation_on_one_side():
    # Examples of one conversation share context: none may be on both sides.
    examples = data.load_dataset_spec(DatasetSpec(), "train")
    assert len({e.conversation for e in examples}) < len(examples)  # the fixture has multi-reply conversations
    for seed in range(5):
        train, val = sft.split_examples(examples, 0.2, seed=seed)
        assert not {e.conversation for e in train} & {e.conversation for e in val}, seed
        assert val and train


def test_split_of_a_single_conversation_falls_back_to_examples():
    examples = [e for e in data.load_dataset_spec(DatasetSpec(), "train")]
    one = [e for e in examples if e.conversation == examples[0].conversation]
    assert len(one) >= 2
    train, val = sft.split_examples(one, 0.5, seed=0)
    assert train and val and len(train) + len(val) == len(one)


def test_early_stopping_keeps_the_best_adapter(make_run, local_store):
    ctx = JobContext(kind="sft", manifest=load_run(make_run()), round=0, store=local_store)
    model, _, _ = models.load_policy(ctx, None, trainable=True)
    callback = sft.make_early_stopping(model, patience=2, ctx=ctx)
    state, control = TrainerState(), TrainerControl()
    state.max_steps = 100
    lora_b = next(p for n, p in model.named_parameters() if "lora_B" in n)
    snapshots = {}
    for step, loss in [(10, 3.0), (20, 2.0), (30, 2.5), (40, 2.6)]:
        with torch.no_grad():
            lora_b.fill_(step / 100)
        snapshots[step] = lora_b.detach().clone()
        state.global_step = step
        assert not control.should_training_stop
        callback.on_evaluate(None, state, control, metrics={"eval_loss": loss})
    assert control.should_training_stop and callback.stopped_early
    assert callback.best_step == 20 and callback.best == 2.0
    callback.restore_best()
    assert torch.equal(lora_b.detach(), snapshots[20])
    ctx.close()


@pytest.mark.slow
def test_trainer_stops_early_when_validation_loss_rises(make_run, local_store):
    """Wired into the real SFTTrainer: a learning rate far too high makes validation loss rise."""
    manifest = make_run({"sft": {"maxSteps": 30, "evalSteps": 1, "earlyStoppingPatience": 2, "learningRate": 0.5, "batchSize": 2}})
    ctx = JobContext(kind="sft", manifest=load_run(manifest), round=0, store=local_store)
    sft.main(ctx)
    ctx.close()
    metrics = local_store.read_json(RunPaths("default", "tiny-test").sft_metrics())
    history = [h["eval_loss"] for h in metrics["eval_history"]]
    assert metrics["stopped_early"] is True and metrics["steps"] < 30
    best = history.index(min(history))
    assert len(history) == best + 3  # two evaluations without improvement, then stop
    assert metrics["eval_loss"] == min(history) and metrics["best_step"] == best + 1
