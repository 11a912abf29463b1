"""Ranks of a multi-GPU job: each pinned to its own GPU, joined over NCCL with that device.

``accelerate launch --num_processes G`` (what the operator runs for sft and ppo
when ``resources.gpus > 1``) starts G processes with ``RANK``, ``LOCAL_RANK``
and ``WORLD_SIZE`` set. Each must use GPU ``LOCAL_RANK`` and nothing else:
``pin_device`` makes it the current CUDA device before anything touches CUDA
(so caches, NCCL and libraries that use "the current device" land there, not
all on GPU 0), and ``join`` creates the process group with ``device_id``, so
NCCL binds its communicator to that GPU at once instead of guessing it from
the rank. Nothing here runs at import time.
"""

from __future__ import annotations

import os


def local_rank() -> int | None:
    raw = os.environ.get("LOCAL_RANK")
    return int(raw) if raw is not None and raw.strip().isdigit() else None


def world_size() -> int:
    raw = os.environ.get("WORLD_SIZE", "1")
    return int(raw) if raw.strip().isdigit() else 1


def pin_device() -> str:
    """'cuda:LOCAL_RANK' (made the current device), 'cuda' for a single process, else 'cpu'."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    rank = local_rank()
    if rank is None:
        return "cuda"
    if rank >= torch.cuda.device_count():
        from therapy_rlhf.jobs.errors import JobError

        raise JobError(f"LOCAL_RANK {rank} but this pod sees {torch.cuda.device_count()} GPU(s)")
    torch.cuda.set_device(rank)
    return f"cuda:{rank}"


def process_group_options(device: str) -> dict:
    """Arguments for ``init_process_group``: NCCL bound to this rank's GPU, or gloo on CPU."""
    import torch

    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        return {"backend": "nccl", "device_id": torch.device("cuda", index)}
    return {"backend": "gloo"}


def join(device: str) -> bool:
    """Join the ranks' process group (WORLD_SIZE > 1, not joined yet); True if this call created it."""
    import torch.distributed as dist

    if world_size() <= 1 or dist.is_initialized():
        return False
    dist.init_process_group(**process_group_options(device))
    return True


def leave(joined: bool) -> None:
    """Destroy the group ``join`` created."""
    if joined:
        import torch.distributed as dist

        dist.destroy_process_group()
