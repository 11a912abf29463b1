"""The job images install the one tested ML stack (images/ml-stack.txt), the one these tests run with."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "images" / "ml-stack.txt"
CONSTRAINTS = ROOT / "images" / "constraints.txt"
PINNED = ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes")


def pins(path: Path = STACK) -> dict[str, str]:
    """Package name (canonical: lower case, runs of -_. as one -) -> the version a pin file gives it."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path}: {line!r} is not pinned with =="
            out[re.sub(r"[-_.]+", "-", name).lower()] = version
    return out


def test_the_stack_pins_every_ml_package():
    assert set(PINNED) <= set(pins())


def test_these_tests_run_on_the_pinned_stack():
    wrong = {}
    for name, version in pins().items():
        try:
            installed = metadata.version(name).split("+")[0]  # torch's local label (+cpu, +cu128) aside
        except metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != version:
            wrong[name] = (installed, version)
    assert not wrong, f"installed vs images/ml-stack.txt: {wrong} (install with -c images/ml-stack.txt, or change both)"


def test_both_job_images_install_through_the_stack():
    for name in ("jobs.Dockerfile", "jobs-cpu.Dockerfile"):
        text = (ROOT / "images" / name).read_text()
        installs = [l for l in text.splitlines() if "pip install" in l]
        assert installs and all("-c ml-stack.txt -c constraints.txt" in l for l in installs), (name, installs)
        assert "COPY images/ml-stack.txt images/constraints.txt" in text
        assert not re.search(r"(torch|transformers|peft|trl|bitsandbytes|accelerate)[=<>]=?[0-9]", text), name


def test_the_gpu_image_names_its_cuda_and_matches_the_torch_build():
    text = (ROOT / "images" / "jobs.Dockerfile").read_text()
    base = re.search(r"^FROM nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu[0-9.]+$", text, re.M)
    index = re.search(r"download\.pytorch\.org/whl/cu(\d+)", text)
    assert base and index
    assert index.group(1) == base.group(1) + base.group(2)  # CUDA 12.8 image, cu128 wheel


def test_every_image_installs_the_built_wheel_at_the_tested_versions():
    for name in ("jobs.Dockerfile", "jobs-cpu.Dockerfile", "operator.Dockerfile"):
        text = (ROOT / "images" / name).read_text()
        assert "pip wheel --no-deps --wheel-dir /wheels ." in text, name
        install = next(l for l in text.splitlines() if "/wheels/therapy_rlhf-" in l)
        assert "-c ml-stack.txt -c constraints.txt" in install and "-e " not in install, name


def test_the_two_pin_files_never_name_the_same_package():
    pinned = pins(CONSTRAINTS)
    assert "moto" in pinned and "kmock" in pinned and "textual" in pinned
    assert not set(pinned) & set(pins())


def test_these_tests_run_with_the_pinned_tools():
    wrong = {}
    pinned = pins(CONSTRAINTS)
    for name in ("moto", "kmock", "textual", "pytest", "boto3", "kopf"):
        version = pinned[name]
        if metadata.version(name) != version:
            wrong[name] = (metadata.version(name), version)
    assert not wrong, f"installed vs images/constraints.txt: {wrong} (install with -c images/constraints.txt)"
