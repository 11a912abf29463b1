"""The memory plan: shapes from configs, per-job estimates, refusals that name the setting, and validate."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from therapy_rlhf.planning import memory_plan
from therapy_rlhf.planning.model_shapes import ModelShape, ShapeError, shape_for_source
from therapy_rlhf.contracts.quantity import GIB, parse_bytes
from therapy_rlhf.contracts.spec import load_run

ROOT = Path(__file__).resolve().parents[2]
MIXTRAL_EXAMPLE = ROOT / "examples" / "mixtral-8x7b-qlora.yaml"
MISTRAL_EXAMPLE = ROOT / "examples" / "mistral-7b-s3.yaml"


def test_known_shapes_have_the_published_parameter_counts():
    # Mistral-7B: 7,241,732,096 parameters; Mixtral-8x7B: 46,702,792,704 (their model cards' totals)
    assert shape_for_source("s3://models/mistralai/Mistral-7B-Instruct-v0.2").parameters == 7_241_732_096
    mixtral = shape_for_source("s3://models/mistralai/Mixtral-8x7B-Instruct-v0.1")
    assert mixtral.parameters == 46_702_792_704
    experts = sum(lin.elements for lin in mixtral.linears() if lin.name in ("w1", "w2", "w3"))
    assert experts == 32 * 8 * 3 * 4096 * 14336  # ~45.1B of the 46.7B are expert weights
    assert shape_for_source("some/llama-3") is None


def test_shape_from_config_names_what_is_wrong():
    good = {"model_type": "mistral", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100}
    shape = ModelShape.from_config(good)
    assert shape.head_dim == 16 and shape.kv_dim == 32 and not shape.is_moe
    with pytest.raises(ShapeError, match="model_type 'gpt2' is not one of mistral, mixtral, llama"):
        ModelShape.from_config({**good, "model_type": "gpt2"})
    with pytest.raises(ShapeError, match="num_local_experts must be a positive integer"):
        ModelShape.from_config({**good, "model_type": "mixtral"})
    with pytest.raises(ShapeError, match=r"hidden_size must be a positive integer \(got '64'\)"):
        ModelShape.from_config({**good, "hidden_size": "64"})


def test_quantities():
    assert parse_bytes("80Gi") == 80 * GIB and parse_bytes("40G") == 40 * 10**9 and parse_bytes("512Mi") == 2**29
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_bytes("80 GB")


def plans(path: Path, **model) -> dict[str, memory_plan.JobPlan]:
    manifest = load_run(path)
    for key, value in model.items():
        setattr(manifest.spec.model, key, value)
    shape = shape_for_source(manifest.spec.model.source)
    cap = parse_bytes(manifest.spec.resources.gpu_memory)
    return {p.kind: p for p in memory_plan.plan_run(manifest.spec, shape, cap)}


def test_the_mixtral_example_fits_its_80gb_gpus():
    got = plans(MIXTRAL_EXAMPLE)
    assert set(got) == {"sft", "generate", "ppo", "evaluate"}
    for plan in got.values():
        assert plan.fits, plan.summary()
        assert 25 * GIB < plan.total < 40 * GIB, plan.summary()  # 4-bit experts: ~23 GiB of weights, not ~87
        assert 22 * GIB < plan.parts["weights"] < 24 * GIB
    assert got["sft"].gpus == 2 and got["generate"].gpus == 1


def test_mixtral_in_bf16_is_refused_naming_the_quantization():
    plan = plans(MIXTRAL_EXAMPLE, quantization="none")["generate"]
    assert not plan.fits and plan.parts["weights"] > 86 * GIB
    line = memory_plan.refusal(plan)
    assert "\n" not in line
    assert line.startswith("memory plan: the generate job needs about 9")
    assert "80.0 GiB (resources.gpuMemory): set model.quantization: 4bit (then 3" in line
    with pytest.raises(memory_plan.MemoryPlanError, match="set model.quantization: 4bit"):
        memory_plan.check(plan)


def test_a_batch_too_large_is_refused_naming_the_batch_setting():
    manifest = load_run(MIXTRAL_EXAMPLE)
    manifest.spec.sft.batch_size = 64
    shape = shape_for_source(manifest.spec.model.source)
    plan = memory_plan.plan_job(shape, memory_plan.Settings.from_spec(manifest.spec, "sft"), 80 * GIB)
    assert not plan.fits
    advice = memory_plan.advice(plan)
    assert advice.startswith("set sft.batchSize to ") and "or lower" in advice
    suggested = int(advice.split(" to ")[1].split()[0])
    settings = memory_plan.Settings.from_spec(manifest.spec, "sft")
    assert memory_plan.plan_job(shape, dataclasses.replace(settings, batch=suggested), 80 * GIB).fits
    assert not memory_plan.plan_job(shape, dataclasses.replace(settings, batch=suggested + 1), 80 * GIB).fits


def test_checkpointing_off_is_refused_naming_gradient_checkpointing():
    got = plans(MIXTRAL_EXAMPLE, gradient_checkpointing=False)
    plan = memory_plan.plan_job(got["sft"].shape, got["sft"].settings, 40 * GIB)
    assert "set model.gradientCheckpointing: true" in memory_plan.refusal(plan)


def test_the_mistral_example_fits_and_more_tokens_cost_more():
    got = plans(MISTRAL_EXAMPLE)
    assert all(p.fits for p in got.values())
    assert 13 * GIB < got["generate"].parts["weights"] < 14 * GIB  # 7.24B in bf16
    longer = plans(MISTRAL_EXAMPLE, max_length=4096)
    assert longer["sft"].parts["activations"] == 4 * got["sft"].parts["activations"]
    assert longer["generate"].parts["kv cache"] == 4 * got["generate"].parts["kv cache"]


def validate(*args):
    return subprocess.run([sys.executable, "-m", "therapy_rlhf.cli", "validate", *map(str, args)],
                          capture_output=True, text=True)


def test_validate_prints_the_plan_for_gpu_runs():
    proc = validate(MIXTRAL_EXAMPLE, ROOT / "examples" / "tiny-local.yaml")
    assert proc.returncode == 0, proc.stderr
    # (each example also gets a line saying its ratings are unauthenticated: they register no rater keys)
    lines = [line for line in proc.stdout.splitlines() if not line.startswith("  warning: ratings are unauthenticated")]
    assert lines[0] == f"{MIXTRAL_EXAMPLE}: ok"
    assert "mixtral 46.70B parameters" in lines[1] and "4bit weights" in lines[1]
    for kind, line in zip(("sft", "generate", "ppo", "evaluate"), lines[2:6]):
        assert line.startswith(f"    {kind}: ") and "GiB per GPU of 80.0 (fits)" in line
    assert lines[6] == f"{ROOT / 'examples' / 'tiny-local.yaml'}: ok"  # a CPU run has no plan


def test_validate_refuses_a_plan_that_cannot_fit(tmp_path):
    proc = validate(MIXTRAL_EXAMPLE, "--gpu-memory", "24Gi")
    assert proc.returncode == 1
    errors = proc.stderr.splitlines()
    assert len(errors) == 4 and all(e.startswith(f"{MIXTRAL_EXAMPLE}: memory plan: the ") for e in errors)
    assert "(--gpu-memory): use GPUs with more memory" in errors[0]
    assert f"{MIXTRAL_EXAMPLE}: ok" not in proc.stdout and "DOES NOT FIT" in proc.stdout


def test_validate_reads_a_model_config(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336,
                                  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                                  "vocab_size": 32000, "num_local_experts": 16, "num_experts_per_tok": 2}))
    proc = validate(MIXTRAL_EXAMPLE, "--model-config", config)
    assert proc.returncode == 0, proc.stderr
    assert f"16 experts, top-2, vocab 32000; from {config})" in proc.stdout  # the file, not the table
    # twice the experts: ~47 GiB of 4-bit weights, which a 40 GiB GPU cannot hold at any batch
    proc = validate(MIXTRAL_EXAMPLE, "--model-config", config, "--gpu-memory", "40Gi")
    assert proc.returncode == 1 and "use GPUs with more memory" in proc.stderr
