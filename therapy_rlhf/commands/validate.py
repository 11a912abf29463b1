"""therapy-rlhf validate FILE...: check run manifests against the spec, and print their memory plan.

For a run that asks for GPUs, the memory plan of each job follows its "ok"
line: the estimated peak per GPU and what it is made of (``memory_plan.py``),
checked against ``resources.gpuMemory`` or ``--gpu-memory``. A plan that
cannot fit is an error: one line naming the setting to change, exit 1.
The model's shape comes from ``--model-config``, a local source's
config.json, or the table of known shapes matched by the source's name;
nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from therapy_rlhf.planning import memory_plan
from therapy_rlhf.planning.model_shapes import ModelShape, ShapeError, read_local_config, shape_for_source
from therapy_rlhf.contracts.quantity import parse_bytes
from therapy_rlhf.contracts.spec import RunManifest, SpecError, load_run

NAME = "validate"
HELP = "Validate TherapyRLHFRun manifests; prints 'ok' and the GPU memory plan per file, or field-path errors."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="YAML or JSON run manifests.")
    parser.add_argument(
        "--gpu-memory", metavar="QUANTITY", type=_quantity,
        help="Memory of each GPU (e.g. 80Gi) to check the plan against, instead of resources.gpuMemory.",
    )
    parser.add_argument(
        "--model-config", metavar="FILE", type=Path,
        help="The model's config.json, for a source that cannot be read here (s3://, hub id).",
    )


def _quantity(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def model_shape(manifest: RunManifest, config_file: Path | None) -> ModelShape | None:
    """The run's model shape from --model-config, a local config.json, or the known shapes."""
    source = manifest.spec.model.source
    if config_file is not None:
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ShapeError(f"--model-config {config_file}: {err}") from None
        return ModelShape.from_config(config, source=str(config_file))
    if not source.startswith(("s3://", "tiny:")) and Path(source).expanduser().is_dir():
        config = read_local_config(source)
        if config is not None:
            return ModelShape.from_config(config, source=f"{source}/config.json")
    return shape_for_source(source)


def plan_lines(manifest: RunManifest, gpu_memory: int | None, config_file: Path | None) -> tuple[list[str], list[str]]:
    """(plan lines for stdout, one refusal per job that cannot fit); both empty for a CPU-only run."""
    spec = manifest.spec
    if spec.resources.gpus == 0 and gpu_memory is None:
        return [], []
    try:
        shape = model_shape(manifest, config_file)
    except ShapeError as err:
        return [], [f"memory plan: {err}"]
    if shape is None:
        return [f"  memory plan: no shape known for {spec.model.source!r} (pass --model-config its config.json)"], []
    capacity, where = gpu_memory, "--gpu-memory"
    if capacity is None and spec.resources.gpu_memory:
        capacity, where = parse_bytes(spec.resources.gpu_memory), "resources.gpuMemory"
    m = spec.model
    weights = m.quantization if m.quantization != "none" else m.dtype
    lines = [f"  memory plan: {shape.describe()}; {weights} weights, {m.dtype} compute"]
    errors = []
    for plan in memory_plan.plan_run(spec, shape, capacity, where):
        lines.append(f"    {plan.summary()}")
        if not plan.fits:
            errors.append(memory_plan.refusal(plan))
    if capacity is None:
        lines.append("    (set resources.gpuMemory or pass --gpu-memory to check it against the GPUs)")
    return lines, errors


def run(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            manifest = load_run(path)
        except SpecError as err:
            failed += 1
            print(str(err), file=sys.stderr)
            continue
        lines, errors = plan_lines(manifest, args.gpu_memory, args.model_config)
        if not errors:
            print(f"{path}: ok")
        for warning in manifest.spec.feedback.selection.warnings():
            print(f"{path}: warning: {warning}", file=sys.stderr)
        for line in lines:
            print(line)
        for line in errors:
            print(f"{path}: {line}", file=sys.stderr)
        failed += bool(errors)
    return 1 if failed else 0
