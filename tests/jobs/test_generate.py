"""The generate job on the tiny Mistral: the batch it writes, seeding, policies, refusals."""

from __future__ import annotations

import hashlib
import pytest
import yaml

from therapy_rlhf.contracts import names
from therapy_rlhf.jobs import generate, models
from therapy_rlhf.jobs.__main__ import run as job_main
from therapy_rlhf.jobs.common import JobContext, JobError
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.contracts.records import GenerationSettings, parse_batch
from therapy_rlhf.contracts.spec import parse_run
from therapy_rlhf.store.backends import LocalStore
from tests.support.manifests import run_manifest

PROMPTS = [
    {"id": "paper-depressed-hopeless", "text": "I'm feeling depressed and hopeless. Can you help me?", "category": "depression"},
    {"id": "crisis-end-it", "text": "I want to end my life tonight.", "category": "crisis"},
    {"id": "exam-nerves", "text": "My exams are next week and I keep panicking.", "category": "anxiety"},
]


def manifest(store_dir, name="gen-test", sft=False, **ppo):
    ppo_spec = {
        "rounds": 3,
        "prompts": PROMPTS,
        "samplesPerPrompt": 2,
        "generation": {"maxNewTokens": 10, "batchSize": 2, "seed": 5},
        **ppo,
    }
    return run_manifest({
                "model": {"source": "tiny:mistral", "maxLength": 128},
                "storage": {"localPath": str(store_dir)},
                "sft": {"enabled": sft},
                "ppo": ppo_spec,
                "evaluation": {"enabled": False, "checkpoints": ["base"]},
            }, name, "default")


def run_generate(m, store, round_no=1):
    ctx = JobContext(kind="generate", manifest=m, round=round_no, store=store)
    try:
        generate.main(ctx)
    finally:
        ctx.close()
    responses, errors = parse_batch(store.read_text(RunPaths("default", m.name).batch(round_no)))
    assert errors == []
    return responses


def test_batch_records(store, tmp_path):
    m = manifest(tmp_path / "unused")
    responses = run_generate(m, store)
    assert [r.id for r in responses] == [
        f"r0001-{p['id']}-s{k:02d}" for p in PROMPTS for k in range(2)
    ]
    _, tokenizer = models.load_base_model(m.spec.model, "cpu")
    for r in responses:
        assert r.round == 1 and r.policy == generate.BASE_POLICY
        assert r.generation.seed == 5 + 1 and r.generation.max_new_tokens == 10
        assert 1 <= len(r.response_token_ids) <= 10
        # the kept ids are exactly what was rendered (after the run's system message) and sampled
        rendered = models.format_chat(tokenizer, [{"role": "user", "content": r.prompt}], system=m.spec.model.system_message)
        assert r.prompt_token_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
        eos_ids = {tokenizer.eos_token_id}
        assert (r.response, r.special_tokens) == generate.visible_text(
            tokenizer, r.response_token_ids, eos_ids, generate.special_token_ids(tokenizer)
        )
        assert tokenizer.pad_token_id not in r.response_token_ids[:-1]  # a sampled pad ends the response
        eos = [i for i, t in enumerate(r.response_token_ids) if t == tokenizer.eos_token_id]
        assert eos in ([], [len(r.response_token_ids) - 1])  # at most one EOS, and last
    by_prompt = {r.prompt_id: r for r in responses}
    # the safety screen ran on every record
    assert by_prompt["crisis-end-it"].safety.crisis_cues == ["suicidal ideation: 'end my life'"]
    assert by_prompt["crisis-end-it"].safety.missing_crisis_resources is True
    assert by_prompt["paper-depressed-hopeless"].safety.missing_crisis_resources is False
    assert by_prompt["exam-nerves"].safety.crisis_cues == []


def test_seeded_retry_reproduces_and_rounds_differ(tmp_path):
    m = manifest(tmp_path)
    first = run_generate(m, LocalStore(tmp_path / "a"))
    again = run_generate(m, LocalStore(tmp_path / "b"))
    assert [r.response_token_ids for r in first] == [r.response_token_ids for r in again]
    reseeded = manifest(tmp_path, generation={"maxNewTokens": 10, "batchSize": 2, "seed": 6})
    different = run_generate(reseeded, LocalStore(tmp_path / "d"))
    assert [r.response_token_ids for r in first] != [r.response_token_ids for r in different]
    # samples of one prompt differ from each other
    assert first[0].response_token_ids != first[1].response_token_ids


def test_batch_size_keeps_ids_and_prompt_tokens(tmp_path):
    # Each generate() call is seeded by its index, so batching is part of the
    # recipe: the same settings give the same batch, a different batch size
    # is allowed to differ but must keep ids, prompts and token bookkeeping.
    one = run_generate(manifest(tmp_path, generation={"maxNewTokens": 10, "batchSize": 1, "seed": 5}), LocalStore(tmp_path / "a"))
    three = run_generate(manifest(tmp_path, generation={"maxNewTokens": 10, "batchSize": 3, "seed": 5}), LocalStore(tmp_path / "b"))
    assert [r.id for r in one] == [r.id for r in three]
    assert [r.prompt_token_ids for r in one] == [r.prompt_token_ids for r in three]


def test_existing_batch_is_never_replaced(local_store, tmp_path):
    m = manifest(tmp_path)
    key = RunPaths("default", m.name).batch(1)
    local_store.write_bytes(key, b"precious\n")
    ctx = JobContext(kind="generate", manifest=m, round=1, store=local_store)
    generate.main(ctx)
    assert local_store.read_bytes(key) == b"precious\n"


def test_round_two_samples_from_round_ones_adapter_and_says_so(local_store, tmp_path):
    import torch
    from peft import get_peft_model

    def store_round_one_policy(store, run_name, scale):
        base, _ = models.load_base_model(m.spec.model, "cpu")
        peft_model = get_peft_model(base, models.lora_config(m.spec.model.lora))
        torch.manual_seed(0)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 1.0).mul_(scale)  # scale 0: a fresh, no-op adapter
        out = tmp_path / f"adapter-{run_name}"
        peft_model.save_pretrained(str(out))
        paths = RunPaths("default", run_name)
        store.put_dir(out, paths.policy_prefix(1))
        store.write_json(paths.policy_metrics(1), {"kl_coef_next": 0.2})
        return paths

    m = manifest(tmp_path)
    paths = store_round_one_policy(local_store, m.name, 0.5)
    round2 = run_generate(m, local_store, round_no=2)
    assert {r.policy for r in round2} == {paths.policy_prefix(1)}
    assert all(r.id.startswith("r0002-") for r in round2)
    assert round2[0].generation.seed == 5 + 2
    # Same seed and prompts from a no-op adapter (= the base model): a
    # different text means the stored adapter was really used.
    noop_store = LocalStore(tmp_path / "noop-store")
    m_noop = manifest(tmp_path, name="gen-noop")
    store_round_one_policy(noop_store, m_noop.name, 0.0)
    noop = run_generate(m_noop, noop_store, round_no=2)
    assert [r.response_token_ids for r in round2] != [r.response_token_ids for r in noop]


def test_round_one_after_sft_needs_the_sft_adapter(local_store, tmp_path):
    m = manifest(tmp_path, sft=True)
    ctx = JobContext(kind="generate", manifest=m, round=1, store=local_store)
    with pytest.raises(JobError, match=r"adapter missing from the store: nothing under .*/sft/adapter"):
        generate.main(ctx)
    assert local_store.list("") == []


def test_cli_missing_checkpoint_is_one_line_and_writes_nothing(tmp_path, capsys):
    m = manifest(tmp_path / "store")
    doc = m.model_dump(mode="json", by_alias=True, exclude_none=True)
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump(doc))
    rc = job_main(["generate", "--run-config", str(run_file), "--round", "3", "--store", str(tmp_path / "store")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("error: adapter missing from the store"), err
    assert "rounds/0002/policy" in err[0]
    assert not (tmp_path / "store").exists() or not any(p.is_file() for p in (tmp_path / "store").rglob("*"))


def test_prompt_too_long_for_the_model(local_store, tmp_path):
    m = manifest(tmp_path, prompts=[{"id": "long", "text": "word " * 200}])
    ctx = JobContext(kind="generate", manifest=m, round=1, store=local_store)
    with pytest.raises(JobError, match="prompt 'long' is .* tokens: with maxNewTokens 10 it exceeds model.maxLength 128"):
        generate.main(ctx)
    assert local_store.list("") == []


# ------------------------------------------------------------- pure parts


def test_response_ids_stay_valid_and_unique_for_long_prompt_ids():
    long_a = "a" * 70 + "-one"
    long_b = "a" * 70 + "-two"
    ida, idb = generate.response_id(1, long_a, 3), generate.response_id(1, long_b, 3)
    assert ida != idb
    for rid in (ida, idb):
        assert len(rid) <= 80 and names.item_id(rid) == rid
        assert rid.startswith("r0001-aaaa") and rid.endswith("-s03")
    digest = hashlib.sha256(long_a.encode()).hexdigest()[:8]
    assert digest in ida
    assert generate.response_id(12, "short", 0) == "r0012-short-s00"


def test_trim_keeps_the_first_eos_and_drops_padding():
    assert generate._trim([5, 6, 2, 3, 3], {2}, 3) == [5, 6, 2]
    assert generate._trim([5, 6, 7], {2}, 3) == [5, 6, 7]
    # a pad before any EOS was sampled: kept as the last token (never an empty response)
    assert generate._trim([3, 6, 2, 3], {2}, 3) == [3]
    assert generate._trim([5, 3, 6, 2], {2}, 3) == [5, 3]
    # pad == eos (Mistral's real tokenizer): the first one is the stop
    assert generate._trim([5, 2, 2, 2], {2}, 2) == [5, 2]


def test_batch_seed_depends_on_seed_round_and_batch():
    seeds = {generate.batch_seed(s, r, b) for s in (0, 1) for r in (1, 2, 3) for b in (0, 1)}
    assert len(seeds) == 8  # seed+round takes 4 values here, times 2 batches
    assert generate.batch_seed(0, 2, 0) == generate.batch_seed(1, 1, 0)


# ------------------------------------------------- sampler settings and tokens


def test_every_sampling_parameter_is_explicit_and_recorded(tmp_path, tiny_mistral_dir):
    """A model whose generation_config.json asks for top-k, nucleus and a repetition penalty is still
    sampled untruncated, and the batch records the whole config it ran with."""
    import json
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_mistral_dir, model_dir)
    config = json.loads((model_dir / "generation_config.json").read_text())
    config.update(top_k=20, top_p=0.8, repetition_penalty=1.3, do_sample=False)
    (model_dir / "generation_config.json").write_text(json.dumps(config))
    doc = manifest(tmp_path).model_dump(mode="json", by_alias=True, exclude_none=True)
    doc["spec"]["model"]["source"] = str(model_dir)
    doc["spec"]["ppo"]["generation"]["temperature"] = 0.7
    m = parse_run(doc)
    responses = run_generate(m, LocalStore(tmp_path / "store"))
    g = responses[0].generation
    assert (g.temperature, g.top_k, g.top_p, g.do_sample) == (0.7, 0, 1.0, True)
    assert g.logits_processors == ["TemperatureLogitsWarper"]
    assert g.config["top_k"] == 0 and g.config["top_p"] == 1.0 and g.config["repetition_penalty"] == 1.0
    assert g.config["max_new_tokens"] == 10 and g.config["do_sample"] is True
    assert all(r.generation == g for r in responses)


def test_special_tokens_stay_visible_and_are_flagged():
    from therapy_rlhf.contracts.spec import ModelSpec, PromptSpec

    _, tok = models.load_base_model(ModelSpec(source="tiny:mistral"), "cpu")
    inst, eos = tok.convert_tokens_to_ids("[INST]"), tok.eos_token_id
    words = tok("I hear you", add_special_tokens=False)["input_ids"]
    ids = words + [inst] + words + [eos]
    text, found = generate.visible_text(tok, ids, {eos}, generate.special_token_ids(tok))
    assert "[INST]" in text and not text.endswith("</s>") and found == ["[INST]"]
    assert tok.decode(ids, skip_special_tokens=True).count("[INST]") == 0  # what the rater saw before
    rollout = generate.Rollout(PromptSpec(id="p", text="hi"), 0, [1, 2], ids, text, found)
    settings = GenerationSettings(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=8, seed=0)
    (record,) = generate.build_records([rollout], 1, "base", settings)
    assert record.special_tokens == ["[INST]"] and "[INST]" in record.response
    assert parse_batch(record.to_json_line())[0][0].special_tokens == ["[INST]"]


def test_a_batch_written_before_the_full_settings_still_parses():
    old = (
        '{"created_at": "2026-11-25T10:00:00Z", "generation": {"max_new_tokens": 8, "seed": 1, "temperature": 0.7, '
        '"top_p": 0.9}, "id": "r0001-p-s00", "policy": "base", "prompt": "hi", "prompt_id": "p", '
        '"prompt_token_ids": [1], "response": "ok", "response_token_ids": [5], "round": 1}'
    )
    (record,), errors = parse_batch(old)
    assert errors == [] and record.generation.top_k is None and record.special_tokens == []
    from therapy_rlhf.jobs import sampling

    temperature, warnings = sampling.update_temperature([record])
    assert temperature == 0.7 and "default top_k=50" in warnings[0]
