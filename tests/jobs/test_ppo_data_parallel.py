"""The ppo job data parallel: two ranks take the same update as one process.

On GPUs the operator starts the job under ``accelerate launch --num_processes
N``, which hands over to ``torch.distributed.run``; accelerate runs a single
process whenever ``--cpu`` is given, so here the ranks are started by
``torch.distributed.run`` itself (the same RANK/WORLD_SIZE/MASTER_* contract)
and talk over gloo instead of NCCL.

Both runs start from one gated round in two copies of a store. Responses are
cut to one length first: the loss is a token mean per minibatch, so only then
is "half a minibatch on each rank, gradients summed" exactly the whole
minibatch on one process.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
from tests.support.budget import budget
import torch
from safetensors.torch import load_file

from therapy_rlhf.feedback import simrater
from therapy_rlhf.jobs import generate
from therapy_rlhf.jobs.common import JobContext
from therapy_rlhf.jobs.value_head import FILENAME as VALUE_HEAD
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.gate import close_gate
from therapy_rlhf.contracts.records import dump_batch, parse_batch
from therapy_rlhf.contracts.spec import load_run
from therapy_rlhf.store.backends import LocalStore

SPEC = {
    "sft": {"enabled": False},
    "ppo": {
        "rounds": 2,
        "prompts": [
            {"id": "hopeless", "text": "I'm feeling depressed and hopeless. Can you help me?"},
            {"id": "grief", "text": "My father died last month and I can't accept it."},
            {"id": "exams", "text": "I panic before every exam and my mind goes blank."},
        ],
        "samplesPerPrompt": 2,
        "generation": {"maxNewTokens": 6, "batchSize": 6},
        "learningRate": 0.01,
        "epochs": 2,
        "miniBatchSize": 2,
        "gradientAccumulationSteps": 2,
    },
    "evaluation": {"enabled": False, "checkpoints": ["base"]},
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gated_round(manifest_path, store_dir) -> RunPaths:
    manifest = load_run(manifest_path)
    store = LocalStore(store_dir)
    paths = RunPaths(manifest.namespace, manifest.name)
    ctx = JobContext(kind="generate", manifest=manifest, round=1, store=store)
    try:
        generate.main(ctx)
    finally:
        ctx.close()
    responses, errors = parse_batch(store.read_bytes(paths.batch(1)).decode(), "batch")
    assert not errors
    shortest = min(len(r.response_token_ids) for r in responses)
    for r in responses:
        r.response_token_ids = r.response_token_ids[:shortest]
    store.write_bytes(paths.batch(1), dump_batch(responses))
    simrater.rate_round(store, paths, manifest, 1)
    close_gate(store, paths, 1, manifest.spec.feedback, closed_by="test")
    return paths


def _ppo(launcher: list[str], manifest_path, store_dir, tiny_cache) -> str:
    env = dict(os.environ, THERAPY_RLHF_CACHE=str(tiny_cache), THERAPY_RLHF_CPU_THREADS="1")
    args = ["ppo", "--run-config", str(manifest_path), "--round", "1", "--store", str(store_dir)]
    proc = subprocess.run([*launcher, *args], capture_output=True, text=True, env=env, timeout=budget(40))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_two_ranks_take_the_same_update_as_one_process(tmp_path, make_run, tiny_cache):
    manifest_path = make_run(SPEC, name="dp-test")
    one, two = tmp_path / "one", tmp_path / "two"
    paths = _gated_round(manifest_path, one)
    shutil.copytree(one, two)

    _ppo([sys.executable, "-m", "therapy_rlhf.jobs"], manifest_path, one, tiny_cache)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "therapy_rlhf.jobs"]
    log = _ppo(torchrun, manifest_path, two, tiny_cache)
    assert "2 data-parallel rank(s)" in log, log

    policy = paths.policy_prefix(1)
    m1 = json.loads((one / paths.policy_metrics(1)).read_text())
    m2 = json.loads((two / paths.policy_metrics(1)).read_text())
    assert (m1["data_parallel_ranks"], m2["data_parallel_ranks"]) == (1, 2)
    # The work is split: 6 samples x 2 epochs on one process, half of that on rank 0.
    assert (m1["local_sample_passes"], m2["local_sample_passes"]) == (12, 6)
    assert m2["optimizer_steps"] == m1["optimizer_steps"] == 4 and m2["minibatches"] == m1["minibatches"]
    for key in ("policy_loss", "value_loss", "kl", "entropy", "mean_return", "grad_norm"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-6), key

    # The same weights: the adapter, the value head and Adam's moments. The weights nearly all agree
    # to 1e-5; a few may not, because Adam divides by sqrt(v) + eps and so turns float noise of ~1e-10
    # in a gradient that is nearly 0 into a step of up to lr in either direction (lr / eps = 1e6),
    # whatever the data split and however the machine's threads summed: at most 2 x lr per step for
    # those, and they are rare (a wrong data split moves every element).
    bound = 2 * m1["optimizer_steps"] * 0.01
    for name in ("adapter_model.safetensors", VALUE_HEAD):
        a, b = load_file(one / policy / name), load_file(two / policy / name)
        assert a.keys() == b.keys()
        for key in a:
            diff = (a[key] - b[key]).abs()
            assert float(diff.max()) <= bound, (name, key, float(diff.max()))
            assert int((diff > 1e-5).sum()) <= max(4, diff.numel() // 50), (name, key, int((diff > 1e-5).sum()))  # measured: <= 1
    trained = load_file(one / policy / "adapter_model.safetensors")
    assert any(float(w.abs().max()) > 1e-3 for k, w in trained.items() if "lora_B" in k)  # there was an update to match
    s1 = torch.load(one / paths.optimizer_state(1), weights_only=True)["state"]
    s2 = torch.load(two / paths.optimizer_state(1), weights_only=True)["state"]
    assert s1.keys() == s2.keys()
    for index in s1:
        # Per tensor to 1e-3 (measured: under 1e-4): after the first step the two runs' weights differ by
        # the amplified noise above, so later gradients differ by as much. A rank whose gradients are not
        # summed, or summed at the wrong scale, is off by tens of percent.
        m_1, m_2 = s1[index]["exp_avg"], s2[index]["exp_avg"]
        assert float((m_1 - m_2).norm()) <= 1e-3 * float(m_1.norm()) + 1e-9, index
    # Only rank 0 wrote: the two stores hold the same keys.
    assert sorted(p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file()) == sorted(
        p.relative_to(two).as_posix() for p in two.rglob("*") if p.is_file()
    )
