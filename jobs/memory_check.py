"""Each job's memory plan, checked before the model is downloaded or loaded.

``check(ctx)`` reads the model's config.json alone (a local directory, the
cached copy, one GET under an ``s3://`` prefix, the tiny recipe, the bundled model's converted copy, or the hub's
config for a hub id), plans the job with ``therapy_rlhf.planning.memory_plan`` (the
same arithmetic ``therapy-rlhf validate`` prints) and refuses a plan that
cannot fit with a one-line JobError that names the setting to change.

The capacity is the GPU the job was given (its total memory); on CPU, the
``resources.gpuMemory`` the run declares (so a run meant for small GPUs is
refused before anything is downloaded even when tried on a workstation);
with neither there is nothing to check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from therapy_rlhf.planning import memory_plan
from therapy_rlhf.jobs.common import JobContext, JobError, offline
from therapy_rlhf.planning.model_shapes import ModelShape, ShapeError, read_local_config
from therapy_rlhf.contracts.quantity import parse_bytes


def gpu_capacity(ctx: JobContext) -> tuple[int, str] | None:
    """(bytes per GPU, where that number comes from), or None when there is nothing to check against."""
    if ctx.device.startswith("cuda"):
        import torch

        index = int(ctx.device.split(":")[1]) if ":" in ctx.device else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return int(props.total_memory), f"cuda:{index}, {props.name}"
    if ctx.spec.resources.gpu_memory:
        return parse_bytes(ctx.spec.resources.gpu_memory), "resources.gpuMemory"
    return None


def read_model_config(ctx: JobContext) -> dict[str, Any]:
    """config.json of the run's model, without downloading its weights."""
    source = ctx.spec.model.source
    if source.startswith("s3://"):
        from therapy_rlhf.jobs import download

        return download.read_config(source, ctx.cache_dir)
    if source.startswith(("tiny:", "bundled:")):
        from therapy_rlhf.jobs.models import resolve_source

        # built (tiny) or converted from an installed package (bundled) locally; nothing fetched
        source = resolve_source(source, ctx.cache_dir)
    config = read_local_config(source)
    if config is not None:
        return config
    if offline():
        raise JobError(f"model source {source!r} has no config.json here and the hub is offline")
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(source, "config.json", revision=ctx.spec.model.revision)
    except Exception as err:  # the hub client raises many types
        raise JobError(f"cannot read config.json of {source!r}: {str(err).splitlines()[0][:200]}") from None
    return read_local_config(Path(path).parent) or {}


def check(ctx: JobContext) -> memory_plan.JobPlan | None:
    """The job's plan (logged), or None with nothing to check; JobError when it cannot fit.

    A job that does several kinds' work (``memory_plan.PARTS_OF_JOB``: ppo-generate is
    the update, then sampling) checks each part's plan and returns the largest.
    """
    parts = memory_plan.PARTS_OF_JOB.get(ctx.kind, (ctx.kind,))  # the job-kind table's memory parts
    if not all(kind in memory_plan.KINDS for kind in parts):
        return None
    capacity = gpu_capacity(ctx)
    if capacity is None:
        return None
    try:
        shape = ModelShape.from_config(read_model_config(ctx), source=f"{ctx.spec.model.source} config.json")
    except ShapeError as err:
        raise JobError(f"memory plan: {err}") from None
    plans = []
    for kind in parts:
        settings = memory_plan.Settings.from_spec(ctx.spec, kind)
        plan = memory_plan.plan_job(shape, settings, capacity[0], capacity[1])
        ctx.progress("memory plan: %s", plan.summary())
        if not plan.fits:
            within = f" (the {ctx.kind} job runs {' then '.join(parts)})" if len(parts) > 1 else ""
            raise JobError(memory_plan.refusal(plan) + within)
        plans.append(plan)
    return max(plans, key=lambda p: p.total)
