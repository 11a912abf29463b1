"""Tiny random-weight Mistral / Mixtral / Llama models for tests and the smoke run.

``build_tiny(arch, out_dir)`` writes a model directory that transformers
loads like any checkpoint: the real ``MistralForCausalLM`` /
``MixtralForCausalLM`` classes with a few small layers (Mixtral keeps real
top-2-of-4 expert routing), a byte-level BPE tokenizer trained with the
``tokenizers`` library on ESConv-format text, and a Mistral-style chat template
(Llama: ChatML, ``<|im_end|>`` as its end of turn, and tied embeddings, as
SmolLM2 has them).

Every job of a run must see the SAME tiny model, so everything is
deterministic: the tokenizer is trained on the fixture text shipped inside
this package (never on data that may or may not exist on a machine), weights
come from a fixed seed, and ``tiny_model_dir`` caches the result under a hash
of the whole recipe.

    therapy-rlhf tiny-model --arch mixtral /tmp/tiny-mixtral
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from therapy_rlhf.planning.model_shapes import TINY_COMMON, TINY_LLAMA_EXTRA, TINY_MIXTRAL_EXTRA, TINY_VOCAB_SIZE

ARCHITECTURES = ("mistral", "mixtral", "llama")
# Bump when the recipe changes in a way the hash below would not see.
RECIPE_VERSION = 1
SEED = 1234
VOCAB_SIZE = TINY_VOCAB_SIZE
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]"]

# Mistral-style: [INST] user [/INST] assistant</s>. A system message is folded
# into the first user turn, as Mistral's own template does. The rendering of a
# conversation without its last assistant turn is a prefix of the full one,
# which TRL's prompt/completion SFT relies on.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\n\n' %}"
    "{% elif message['role'] == 'user' %}[INST] {{ ns.system }}{{ message['content'] }} [/INST]"
    "{% set ns.system = '' %}"
    "{% elif message['role'] == 'assistant' %} {{ message['content'] }}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)

# ChatML, as SmolLM2 and many Llama-family instruct models use it, with no default system line.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]

# The shapes live with the memory plan's table of known shapes (one copy).
COMMON = TINY_COMMON
MIXTRAL_EXTRA = TINY_MIXTRAL_EXTRA


def corpus_texts() -> list[str]:
    """Text the tokenizer is trained on: the packaged ESConv-format fixtures and prompt suite."""
    from therapy_rlhf.jobs import data, prompts

    texts: list[str] = []
    for conv in data.load_fixture_conversations():
        texts.extend(turn.content for turn in conv.turns)
        texts.append(conv.situation)
    texts.extend(p.text for p in prompts.builtin_suite())
    return [t for t in texts if t]


def _recipe(arch: str) -> dict:
    import tokenizers
    import torch
    import transformers

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown tiny architecture {arch!r}: use one of {', '.join(ARCHITECTURES)}")
    return {
        "arch": arch,
        "config": {**COMMON, **{"mixtral": MIXTRAL_EXTRA, "llama": TINY_LLAMA_EXTRA}.get(arch, {})},
        "vocab_size": VOCAB_SIZE,
        "special": special_tokens(arch),
        "template": template(arch),
        "seed": SEED,
        "recipe": RECIPE_VERSION,
        "corpus": hashlib.sha256("\n".join(corpus_texts()).encode()).hexdigest(),
        # weight initialisation may change between releases
        "versions": [torch.__version__, transformers.__version__, tokenizers.__version__],
    }


def recipe_hash(arch: str) -> str:
    return hashlib.sha256(json.dumps(_recipe(arch), sort_keys=True).encode()).hexdigest()[:16]


def special_tokens(arch: str) -> list[str]:
    return SPECIAL_TOKENS + (CHATML_TOKENS if arch == "llama" else [])


def template(arch: str) -> str:
    return CHATML_TEMPLATE if arch == "llama" else CHAT_TEMPLATE


def train_tokenizer(arch: str = "mistral"):
    """A byte-level BPE tokenizer (never an unknown byte) with the architecture's chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=special_tokens(arch),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_texts(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|im_end|>" if arch == "llama" else "</s>",
        pad_token="<pad>",
        additional_special_tokens=[t for t in special_tokens(arch)[4:] if t != "<|im_end|>"],
        model_max_length=COMMON["max_position_embeddings"],
        padding_side="left",
    )
    fast.chat_template = template(arch)
    return fast


def build_tiny(arch: str, out_dir: str | Path) -> Path:
    """Write a tiny ``arch`` model + tokenizer to out_dir (which must not exist or be empty)."""
    import torch
    from transformers.utils import logging as hf_logging
    from transformers import GenerationConfig

    hf_logging.disable_progress_bar()
    recipe = _recipe(arch)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty")
    tokenizer = train_tokenizer(arch)
    ids = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config_cls, model_cls = model_classes(arch)
    config = config_cls(**recipe["config"], **ids)
    # The fixed seed must not leak: a job that builds the model on first use would otherwise draw
    # its own random numbers (a fresh LoRA) from this stream, and a job that finds it cached would not.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = model_cls(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"]
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "tiny_recipe.json").write_text(json.dumps(recipe, indent=2, sort_keys=True) + "\n")
    return out_dir


def model_classes(arch: str) -> tuple[type, type]:
    """(config class, model class) of an architecture."""
    import transformers

    name = {"mistral": "Mistral", "mixtral": "Mixtral", "llama": "Llama"}[arch]
    return getattr(transformers, f"{name}Config"), getattr(transformers, f"{name}ForCausalLM")


def tiny_model_dir(arch: str, cache_root: str | Path) -> Path:
    """The cached tiny model for ``arch``, built once per recipe (safe under concurrency)."""
    final = Path(cache_root) / "tiny" / f"{arch}-{recipe_hash(arch)}"
    if (final / "tiny_recipe.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build_tiny(arch, tmp)
        try:
            os.rename(tmp, final)  # atomic; loses the race harmlessly if another job built it
        except OSError:
            if not (final / "tiny_recipe.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_random(arch: str, shape: dict, out_dir: str | Path, dtype: str = "bfloat16", device: str = "cpu", seed: int = 0) -> Path:
    """A random-weight checkpoint of a real shape (config + safetensors, the hub's layout), written fast.

    For memory tests and benchmarks, where what matters is the size and the layout, not the values:
    every weight is filled from one block of N(0, 0.02) samples, built once on ``device``. Buffers
    (rotary frequencies) are not saved: transformers computes them at load.
    """
    import torch

    config_cls, model_cls = model_classes(arch)
    config = config_cls(**shape)
    torch_dtype = getattr(torch, dtype)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)
    try:
        with torch.device("meta"):
            model = model_cls(config)
    finally:
        torch.set_default_dtype(previous)
    model = model.to_empty(device=device)
    block = torch.randn(2**20 + 7, generator=torch.Generator().manual_seed(seed)).mul_(0.02).to(device, torch_dtype)
    with torch.no_grad():
        for param in model.parameters():
            flat = param.view(-1)
            for start in range(0, flat.numel(), block.numel()):
                piece = flat[start : start + block.numel()]
                piece.copy_(block[: piece.numel()])
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    return out_dir
