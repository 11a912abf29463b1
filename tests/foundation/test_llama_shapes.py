"""The Llama family in the memory plan: published parameter counts, tied embeddings, grouped-query attention."""

from __future__ import annotations

import dataclasses

from therapy_rlhf.planning import memory_plan
from therapy_rlhf.planning.model_shapes import shape_for_source
from therapy_rlhf.contracts.spec import RunSpec


def test_llama_family_shapes_have_the_published_parameter_counts():
    # the model cards' totals: SmolLM2-135M 134,515,008; Llama-3.2-1B 1,235,814,400; Llama-3.1-8B 8,030,261,248
    smol = shape_for_source("bundled:smollm2-135m-instruct")
    assert (smol.model_type, smol.parameters) == ("llama", 134_515_008)
    assert shape_for_source("s3://models/meta-llama/Llama-3.2-1B-Instruct").parameters == 1_235_814_400
    assert shape_for_source("meta-llama/Llama-3.1-8B-Instruct").parameters == 8_030_261_248


def test_tied_embeddings_have_no_separate_head():
    smol = shape_for_source("bundled:smollm2-135m-instruct")
    untied = dataclasses.replace(smol, tie_word_embeddings=False)
    assert smol.other_parameters()["lm_head"] == 0
    assert untied.parameters - smol.parameters == 49152 * 576  # the head an untied model would add
    spec = RunSpec.model_validate({"model": {"source": "bundled:smollm2-135m-instruct"}, "storage": {"localPath": "/s"}})
    s = memory_plan.Settings.from_spec(spec, "ppo")
    assert memory_plan.weight_bytes(untied, s) - memory_plan.weight_bytes(smol, s) == 49152 * 576 * s.dtype_bytes


def test_grouped_query_attention_shrinks_k_v_and_the_kv_cache():
    smol = shape_for_source("bundled:smollm2-135m-instruct")  # 9 query heads share 3 key/value heads
    mha = dataclasses.replace(smol, num_key_value_heads=smol.num_attention_heads)
    k_proj = {lin.name: lin for lin in smol.linears()}["k_proj"]
    assert (k_proj.out_features, k_proj.in_features) == (3 * 64, 576)
    spec = RunSpec.model_validate({"model": {"source": "bundled:smollm2-135m-instruct"}, "storage": {"localPath": "/s"}})
    gqa_plan = memory_plan.plan_job(smol, memory_plan.Settings.from_spec(spec, "generate"))
    mha_plan = memory_plan.plan_job(mha, memory_plan.Settings.from_spec(spec, "generate"))
    assert mha_plan.parts["kv cache"] == 3 * gqa_plan.parts["kv cache"]

