"""An SFT adapter in a store, as the sft job leaves it, without training one (shared by the jobs' tests)."""

from __future__ import annotations

import torch

from therapy_rlhf.jobs import models
from therapy_rlhf.jobs.common import JobContext
from therapy_rlhf.contracts.layout import RunPaths


def store_sft_adapter(m, store, scale=0.5):
    """An SFT adapter that differs from the base (random B), with its marker: what the sft job leaves."""
    paths = RunPaths("default", m.name)
    ctx = JobContext(kind="setup", manifest=m, round=0, store=store)
    torch.manual_seed(0)
    policy, _, _ = models.load_policy(ctx, None, trainable=True)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, scale)
    out = ctx.scratch("sft-adapter")
    policy.save_pretrained(str(out))
    store.put_dir(out, paths.sft_adapter())
    store.write_json(paths.sft_metrics(), {"done": True})
    ctx.close()
    return paths
