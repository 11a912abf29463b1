"""The shape of a Mistral, Mixtral or Llama-family model: what its config.json says, and what that costs.

Pure Python (no torch): ``therapy-rlhf validate`` uses it on a laptop, the jobs
use the same arithmetic before they download anything (``memory_plan.py``).

A shape comes from a model's ``config.json`` (``ModelShape.from_config``), or,
when nothing can be read, from the table of known shapes matched by the
source's name (``shape_for_source``): the public configs of Mistral-7B,
Mixtral-8x7B, Llama-3.x, SmolLM2-135M (the bundled real model) and the
project's tiny test models. Llama-family models are dense like Mistral (the
same module names), with grouped-query attention (``num_key_value_heads``)
and often tied input/output embeddings (no separate ``lm_head``).

``linears()`` lists the weight matrices by module name, the way transformers
builds the models: attention ``q_proj``/``k_proj``/``v_proj``/``o_proj``;
Mistral's and Llama's MLP ``gate_proj``/``up_proj``/``down_proj``; Mixtral's experts
``w1``/``w3`` (hidden -> intermediate) and ``w2`` (back), one of each per
expert, which is how the jobs load a quantized Mixtral (see
``jobs/mixtral_experts.py``); the router (``gate``, experts x hidden) is a
plain parameter, not a linear layer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_TYPES = ("mistral", "mixtral", "llama")

# The tiny random-weight models of tests and demos (jobs/tiny.py builds them from these).
TINY_COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    sliding_window=None,
)
TINY_MIXTRAL_EXTRA = dict(num_local_experts=4, num_experts_per_tok=2, router_aux_loss_coef=0.01)
TINY_VOCAB_SIZE = 2048
TINY_LLAMA_EXTRA = dict(tie_word_embeddings=True)  # as SmolLM2 and Llama-3.2-1B/3B

_MISTRAL_7B = dict(
    model_type="mistral",
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=32000,
    tie_word_embeddings=False,
)
# Llama-3/3.1-8B has Mistral-7B's widths, with a 128,256-token vocabulary
_LLAMA_3_8B = dict(_MISTRAL_7B, model_type="llama", vocab_size=128256)
# Public config.json values; the first pattern found in the lower-cased source wins.
KNOWN_SHAPES: list[tuple[str, dict[str, Any]]] = [
    ("tiny:mistral", dict(TINY_COMMON, model_type="mistral", vocab_size=TINY_VOCAB_SIZE)),
    ("tiny:mixtral", dict(TINY_COMMON, **TINY_MIXTRAL_EXTRA, model_type="mixtral", vocab_size=TINY_VOCAB_SIZE)),
    ("tiny:llama", dict(TINY_COMMON, **TINY_LLAMA_EXTRA, model_type="llama", vocab_size=TINY_VOCAB_SIZE)),
    ("smollm2-135m", dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152,
                          tie_word_embeddings=True)),
    ("llama-3.2-1b", dict(_LLAMA_3_8B, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                          head_dim=64, tie_word_embeddings=True)),
    ("llama-3.2-3b", dict(_LLAMA_3_8B, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                          num_attention_heads=24, tie_word_embeddings=True)),
    ("llama-3.1-8b", _LLAMA_3_8B),
    ("llama-3-8b", _LLAMA_3_8B),
    ("mixtral-8x7b", dict(_MISTRAL_7B, model_type="mixtral", num_local_experts=8, num_experts_per_tok=2)),
    ("mistral-7b-instruct-v0.3", dict(_MISTRAL_7B, vocab_size=32768)),
    ("mistral-7b-v0.3", dict(_MISTRAL_7B, vocab_size=32768)),
    ("mistral-7b", _MISTRAL_7B),
]


class ShapeError(ValueError):
    """A config that does not describe a supported model; the message names the key."""


@dataclass(frozen=True)
class Linear:
    """``count`` weight matrices named ``name``, each ``out_features`` x ``in_features``."""

    name: str
    out_features: int
    in_features: int
    count: int

    @property
    def elements(self) -> int:
        return self.out_features * self.in_features * self.count


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool = False
    num_local_experts: int = 0
    num_experts_per_tok: int = 0
    source: str = "config.json"  # where the numbers came from, for messages

    @classmethod
    def from_config(cls, config: dict[str, Any], source: str = "config.json") -> "ModelShape":
        model_type = config.get("model_type")
        if model_type not in SUPPORTED_TYPES:
            raise ShapeError(f"{source}: model_type {model_type!r} is not one of {', '.join(SUPPORTED_TYPES)}")
        need = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"]
        if model_type == "mixtral":
            need += ["num_local_experts", "num_experts_per_tok"]
        for key in need:
            value = config.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ShapeError(f"{source}: {key} must be a positive integer (got {value!r})")
        heads = config["num_attention_heads"]
        return cls(
            model_type=model_type,
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_hidden_layers=config["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            vocab_size=config["vocab_size"],
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            num_local_experts=config.get("num_local_experts", 0) if model_type == "mixtral" else 0,
            num_experts_per_tok=config.get("num_experts_per_tok", 0) if model_type == "mixtral" else 0,
            source=source,
        )

    # -- structure ----------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.num_local_experts > 0

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def experts_per_token(self) -> int:
        """MLPs each token goes through: top-k experts, or the one dense MLP."""
        return self.num_experts_per_tok if self.is_moe else 1

    def linears(self) -> list[Linear]:
        """Every linear weight of the decoder layers (the ones quantization and LoRA apply to)."""
        h, i, layers = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        out = [
            Linear("q_proj", self.q_dim, h, layers),
            Linear("k_proj", self.kv_dim, h, layers),
            Linear("v_proj", self.kv_dim, h, layers),
            Linear("o_proj", h, self.q_dim, layers),
        ]
        if self.is_moe:
            n = layers * self.num_local_experts
            out += [Linear("w1", i, h, n), Linear("w3", i, h, n), Linear("w2", h, i, n)]
        else:
            out += [Linear("gate_proj", i, h, layers), Linear("up_proj", i, h, layers), Linear("down_proj", h, i, layers)]
        return out

    def other_parameters(self) -> dict[str, int]:
        """Parameters outside the decoder linears (never quantized): embeddings, head, router, norms."""
        h = self.hidden_size
        parts = {
            "embed_tokens": self.vocab_size * h,
            "lm_head": 0 if self.tie_word_embeddings else self.vocab_size * h,
            "norms": (2 * self.num_hidden_layers + 1) * h,
        }
        if self.is_moe:
            parts["router"] = self.num_hidden_layers * self.num_local_experts * h
        return parts

    @property
    def parameters(self) -> int:
        return sum(lin.elements for lin in self.linears()) + sum(self.other_parameters().values())

    def describe(self) -> str:
        kind = f"{self.num_local_experts} experts, top-{self.num_experts_per_tok}, " if self.is_moe else ""
        return (
            f"{self.model_type} {self.parameters / 1e9:.2f}B parameters ({self.num_hidden_layers} layers, "
            f"hidden {self.hidden_size}, {kind}vocab {self.vocab_size}; from {self.source})"
        )


def shape_for_source(source: str) -> ModelShape | None:
    """The known shape whose pattern the source names (case-insensitive), or None."""
    lowered = source.lower()
    for pattern, config in KNOWN_SHAPES:
        if pattern in lowered:
            return ModelShape.from_config(config, source=f"the known shape of {pattern}")
    return None


def read_local_config(directory: str | Path) -> dict[str, Any] | None:
    """config.json of a local model directory, or None if there is none."""
    path = Path(directory).expanduser() / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ShapeError(f"{path}: not readable JSON: {err}") from None
