"""Fixtures for the job tests: one tiny-model cache per session and run manifests.

Every test under tests/jobs runs with ``THERAPY_RLHF_CACHE`` pointing at a
session-wide temporary directory, so the tiny models are built once per test
session and nothing lands in the user's ~/.cache; and with one torch thread,
like the jobs on CPU.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TINY_EXAMPLE = REPO / "examples" / "tiny-local.yaml"


@pytest.fixture(scope="session", autouse=True)
def one_cpu_thread():
    """Tiny models on one torch thread, as the jobs run them on CPU (see common.configure_cpu_threads)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def tiny_cache(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model-cache")
    saved = os.environ.get("THERAPY_RLHF_CACHE")
    os.environ["THERAPY_RLHF_CACHE"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("THERAPY_RLHF_CACHE", None)
    else:
        os.environ["THERAPY_RLHF_CACHE"] = saved


@pytest.fixture(scope="session")
def tiny_mistral_dir(tiny_cache) -> Path:
    from therapy_rlhf.jobs.tiny import tiny_model_dir

    return tiny_model_dir("mistral", tiny_cache)


@pytest.fixture(scope="session")
def tiny_mixtral_dir(tiny_cache) -> Path:
    from therapy_rlhf.jobs.tiny import tiny_model_dir

    return tiny_model_dir("mixtral", tiny_cache)


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def make_run(tmp_path):
    """make_run(spec_overrides) -> path of a manifest based on examples/tiny-local.yaml."""

    def _make(spec: dict | None = None, name: str = "tiny-test") -> Path:
        doc = yaml.safe_load(TINY_EXAMPLE.read_text())
        doc["metadata"]["name"] = name
        doc["spec"] = _merge(doc["spec"], spec or {})
        doc["spec"]["storage"] = {"localPath": str(tmp_path / "spec-store")}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return _make
