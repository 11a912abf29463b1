"""Tiny models: real Mistral/Mixtral classes, deterministic builds, top-2 expert routing."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from therapy_rlhf.cli import main as cli_main
from therapy_rlhf.jobs import models, tiny
from therapy_rlhf.contracts.spec import PAPER_PROMPT


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("arch, cls", [("mistral", "MistralForCausalLM"), ("mixtral", "MixtralForCausalLM")])
def test_tiny_model_loads_like_any_checkpoint(request, arch, cls):
    path = request.getfixturevalue(f"tiny_{arch}_dir")
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == cls
    assert model.config.model_type == arch
    assert model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tok)
    text = models.format_chat(tok, [{"role": "user", "content": PAPER_PROMPT}])
    assert text == f"<s>[INST] {PAPER_PROMPT} [/INST]"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True).strip() == PAPER_PROMPT
    out = model.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > len(ids)


def test_chat_template_prompt_is_a_prefix_of_the_conversation(tiny_mistral_dir):
    tok = AutoTokenizer.from_pretrained(tiny_mistral_dir)
    msgs = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "I feel low."}]
    prompt = models.format_chat(tok, msgs)
    full = models.format_chat(tok, msgs + [{"role": "assistant", "content": "I'm here."}], add_generation_prompt=False)
    assert prompt == "<s>[INST] Be kind.\n\nI feel low. [/INST]"
    assert full == prompt + " I'm here.</s>"


def test_builds_are_identical(tmp_path, tiny_mistral_dir):
    a = tiny.build_tiny("mistral", tmp_path / "a")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _digest(a / name) == _digest(tiny_mistral_dir / name), name
    assert tiny.tiny_model_dir("mistral", tiny_mistral_dir.parent.parent) == tiny_mistral_dir


def test_mixtral_routes_each_token_to_two_of_four_experts(tiny_mixtral_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_mixtral_dir)
    tok = AutoTokenizer.from_pretrained(tiny_mixtral_dir)
    assert (model.config.num_local_experts, model.config.num_experts_per_tok) == (4, 2)
    routed = []
    moe = model.model.layers[0].mlp
    handle = moe.gate.register_forward_hook(lambda mod, args, out: routed.append(out))
    ids = tok("I have not slept properly for weeks and I feel hopeless about work.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        model(ids)
    handle.remove()
    _, weights, index = routed[0]
    tokens = ids.shape[1]
    assert index.shape == (tokens, 2) and weights.shape == (tokens, 2)
    assert all(len(set(row.tolist())) == 2 for row in index)
    assert torch.allclose(weights.sum(-1), torch.ones(tokens), atol=1e-5)
    assert len(set(index.flatten().tolist())) > 2  # different tokens pick different experts
    # an expert that a token does not route to has no effect on that token
    hidden = torch.randn(1, 1, model.config.hidden_size)
    with torch.no_grad():
        _, _, idx = moe.gate(hidden.view(1, -1))
        before = moe(hidden)
        unused = next(e for e in range(4) if e not in idx[0].tolist())
        used = idx[0, 0].item()
        moe.experts.down_proj[unused].zero_()
        assert torch.allclose(moe(hidden), before)
        moe.experts.down_proj[used].zero_()
        assert not torch.allclose(moe(hidden), before)


def test_tiny_model_command(tmp_path, capsys):
    out = tmp_path / "m"
    assert cli_main(["tiny-model", "--arch", "mixtral", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "mixtral"
    assert (out / "tokenizer.json").is_file() and (out / "model.safetensors").is_file()
    assert cli_main(["tiny-model", "--arch", "mixtral", str(out)]) == 1
    assert "exists and is not empty" in capsys.readouterr().err
