"""What loading allocates, checked against the memory plan, at the real widths of Mistral-7B and Mixtral-8x7B.

The checkpoints have the real hidden (4096) and intermediate (14336) widths,
heads (32/8) and, for Mixtral, routed experts, but one layer, two experts and a
small vocabulary, so that they load on a CPU in seconds. 4-bit loads go through
bitsandbytes' CPU backend, the same code path as on a GPU: every weight is
quantized as it is loaded. Bytes are counted from the tensors' storages
(parameters, buffers and the quantization states).
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from therapy_rlhf.planning import memory_plan
from therapy_rlhf.jobs import models, tiny
from therapy_rlhf.jobs.common import JobError
from therapy_rlhf.planning.model_shapes import ModelShape
from therapy_rlhf.contracts.spec import ModelSpec

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes (with its CPU backend) is in the test extra")

pytestmark = pytest.mark.slow

REAL_WIDTH = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=1, num_attention_heads=32,
                  num_key_value_heads=8, vocab_size=1024, tie_word_embeddings=False)
MIXTRAL_SHAPE = dict(REAL_WIDTH, num_local_experts=2, num_experts_per_tok=2)


@pytest.fixture(scope="module")
def real_width(tmp_path_factory):
    root = tmp_path_factory.mktemp("real-width")
    return {
        "mixtral": tiny.build_random("mixtral", MIXTRAL_SHAPE, root / "mixtral"),
        "mistral": tiny.build_random("mistral", REAL_WIDTH, root / "mistral"),
    }


def allocated_bytes(model) -> int:
    """Bytes of every distinct storage the model holds, quantization states included."""
    tensors = list(itertools.chain(model.parameters(), model.buffers()))
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:
            tensors += [state.absmax, state.code]
            if state.nested:
                tensors += [state.state2.absmax, state.state2.code, state.offset]
    seen, total = set(), 0
    for t in tensors:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def planned_weights(path, kind: str, quantization: str) -> int:
    shape = ModelShape.from_config(json.loads((path / "config.json").read_text()))
    settings = memory_plan.Settings(kind=kind, dtype_bytes=2, quantization=quantization, gradient_checkpointing=True,
                                    batch=1, max_length=16, lora_r=8, lora_targets=("q_proj",), gpus=1)
    return memory_plan.weight_bytes(shape, settings)


def load(path, arch: str, quantization: str):
    spec = ModelSpec(source=str(path), quantization=quantization, dtype="bfloat16")
    return models.load_model(str(path), spec, "cpu", torch.bfloat16, arch)


def test_quantized_mixtral_has_4bit_experts_and_the_planned_bytes(real_width):
    path = real_width["mixtral"]
    model = load(path, "mixtral", "4bit")
    experts = {n: p for n, p in model.named_parameters() if ".experts." in n}
    assert len(experts) == 2 * 3  # two experts, w1/w2/w3 each, as linear layers
    assert all(isinstance(p, bnb.nn.Params4bit) and p.dtype == torch.uint8 for p in experts.values()), {
        n: (type(p).__name__, p.dtype) for n, p in experts.items()}
    assert isinstance(model.model.layers[0].self_attn.q_proj.weight, bnb.nn.Params4bit)
    left = {n for n, p in model.named_parameters() if p.dtype == torch.bfloat16}
    assert left == {"model.embed_tokens.weight", "lm_head.weight", "model.layers.0.mlp.gate.weight",
                    "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
                    "model.norm.weight"}
    planned = planned_weights(path, "generate", "4bit")
    assert allocated_bytes(model) == pytest.approx(planned, rel=0.002)
    # training: peft upcasts what is not quantized to fp32, never the 4-bit experts
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    assert all(p.dtype == torch.uint8 for n, p in model.named_parameters() if ".experts." in n)
    assert allocated_bytes(model) == pytest.approx(planned_weights(path, "sft", "4bit"), rel=0.002)


def test_the_stock_loader_leaves_fused_experts_in_bf16(real_width):
    """Why mixtral_experts.py exists (bitsandbytes#1849): if this starts failing, transformers quantizes them itself."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(real_width["mixtral"], quantization_config=quant, device_map={"": "cpu"},
                                                 dtype=torch.bfloat16)
    fused = model.model.layers[0].mlp.experts.gate_up_proj
    assert fused.dtype == torch.bfloat16 and fused.dim() == 3


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_mistral_loads_the_planned_bytes(real_width, quantization):
    path = real_width["mistral"]
    model = load(path, "mistral", quantization)
    expect = (bnb.nn.Params4bit, torch.uint8) if quantization == "4bit" else (torch.nn.Parameter, torch.bfloat16)
    w = model.model.layers[0].mlp.down_proj.weight
    assert isinstance(w, expect[0]) and w.dtype == expect[1]
    assert allocated_bytes(model) == pytest.approx(planned_weights(path, "generate", quantization), rel=0.002)


# ------------------------------------------------- expert linears on the tiny Mixtral


def test_expert_linears_compute_what_the_fused_model_computes(tiny_mixtral_dir):
    from transformers import MixtralForCausalLM

    from therapy_rlhf.jobs import mixtral_experts

    mixtral_experts.register()
    fused = MixtralForCausalLM.from_pretrained(tiny_mixtral_dir, dtype=torch.float32)
    split = mixtral_experts.MixtralForCausalLMWithExpertLinears.from_pretrained(tiny_mixtral_dir, dtype=torch.float32)
    assert fused.model.layers[0].mlp.experts.gate_up_proj.dim() == 3  # registering left the stock model alone
    w1 = split.model.layers[0].mlp.experts[1].w1.weight
    half = fused.config.intermediate_size
    assert torch.equal(w1, fused.model.layers[0].mlp.experts.gate_up_proj[1, :half])
    ids = torch.tensor([[1, 50, 60, 70, 80, 90, 100, 7]])
    with torch.no_grad():
        a, b = fused(ids, output_router_logits=True), split(ids, output_router_logits=True)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    assert torch.allclose(a.aux_loss, b.aux_loss)


def test_lora_on_the_experts_of_a_4bit_mixtral_trains(tiny_mixtral_dir, tmp_path):
    spec = ModelSpec(source=str(tiny_mixtral_dir), quantization="4bit",
                     lora={"targetModules": ["q_proj", "v_proj", "w1", "w2", "w3"]})
    model, _ = models.load_base_model(spec, "cpu")
    model = models.prepare_for_training(model, spec, "cpu")
    policy = models.attach_adapter(model, spec, None, trainable=True)
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    ids = torch.tensor([[1, 50, 60, 70, 80, 90]])
    policy(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad for n, p in policy.named_parameters() if p.requires_grad}
    expert_lora = [n for n in grads if ".experts." in n and "lora_A" in n]
    assert len(expert_lora) == 2 * 4 * 3  # 2 layers x 4 experts x w1/w2/w3
    assert all(grads[n] is not None for n in expert_lora)
    assert any(grads[n].abs().sum() > 0 for n in expert_lora)
    base = [p for n, p in policy.named_parameters() if ".experts." in n and "lora" not in n]
    assert base and all(isinstance(p, bnb.nn.Params4bit) and not p.requires_grad for p in base)
    # the stored adapter loads back onto a freshly loaded 4-bit model, experts and all
    out = tmp_path / "adapter"
    policy.save_pretrained(str(out))
    fresh, _ = models.load_base_model(spec, "cpu")
    loaded = models.attach_adapter(fresh, spec, out, trainable=False)
    trained = {n: p for n, p in policy.named_parameters() if "lora_" in n}
    reloaded = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    assert reloaded.keys() == trained.keys() and sum(".experts." in n for n in reloaded) == 2 * 24
    assert all(torch.equal(reloaded[n], trained[n]) for n in trained)
    with torch.no_grad():
        with loaded.disable_adapter():
            base = loaded(input_ids=ids).logits
        assert not torch.allclose(loaded(input_ids=ids).logits, base)  # the expert adapters act


def test_lora_targets_that_are_not_linear_layers_are_refused(tiny_mixtral_dir):
    spec = ModelSpec(source=str(tiny_mixtral_dir), lora={"targetModules": ["q_proj", "gate"]})
    model, _ = models.load_base_model(spec, "cpu")
    with pytest.raises(JobError, match="'gate' is a MixtralTopKRouter, not a linear layer"):
        models.attach_adapter(model, spec, None, trainable=True)
    spec = ModelSpec(source=str(tiny_mixtral_dir), lora={"targetModules": ["w1"]})
    with pytest.raises(JobError, match="fused 3-D parameters unless model.quantization is 4bit or 8bit"):
        models.attach_adapter(model, spec, None, trainable=True)
