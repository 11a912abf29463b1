"""Model sources, precision, quantization guards, architecture checks and policy loading."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from therapy_rlhf.jobs import models
from therapy_rlhf.jobs.common import JobContext, JobError
from therapy_rlhf.contracts.spec import ModelSpec, load_run


def test_local_and_tiny_sources(tiny_mistral_dir, tiny_cache):
    assert models.resolve_source(str(tiny_mistral_dir)) == str(tiny_mistral_dir)
    assert models.resolve_source("tiny:mistral", tiny_cache) == str(tiny_mistral_dir)
    with pytest.raises(JobError, match="unknown tiny model 'tiny:gpt2': use one of tiny:mistral, tiny:mixtral, tiny:llama"):
        models.resolve_source("tiny:gpt2", tiny_cache)
    with pytest.raises(JobError, match="is not a directory"):
        models.resolve_source("/nonexistent/model")


def test_hub_id_only_when_online(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(JobError, match="hub is offline"):
        models.resolve_source("mistralai/Mistral-7B-Instruct-v0.2")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "THERAPY_RLHF_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    assert models.resolve_source("mistralai/Mistral-7B-Instruct-v0.2") == "mistralai/Mistral-7B-Instruct-v0.2"


def test_s3_source_is_downloaded_once(tiny_mistral_dir, s3_store, tmp_path):
    s3_store.put_dir(tiny_mistral_dir, "models/tiny")
    uri = f"s3://{s3_store.bucket}/{s3_store.prefix}/models/tiny"
    cache = tmp_path / "cache"
    local = models.resolve_source(uri, cache)
    assert (cache / "s3").is_dir() and local.startswith(str(cache))
    got = json.loads(open(f"{local}/config.json").read())
    assert got == json.loads((tiny_mistral_dir / "config.json").read_text())
    # the cached copy is used from now on, even if the bucket changes
    s3_store.write_bytes("models/tiny/config.json", b"{}")
    assert models.resolve_source(uri, cache) == local
    assert json.loads(open(f"{local}/config.json").read())["model_type"] == "mistral"
    with pytest.raises(JobError, match="nothing stored under that prefix"):
        models.resolve_source(f"s3://{s3_store.bucket}/nothing/here", cache)


def test_jobs_sharing_a_cache_download_side_by_side(tiny_mistral_dir, s3_store, tmp_path):
    """A cache on a shared claim: concurrent downloads each land whole, one copy stays."""
    from concurrent.futures import ThreadPoolExecutor

    s3_store.put_dir(tiny_mistral_dir, "models/tiny")
    uri = f"s3://{s3_store.bucket}/{s3_store.prefix}/models/tiny"
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(4) as pool:
        dirs = list(pool.map(lambda _: models.resolve_source(uri, cache), range(4)))
    assert len(set(dirs)) == 1
    assert [p.name for p in (cache / "s3").iterdir()] == [Path(dirs[0]).name]  # no .part-* left behind
    files = {p.name for p in Path(dirs[0]).iterdir()}
    assert {"config.json", models.COMPLETE_MARKER} <= files


def test_a_download_that_died_is_redone(tiny_mistral_dir, s3_store, tmp_path):
    s3_store.put_dir(tiny_mistral_dir, "models/tiny")
    uri = f"s3://{s3_store.bucket}/{s3_store.prefix}/models/tiny"
    cache = tmp_path / "cache"
    local = Path(models.resolve_source(uri, cache))
    (local / models.COMPLETE_MARKER).unlink()
    (local / "config.json").write_text("{trunc")  # as a download cut short would leave it
    assert models.resolve_source(uri, cache) == str(local)
    assert json.loads((local / "config.json").read_text())["model_type"] == "mistral"


def test_dtype_choice():
    assert models.choose_dtype("bfloat16", "cpu") == torch.float32
    assert models.choose_dtype("auto", "cpu") == torch.float32
    assert models.mixed_precision(torch.float32, "cpu") == {"bf16": False, "fp16": False}
    assert models.mixed_precision(torch.bfloat16, "cuda") == {"bf16": True, "fp16": False}


def test_quantization_guards(monkeypatch):
    assert models.quantization_config("none", "cpu", torch.float32) is None
    with pytest.raises(JobError, match="model.quantization=4bit needs a CUDA GPU"):
        models.quantization_config("4bit", "mps", torch.float32)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    with pytest.raises(JobError, match="needs the bitsandbytes package"):
        models.quantization_config("8bit", "cuda", torch.bfloat16)


def test_weights_go_straight_to_the_device_in_the_target_dtype():
    spec = ModelSpec(source="tiny:mistral")
    assert models.from_pretrained_kwargs(spec, "cuda:1", torch.bfloat16) == {
        "dtype": torch.bfloat16, "revision": None, "device_map": {"": "cuda:1"}}
    assert models.from_pretrained_kwargs(spec, "cpu", torch.float32) == {"dtype": torch.float32, "revision": None}


def test_fsdp_is_refused(monkeypatch, tiny_mistral_dir):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(JobError, match=r"FSDP \(ACCELERATE_USE_FSDP\) is not supported"):
        models.load_base_model(ModelSpec(source=str(tiny_mistral_dir)), "cpu")


def test_unsupported_architecture(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_embd=32, n_layer=1, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(JobError, match="unsupported architecture 'gpt2': supported are mistral, mixtral, llama"):
        models.load_base_model(ModelSpec(source=str(tmp_path)), "cpu")


def test_architecture_hint_must_match(tiny_mistral_dir):
    with pytest.raises(JobError, match="model.architecture is 'mixtral' but the model's config says 'mistral'"):
        models.load_base_model(ModelSpec(source=str(tiny_mistral_dir), architecture="mixtral"), "cpu")


def test_format_chat_without_template():
    class NoTemplate:
        chat_template = None

    text = models.format_chat(NoTemplate(), [{"role": "user", "content": "Hi"}])
    assert text == "Patient: Hi\nTherapist:"


def test_trim_context_keeps_the_latest_seeker_turn(tiny_mistral_dir):
    tok = models.load_tokenizer(str(tiny_mistral_dir))
    msgs = []
    for i in range(6):
        msgs += [{"role": "user", "content": f"turn {i} " + "word " * 20}, {"role": "assistant", "content": "ok " * 20}]
    msgs.append({"role": "user", "content": "last words"})
    trimmed = models.trim_context(tok, msgs, 60)
    assert trimmed[-1]["content"] == "last words" and trimmed[0]["role"] == "user"
    assert len(trimmed) < len(msgs)
    assert len(tok(models.format_chat(tok, trimmed), add_special_tokens=False)["input_ids"]) <= 60
    assert models.trim_context(tok, msgs, 10_000) == msgs


def _ctx(make_run, store, **spec):
    return JobContext(kind="generate", manifest=load_run(make_run(spec)), round=1, store=store)


def test_policy_fresh_adapter_equals_base_and_stored_adapter_is_used(make_run, local_store):
    ctx = _ctx(make_run, local_store)
    ids = torch.tensor([[1, 50, 60, 70, 80]])
    policy, tok, adapter_dir = models.load_policy(ctx, None, trainable=True)
    assert adapter_dir is None
    counts = models.count_parameters(policy)
    assert 0 < counts["trainable_parameters"] < counts["parameters"]
    with torch.no_grad():
        with policy.disable_adapter():
            base_logits = policy(ids).logits
        assert torch.allclose(policy(ids).logits, base_logits)  # LoRA B starts at zero
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
        changed = policy(ids).logits
    out = ctx.scratch("saved")
    policy.save_pretrained(str(out))
    (out / "value_head.pt").write_bytes(b"extra file next to the adapter")
    ctx.store.put_dir(out, "default/tiny-test/rounds/0001/policy")
    ctx.close()

    ctx2 = _ctx(make_run, local_store)
    loaded, _, adapter_dir = models.load_policy(ctx2, "default/tiny-test/rounds/0001/policy")
    assert (adapter_dir / "value_head.pt").read_bytes() == b"extra file next to the adapter"
    assert not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, changed, atol=1e-5)
    ctx2.close()
    assert not adapter_dir.exists()  # scratch space is cleaned up


def test_policy_missing_adapter_names_the_prefix(make_run, local_store):
    ctx = _ctx(make_run, local_store)
    with pytest.raises(JobError, match=r"adapter missing from the store: nothing under .*default/tiny-test/sft/adapter"):
        models.load_policy(ctx, "default/tiny-test/sft/adapter")


def test_lora_targets_must_exist(make_run, local_store):
    ctx = _ctx(make_run, local_store, model={"lora": {"targetModules": ["query_key_value"]}})
    with pytest.raises(JobError, match="no module named 'query_key_value'"):
        models.load_policy(ctx, None)
