"""The KL reference: the policy this run's PPO started from, kept frozen beside the trained one.

With SFT on, round 1's policy is the SFT adapter, so the reference must be
the SFT model, not the base under it (a base reference would charge the SFT
baseline's own distance from the base as KL, about 0.02 nats per token on
the tiny model, and pull the policy back towards the base). It is kept as a
second peft adapter on the same base:

* the trainable adapter (peft's ``default``) is loaded from
  ``RunPaths.policy_for_round``: the SFT adapter in round 1, round r-1's PPO
  adapter later; it is what is trained and saved to ``rounds/r/policy/``;
* the reference adapter (``reference``) is the SFT adapter loaded a second
  time, frozen (``requires_grad`` off, never in the optimizer, never saved);
  ``active`` switches the forward pass to it for the reference log-probs and
  back.

In round 1 both adapters hold the same weights from the same files and run
the same code, so KL(policy || reference) is exactly 0 before the first
update. Without SFT the policy starts as a fresh LoRA (B = 0), i.e. the base
itself, so the reference is the base with the adapter disabled.

Why not merge SFT into the base and train a fresh PPO adapter: with a 4-bit
base (QLoRA) merging means dequantising, adding and re-quantising, which
moves every weight a little, so the reference would no longer be the SFT
model the run evaluates; and a PPO adapter would then mean "on top of the
merged SFT", which the generate and evaluate jobs (base + one adapter) would
have to learn. Two adapters on one frozen base work the same on a 4-bit
base (peft's 4-bit LoRA layers hold any number of adapters), cost one extra
LoRA (a few MB) and the reference forward pass the update already made.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

POLICY_ADAPTER = "default"  # peft's name for the first adapter: the trained policy
REFERENCE_ADAPTER = "reference"
BASE = "base"  # the reference when PPO starts from the base model


def attach(policy: Any, adapter_dir: Path) -> str:
    """Load the adapter saved in ``adapter_dir`` as the frozen reference; returns its name."""
    policy.load_adapter(str(adapter_dir), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
    for name, param in policy.named_parameters():
        if f".{REFERENCE_ADAPTER}." in name:
            param.requires_grad_(False)
    return REFERENCE_ADAPTER


@contextmanager
def active(policy: Any, adapter: str | None) -> Iterator[None]:
    """Run the forward passes inside on the reference: ``adapter`` (frozen), or the base when None.

    Leaves the trained adapter active and every parameter's ``requires_grad``
    as it found them (peft's ``set_adapter`` marks the active adapter trainable).
    """
    if adapter is None:
        with policy.disable_adapter():
            yield
        return
    flags = {name: p.requires_grad for name, p in policy.named_parameters()}
    policy.set_adapter(adapter, inference_mode=True)
    try:
        yield
    finally:
        policy.set_adapter(POLICY_ADAPTER)
        for name, p in policy.named_parameters():
            p.requires_grad_(flags[name])
