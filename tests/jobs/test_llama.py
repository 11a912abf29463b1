"""Llama-family models load as a first-class architecture, and every prompt uses the tokenizer's own
chat template after the run's system message (ChatML for Llama/SmolLM2, [INST] for Mistral)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from therapy_rlhf.jobs import models, sft
from therapy_rlhf.planning.model_shapes import KNOWN_SHAPES, ModelShape
from therapy_rlhf.contracts.spec import DEFAULT_SYSTEM_MESSAGE, ModelSpec, PAPER_PROMPT

# SmolLM2-135M-Instruct's own template (as its GGUF carries it): an identity line when no system is given
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
USER = [{"role": "user", "content": PAPER_PROMPT}]


@pytest.fixture(scope="module")
def tiny_llama_dir(tiny_cache):
    from therapy_rlhf.jobs.tiny import tiny_model_dir

    return tiny_model_dir("llama", tiny_cache)


def test_the_tiny_llama_is_the_known_shape_with_tied_embeddings(tiny_llama_dir):
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    built = ModelShape.from_config(config)
    assert built.model_type == "llama" and built.tie_word_embeddings
    known = ModelShape.from_config(dict(KNOWN_SHAPES)["tiny:llama"])
    # the known shape's vocabulary is the trainer's cap; the built one is what the fixture text gave
    assert built.parameters == dataclasses.replace(known, vocab_size=built.vocab_size).parameters


def test_llama_loads_with_lora_on_its_attention(tiny_llama_dir):
    spec = ModelSpec(source="tiny:llama", architecture="llama")
    model, tok = models.load_base_model(spec, "cpu")
    assert model.config.model_type == "llama"
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    policy = models.attach_adapter(model, spec, None, trainable=True)
    assert any("q_proj.lora_A" in n for n, _ in policy.named_parameters())
    assert tok.eos_token == "<|im_end|>"
    with pytest.raises(models.JobError, match="model.architecture is 'mistral' but the model's config says 'llama'"):
        models.load_base_model(ModelSpec(source="tiny:llama", architecture="mistral"), "cpu")


def test_each_tokenizer_renders_its_own_template_after_the_system_message(tiny_llama_dir, tiny_mistral_dir):
    llama, mistral = models.load_tokenizer(str(tiny_llama_dir)), models.load_tokenizer(str(tiny_mistral_dir))
    assert models.format_chat(llama, USER, system="Be kind.") == (
        f"<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\n{PAPER_PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert models.format_chat(mistral, USER, system="Be kind.") == f"<s>[INST] Be kind.\n\n{PAPER_PROMPT} [/INST]"
    # a template's own identity line never reaches a patient conversation: the run's system message replaces it
    llama.chat_template = SMOLLM2_TEMPLATE
    assert "SmolLM" in models.format_chat(llama, USER)  # what the template does on its own
    rendered = models.format_chat(llama, USER, system=DEFAULT_SYSTEM_MESSAGE)
    assert "SmolLM" not in rendered and rendered.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM_MESSAGE}<|im_end|>")


def test_rollouts_sft_and_trimming_carry_the_system_message(tiny_llama_dir):
    from therapy_rlhf.jobs import data, generate
    from therapy_rlhf.contracts.spec import PromptSpec

    spec = ModelSpec(source="tiny:llama", system_message="Listen first.")
    model, tok = models.load_base_model(spec, "cpu")
    rollouts, _ = generate.sample_responses(
        model, tok, [PromptSpec(id="p", text=PAPER_PROMPT)], samples_per_prompt=1, temperature=0.7,
        max_new_tokens=4, batch_size=1, seed=0, round_no=1, device="cpu", max_length=256, system=spec.system_message,
    )
    assert tok.decode(rollouts[0].prompt_ids).startswith("<|im_start|>system\nListen first.<|im_end|>")
    example = data.Example(id="e", context=[{"role": "user", "content": "a " * 200}, {"role": "assistant", "content": "ok"},
                                            {"role": "user", "content": "I can't sleep."}], response="That sounds hard.")
    record = sft.to_records([example], tok, max_length=96, system="Listen first.")[0]
    assert record["prompt"][0] == {"role": "system", "content": "Listen first."}
    assert record["prompt"][-1]["content"] == "I can't sleep." and len(record["prompt"]) == 2  # old turns trimmed
