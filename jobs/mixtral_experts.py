"""Mixtral with its experts as separate linear layers, so that bitsandbytes quantizes them.

transformers 5 keeps Mixtral's experts fused: per layer one 3-D parameter
``gate_up_proj`` (experts x 2*intermediate x hidden) and one ``down_proj``, and
its loader concatenates the checkpoint's per-expert ``w1``/``w3``/``w2`` into
them. bitsandbytes' 4-bit and 8-bit loading replaces ``nn.Linear`` modules
only, so a fused Mixtral loaded with ``quantization: 4bit`` quantizes the
attention and leaves ~45B expert parameters in bf16 (~90 GB), which peft's
``prepare_model_for_kbit_training`` then upcasts to fp32 (bitsandbytes#1849).

``MixtralForCausalLMWithExpertLinears`` is the stock model with each layer's
``mlp.experts`` replaced by ``ExpertLinears``: one ``ExpertMLP`` (``w1``,
``w3``: hidden -> intermediate, ``w2``: back, SwiGLU) per expert, the layout
of the checkpoints on the hub. Its checkpoint conversion mapping keeps only
the ``block_sparse_moe`` -> ``mlp`` renaming (no fusing), so every expert
weight is loaded as a linear layer's weight, quantized by the stock
bitsandbytes path as it is loaded, straight onto the device. The router
(``mlp.gate``) stays a plain parameter in the model dtype.

The forward is the one transformers 4 used for Mixtral: tokens are grouped
by expert and each expert runs on its tokens; routing, router loss and
everything else are the stock model's. LoRA can target the experts
(``w1``/``w2``/``w3``) as well as the attention; adapters on attention only
load on either layout.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import MixtralForCausalLM
from transformers.activations import ACT2FN
from transformers.models.mixtral.modeling_mixtral import MixtralModel

EXPERT_LINEARS = ("w1", "w2", "w3")


class ExpertMLP(nn.Module):
    """One expert: w2(act(w1 x) * w3 x)."""

    def __init__(self, config) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.w2(self.act_fn(self.w1(hidden_states)) * self.w3(hidden_states))


class ExpertLinears(nn.ModuleList):
    """The experts of one layer, called like transformers' fused ``MixtralExperts``."""

    def __init__(self, config) -> None:
        super().__init__(ExpertMLP(config) for _ in range(config.num_local_experts))

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        for index, expert in enumerate(self):
            token, slot = torch.where(top_k_index == index)
            if token.numel() == 0:
                continue
            routed = expert(hidden_states[token]) * top_k_weights[token, slot, None]
            out.index_add_(0, token, routed.to(out.dtype))
        return out


class MixtralModelWithExpertLinears(MixtralModel):
    def __init__(self, config) -> None:
        super().__init__(config)
        for layer in self.layers:
            layer.mlp.experts = ExpertLinears(config)
        self.post_init()


class MixtralForCausalLMWithExpertLinears(MixtralForCausalLM):
    def __init__(self, config) -> None:
        super().__init__(config)
        self.model = MixtralModelWithExpertLinears(config)
        self.post_init()


_registered = False


def register() -> None:
    """Tell transformers' loader (and peft) how checkpoints map onto these classes (once per process).

    The class names take priority over ``model_type`` in the lookup, so the
    stock Mixtral keeps its fusing conversion; the inner model gets an empty
    list so that the ``mixtral`` mapping is not applied to it either.
    """
    global _registered
    if _registered:
        return
    from transformers.conversion_mapping import WeightRenaming, register_checkpoint_conversion_mapping

    register_checkpoint_conversion_mapping(
        MixtralForCausalLMWithExpertLinears.__name__, [WeightRenaming(".block_sparse_moe.", ".mlp.")], overwrite=True
    )
    register_checkpoint_conversion_mapping(MixtralModelWithExpertLinears.__name__, [], overwrite=True)
    _keep_peft_targets_as_written()
    _registered = True


def checkpoint_has_expert_linears(weight_names: list[str]) -> bool:
    """True for the hub's layout (``...experts.0.w1.weight``); False for a fused save."""
    return any(".experts.0.w1.weight" in name for name in weight_names)


def _keep_peft_targets_as_written() -> None:
    """Exempt this model from peft's rewrite of Mixtral LoRA targets.

    peft (under transformers 5) rewrites a Mixtral's ``w1``/``w2``/``w3`` targets
    to the fused ``gate_up_proj``/``down_proj`` parameters, so that adapters
    trained on transformers 4 still load; on this model the experts *are*
    ``w1``/``w2``/``w3`` linear layers, so the targets must stay as written.
    The wrapper is installed once and applies to every later peft call
    (fresh adapters, stored ones, extra adapters); the stock Mixtral keeps
    the rewrite.
    """
    from peft.utils import transformers_weight_conversion as conversion

    original = conversion.convert_peft_config_for_transformers
    if getattr(original, "_keeps_expert_linears", False):
        return

    def convert(peft_config, model: nn.Module, conversions) -> None:
        if isinstance(model, MixtralForCausalLMWithExpertLinears):
            return
        original(peft_config, model=model, conversions=conversions)

    convert._keeps_expert_linears = True  # type: ignore[attr-defined]
    conversion.convert_peft_config_for_transformers = convert
