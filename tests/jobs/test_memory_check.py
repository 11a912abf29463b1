"""Every job checks its memory plan before it downloads anything, and ranks pin their GPU."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

import pytest
import yaml

from therapy_rlhf.jobs import distributed, memory_check
from therapy_rlhf.jobs.common import JobContext, JobError
from therapy_rlhf.planning.model_shapes import KNOWN_SHAPES
from therapy_rlhf.contracts.spec import load_run

MIXTRAL = dict(next(c for p, c in KNOWN_SHAPES if p == "mixtral-8x7b"))


def mixtral_prefix(s3_store) -> str:
    """A Mixtral-8x7B prefix holding its config.json and an index that names 19 shards (never fetched)."""
    s3_store.write_bytes("models/mixtral/config.json", json.dumps(MIXTRAL).encode())
    index = {"weight_map": {f"w{i}": f"model-{i:05d}-of-00019.safetensors" for i in range(1, 20)}}
    s3_store.write_bytes("models/mixtral/model.safetensors.index.json", json.dumps(index).encode())
    return f"s3://{s3_store.bucket}/{s3_store.prefix}/models/mixtral"


def test_a_plan_that_cannot_fit_stops_the_job_before_any_download(make_run, s3_store, tmp_path):
    source = mixtral_prefix(s3_store)
    manifest = make_run({
        "model": {"source": source, "dtype": "bfloat16", "quantization": "none", "maxLength": 2048},
        "resources": {"gpus": 2, "gpuMemory": "80Gi"},
    })
    cache = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-m", "therapy_rlhf.jobs", "generate", "--run-config", str(manifest), "--round", "1",
         "--store", str(tmp_path / "store")],
        capture_output=True, text=True, env=dict(os.environ, THERAPY_RLHF_CACHE=str(cache)), timeout=300,
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line
    assert re.fullmatch(r"error: memory plan: the generate job needs about 1\d\d\.\d GiB per GPU but the GPU has 80\.0 GiB "
                        r"\(resources\.gpuMemory\): set model\.quantization: 4bit \(then [34]\d\.\d GiB\)", line), line
    assert "memory plan: generate: " in proc.stdout and "DOES NOT FIT" in proc.stdout
    assert not (cache / "s3").exists()  # not one weight file was fetched
    assert not (tmp_path / "store").exists()


def test_the_quantized_plan_passes_and_is_logged(make_run, s3_store, tmp_path, caplog):
    source = mixtral_prefix(s3_store)
    manifest = load_run(make_run({"model": {"source": source, "quantization": "4bit", "maxLength": 2048},
                                  "resources": {"gpus": 2, "gpuMemory": "80Gi"}}))
    ctx = JobContext(kind="sft", manifest=manifest, round=0, store=None, cache_dir=tmp_path / "c",
                     log=logging.getLogger("test-memory-check"))
    with caplog.at_level("INFO", logger="test-memory-check"):
        plan = memory_check.check(ctx)
    assert plan.fits and plan.gpus == 2 and 30 < plan.total / 2**30 < 40
    assert "memory plan: sft: " in caplog.text and "(fits)" in caplog.text


def test_nothing_to_check_on_cpu_without_gpu_memory(make_run, tmp_path):
    ctx = JobContext(kind="generate", manifest=load_run(make_run()), round=1, store=None, cache_dir=tmp_path)
    assert memory_check.check(ctx) is None


def test_a_config_that_is_not_a_supported_model_is_named(make_run, s3_store, tmp_path):
    s3_store.write_bytes("models/gpt2/config.json", json.dumps({"model_type": "gpt2"}).encode())
    manifest = load_run(make_run({"model": {"source": f"s3://{s3_store.bucket}/{s3_store.prefix}/models/gpt2"},
                                  "resources": {"gpus": 1, "gpuMemory": "24Gi"}}))
    ctx = JobContext(kind="generate", manifest=manifest, round=1, store=None, cache_dir=tmp_path)
    with pytest.raises(JobError, match="memory plan: .*model_type 'gpt2' is not one of mistral, mixtral, llama"):
        memory_check.check(ctx)


class FakeCuda:
    """torch.cuda on a machine with ``count`` GPUs (there is none here): records set_device."""

    def __init__(self, count: int):
        self.count, self.current = count, None

    def is_available(self):
        return True

    def device_count(self):
        return self.count

    def set_device(self, index):
        self.current = index


def test_each_rank_is_pinned_to_its_local_gpu(monkeypatch):
    import torch

    cuda = FakeCuda(4)
    for name in ("is_available", "device_count", "set_device"):
        monkeypatch.setattr(torch.cuda, name, getattr(cuda, name))
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert distributed.pin_device() == "cuda:3" and cuda.current == 3
    assert distributed.process_group_options("cuda:3") == {"backend": "nccl", "device_id": torch.device("cuda", 3)}
    monkeypatch.setenv("LOCAL_RANK", "5")
    with pytest.raises(JobError, match="LOCAL_RANK 5 but this pod sees 4 GPU"):
        distributed.pin_device()
    monkeypatch.delenv("LOCAL_RANK")
    assert distributed.pin_device() == "cuda"  # one process: the default device


def test_cpu_ranks_use_gloo():
    assert distributed.process_group_options("cpu") == {"backend": "gloo"}


MISTRAL = dict(next(c for p, c in KNOWN_SHAPES if p == "mistral-7b-v0.3"))


def ppo_generate_context(make_run, s3_store, tmp_path, generation_batch: int) -> JobContext:
    """A ppo-generate job on a 4-bit Mistral-7B at maxLength 4096, one response per PPO minibatch, 40 GiB GPUs."""
    s3_store.write_bytes("models/mistral/config.json", json.dumps(MISTRAL).encode())
    manifest = load_run(make_run({
        "model": {"source": f"s3://{s3_store.bucket}/{s3_store.prefix}/models/mistral", "quantization": "4bit",
                  "maxLength": 4096},
        "ppo": {"miniBatchSize": 1, "generation": {"batchSize": generation_batch}},
        "resources": {"gpus": 1, "gpuMemory": "40Gi"},
    }))
    return JobContext(kind="ppo-generate", manifest=manifest, round=1, store=None, cache_dir=tmp_path / "c",
                      log=logging.getLogger("test-memory-check"))


def test_the_one_job_per_round_checks_the_update_and_the_sampling(make_run, s3_store, tmp_path, caplog):
    ctx = ppo_generate_context(make_run, s3_store, tmp_path, generation_batch=8)
    with caplog.at_level("INFO", logger="test-memory-check"):
        plan = memory_check.check(ctx)
    assert "memory plan: ppo: " in caplog.text and "memory plan: generate: " in caplog.text
    assert plan is not None and plan.fits and plan.kind == "generate"  # the larger of the two: the KV cache


def test_the_one_job_per_round_is_refused_when_its_sampling_cannot_fit(make_run, s3_store, tmp_path):
    """The update fits in 40 GiB; a generation batch of 32 at maxLength 4096 does not."""
    ctx = ppo_generate_context(make_run, s3_store, tmp_path, generation_batch=32)
    with pytest.raises(JobError) as err:
        memory_check.check(ctx)
    assert re.fullmatch(
        r"memory plan: the generate job needs about 5\d\.\d GiB per GPU but the GPU has 40\.0 GiB \(resources\.gpuMemory\): "
        r"set ppo\.generation\.batchSize to \d+ or lower \(then \d+\.\d GiB\) \(the ppo-generate job runs ppo then generate\)",
        str(err.value),
    ), str(err.value)
