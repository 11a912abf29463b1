"""The critic: a scalar value head on the policy's last hidden states.

PPO needs V(s_t) for every response token. As in TRL's
``AutoModelForCausalLMWithValueHead``, the critic shares the policy's body
(base + LoRA) and adds one linear layer on the final hidden state, so the
only new parameters are ``hidden_size + 1`` numbers. It is kept in fp32 even
when the body runs in bf16 (value targets are small differences of rewards).

It is saved beside the LoRA adapter as ``value_head.safetensors`` so the
next round's update continues from the same critic; a round that starts from
the SFT adapter or the base model starts a fresh head.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

FILENAME = "value_head.safetensors"
INIT_STD = 0.02  # small: initial values near 0, close to the 0..1 rewards


class ValueHead(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.summary = nn.Linear(hidden_size, 1)

    def reset(self, seed: int) -> "ValueHead":
        """Deterministic initialisation (a retry starts from the same head)."""
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.summary.weight.copy_(torch.randn(self.summary.weight.shape, generator=gen) * INIT_STD)
            self.summary.bias.zero_()
        return self

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., hidden] -> [...] values (computed in fp32)."""
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)

    def save(self, directory: Path) -> Path:
        from safetensors.torch import save_file

        path = Path(directory) / FILENAME
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(path), metadata={"hidden_size": str(self.hidden_size)})
        return path

    @classmethod
    def load(cls, directory: Path, hidden_size: int) -> "ValueHead":
        """Load from ``directory``; ValueError naming the file when it does not fit the model."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(directory) / FILENAME
        with safe_open(str(path), framework="pt") as fh:
            saved = int((fh.metadata() or {}).get("hidden_size", -1))
        if saved != hidden_size:
            raise ValueError(f"{FILENAME} was saved for hidden size {saved}, the model has {hidden_size}")
        head = cls(hidden_size)
        head.load_state_dict(load_file(str(path)))
        return head


def load_or_init(directory: Path | None, hidden_size: int, seed: int) -> tuple[ValueHead, bool]:
    """(head, loaded): the head saved in ``directory`` if there is one, else a fresh one."""
    if directory is not None and (Path(directory) / FILENAME).is_file():
        return ValueHead.load(directory, hidden_size), True
    return ValueHead(hidden_size).reset(seed), False
