"""GPU benchmark of the paper's models, ready to run on one GPU with no network.

    python bench/gpu_bench.py --out bench/gpu-results.json      # on a CUDA machine, under 8 minutes
    python bench/gpu_bench.py --cpu-smoke --out /tmp/smoke.json  # tiny shapes on CPU: checks the script

Each step runs in its own process under its own timeout (a hung or crashed
step is reported and the next one runs); the whole run stops starting steps
after ``--total-seconds`` (default 470). Results go to ``--out`` as JSON and
to stdout as a Markdown table. Without CUDA (and without ``--cpu-smoke``) it
writes ``{"skipped": "no CUDA device"}`` and exits 0.

Steps:

1. ``matmul_peak``: the measured bf16 matmul throughput (8192^3 products),
   the peak the MFU figures are taken against.
2. ``tiny_jobs``: the real generate and ppo jobs (``therapy-rlhf run``, the
   local runner, simulated rater) on ``tiny:mistral`` on the GPU: one round,
   each job's metrics and its device.
3. ``mistral7b_bf16_lora``: a random-weight Mistral-7B shape in bf16 with LoRA
   r16 on q/k/v/o and gradient checkpointing: generation tokens/s, the PPO
   update's tokens/s (``ppo_trainer.ppo_update``), peak memory of each phase
   beside the memory plan's estimate, MFU (6N and LoRA's 4N FLOPs per token).
4. ``mistral_4bit``: a small random Mistral (4 layers at 7B width) written to
   disk and loaded by the jobs' loader in 4-bit: weights quantized?, bytes vs
   plan, generation and LoRA-update tokens/s, peak memory.
5. ``mixtral_layer_4bit``: one Mixtral-8x7B layer at full width (8 experts,
   top-2), loaded by the jobs' loader in 4-bit: are the experts 4-bit?, bytes
   vs plan, forward+backward tokens/s with LoRA, peak memory vs plan.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30
MISTRAL_7B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False, rope_theta=1_000_000.0)
MIXTRAL_LAYER = dict(MISTRAL_7B, num_hidden_layers=1, num_local_experts=8, num_experts_per_tok=2)
SMOKE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=512, tie_word_embeddings=False)
# (step, timeout on a GPU, timeout of the CPU smoke run), seconds
STEPS = [("matmul_peak", 30, 60), ("tiny_jobs", 120, 300), ("mistral7b_bf16_lora", 120, 120),
         ("mistral_4bit", 90, 120), ("mixtral_layer_4bit", 110, 120)]


# ------------------------------------------------------------------ helpers


def device_and_dtype(smoke: bool):
    import torch

    return ("cpu", torch.float32) if smoke else ("cuda", torch.bfloat16)


def peak_gib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / GiB if device == "cuda" else None


def reset_peak(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def forward_flops_per_token(shape, seq_len: int) -> int:
    """Forward FLOPs per token: 2 x the weights a token meets (routed experts only) + attention scores."""
    h = shape.hidden_size
    dense = sum(l.elements for l in shape.linears() if l.name not in ("w1", "w2", "w3")) // shape.num_hidden_layers
    experts = 3 * h * shape.intermediate_size * shape.experts_per_token if shape.is_moe else 0
    attention = 2 * shape.q_dim * seq_len
    return 2 * (shape.num_hidden_layers * (dense + experts + attention) + shape.vocab_size * h)


def plan_for(shape, kind: str, batch: int, seq: int, quantization: str, lora_r: int = 16):
    from therapy_rlhf.planning import memory_plan

    settings = memory_plan.Settings(kind=kind, dtype_bytes=2, quantization=quantization, gradient_checkpointing=True,
                                    batch=batch, max_length=seq, lora_r=lora_r,
                                    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"), gpus=1)
    return memory_plan.plan_job(shape, settings)


def lora(model, targets=("q_proj", "k_proj", "v_proj", "o_proj")):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=list(targets),
                                            task_type="CAUSAL_LM"))


def generate_tps(model, vocab: int, batch: int, prompt: int, new: int, device: str) -> float:
    import torch

    ids = torch.randint(3, vocab, (batch, prompt), device=device)
    model.eval()
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.7,
                             top_p=0.9, max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
    sync(device)
    return (out.shape[1] - prompt) * batch / (time.perf_counter() - t0)


def train_tps(model, vocab: int, batch: int, seq: int, device: str, steps: int = 2) -> float:
    """Forward + backward (LoRA gradients) tokens per second."""
    import torch

    model.train()
    ids = torch.randint(3, vocab, (batch, seq), device=device)
    model(input_ids=ids, labels=ids).loss.backward()  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
    sync(device)
    return steps * batch * seq / (time.perf_counter() - t0)


def quantized_report(model, shape, batch: int, seq: int) -> dict[str, Any]:
    import torch

    linear = [(n, p) for n, p in model.named_parameters() if n.endswith(".weight") and (".experts." in n or "_proj" in n)]
    four_bit = [n for n, p in linear if type(p).__name__ == "Params4bit"]
    experts = [n for n, _ in linear if ".experts." in n]
    return {
        "linear_weights": len(linear),
        "linear_weights_4bit": len(four_bit),
        "experts_4bit": (all(n in four_bit for n in experts) if experts else None),
        "unquantized_params_b": sum(p.numel() for p in model.parameters() if p.is_floating_point()) / 1e9,
        "planned_weights_gib": plan_for(shape, "generate", batch, seq, "4bit").parts["weights"] / GiB,
    }


# -------------------------------------------------------------------- steps


def step_matmul_peak(smoke: bool, _: dict) -> dict[str, Any]:
    import torch

    device, dtype = device_and_dtype(smoke)
    n = 512 if smoke else 8192
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    iters = 3 if smoke else 50
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    tflops = 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    return {"device": name, "dtype": str(dtype), "matmul_tflops": tflops, "torch": torch.__version__}


def step_tiny_jobs(smoke: bool, _: dict) -> dict[str, Any]:
    import yaml

    work = Path(tempfile.mkdtemp(prefix="gpu-bench-jobs-"))
    doc = yaml.safe_load((ROOT / "examples" / "tiny-local.yaml").read_text())
    doc["metadata"]["name"] = "gpu-bench"
    spec = doc["spec"]
    spec["sft"]["enabled"] = False
    spec["evaluation"] = {"enabled": False, "checkpoints": ["base"]}
    spec["ppo"]["rounds"] = 1
    spec["storage"] = {"localPath": str(work / "store")}
    spec.setdefault("resources", {})["gpus"] = 0 if smoke else 1
    manifest = work / "run.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    env = dict(os.environ, THERAPY_RLHF_CACHE=str(work / "cache"))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "therapy_rlhf.cli", "run", str(manifest), "--scoring", "auto"],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"therapy-rlhf run failed ({proc.returncode}): {proc.stderr[-500:]}")
    round_dir = work / "store" / "default" / "gpu-bench" / "rounds" / "0001"
    metrics = json.loads((round_dir / "policy" / "metrics.json").read_text())
    batch = [json.loads(l) for l in (round_dir / "batch.jsonl").read_text().splitlines() if l.strip()]
    return {"seconds": time.perf_counter() - t0, "responses": len(batch), "ppo_device": metrics["device"],
            "ppo_work_seconds": metrics["work_seconds"], "ppo_startup_seconds": metrics["startup_seconds"]}


def step_mistral7b_bf16_lora(smoke: bool, results: dict) -> dict[str, Any]:
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from therapy_rlhf.jobs import ppo_trainer
    from therapy_rlhf.jobs.value_head import ValueHead
    from therapy_rlhf.planning.model_shapes import ModelShape
    from therapy_rlhf.contracts.spec import PpoSpec

    device, dtype = device_and_dtype(smoke)
    shape_cfg = SMOKE if smoke else MISTRAL_7B
    batch, prompt, new = (2, 8, 4) if smoke else (8, 128, 128)
    config = MistralConfig(**shape_cfg)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = MistralForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    if device == "cuda":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    policy = lora(model)
    shape = ModelShape.from_config({"model_type": "mistral", **shape_cfg})
    reset_peak(device)
    gen = generate_tps(policy, config.vocab_size, batch, prompt, new, device)
    gen_peak = peak_gib(device)
    ids = torch.randint(3, config.vocab_size, (batch, prompt + new)).tolist()
    samples = [ppo_trainer.Sample(row[:prompt], row[prompt:], float(i % 2)) for i, row in enumerate(ids)]
    ppo = PpoSpec(epochs=2, mini_batch_size=4 if not smoke else 1, gradient_accumulation_steps=batch // (4 if not smoke else 1))
    head = ValueHead(config.hidden_size).reset(0)
    reset_peak(device)
    stats = ppo_trainer.ppo_update(policy, head, samples, ppo, 0.2, pad_id=0, device=device, seed=0)
    tps = (prompt + new) * batch * ppo.epochs / stats["train_seconds"]
    seq = prompt + new
    out = {"gen_tokens_per_s": gen, "gen_peak_gib": gen_peak, "ppo_train_tokens_per_s": tps, "ppo_peak_gib": peak_gib(device),
           "planned_generate_gib": plan_for(shape, "generate", batch, seq, "none").total / GiB,
           "planned_ppo_gib": plan_for(shape, "ppo", ppo.mini_batch_size, seq, "none").total / GiB,
           "parameters_b": shape.parameters / 1e9}
    peak = (results.get("matmul_peak") or {}).get("matmul_tflops")
    if peak:
        fwd = forward_flops_per_token(shape, seq)
        out["mfu_6n_pct"] = 100 * 3 * fwd * tps / (peak * 1e12)
        out["mfu_4n_pct"] = 100 * 2 * fwd * tps / (peak * 1e12)
        out["gen_mfu_pct"] = 100 * fwd * gen / (peak * 1e12)
    return out


def _load_4bit(arch: str, shape_cfg: dict, smoke: bool):
    import torch

    from therapy_rlhf.jobs import models, tiny
    from therapy_rlhf.contracts.spec import ModelSpec

    device, dtype = device_and_dtype(smoke)
    path = Path(tempfile.mkdtemp(prefix=f"gpu-bench-{arch}-")) / "model"
    tiny.build_random(arch, shape_cfg, path, dtype="bfloat16", device=device)
    if device == "cuda":
        torch.cuda.empty_cache()
    reset_peak(device)
    t0 = time.perf_counter()
    spec = ModelSpec(source=str(path), quantization="4bit", dtype="bfloat16")
    model = models.load_model(str(path), spec, device, dtype, arch)
    sync(device)
    return model, time.perf_counter() - t0, peak_gib(device)


def step_mistral_4bit(smoke: bool, _: dict) -> dict[str, Any]:
    from therapy_rlhf.planning.model_shapes import ModelShape

    device, _dtype = device_and_dtype(smoke)
    shape_cfg = SMOKE if smoke else dict(MISTRAL_7B, num_hidden_layers=4)
    batch, seq = (2, 16) if smoke else (4, 512)
    model, load_s, load_peak = _load_4bit("mistral", shape_cfg, smoke)
    shape = ModelShape.from_config({"model_type": "mistral", **shape_cfg})
    out = {"load_seconds": load_s, "load_peak_gib": load_peak, **quantized_report(model, shape, batch, seq)}
    policy = lora(model)
    reset_peak(device)
    out["gen_tokens_per_s"] = generate_tps(policy, shape.vocab_size, batch, 32 if not smoke else 4, 64 if not smoke else 4, device)
    reset_peak(device)
    out["train_tokens_per_s"] = train_tps(policy, shape.vocab_size, batch, seq, device)
    out["train_peak_gib"] = peak_gib(device)
    out["planned_train_gib"] = plan_for(shape, "sft", batch, seq, "4bit").total / GiB
    return out


def step_mixtral_layer_4bit(smoke: bool, _: dict) -> dict[str, Any]:
    from therapy_rlhf.planning.model_shapes import ModelShape

    device, _dtype = device_and_dtype(smoke)
    shape_cfg = dict(SMOKE, num_hidden_layers=1, num_local_experts=4, num_experts_per_tok=2) if smoke else MIXTRAL_LAYER
    batch, seq = (2, 16) if smoke else (2, 1024)
    model, load_s, load_peak = _load_4bit("mixtral", shape_cfg, smoke)
    shape = ModelShape.from_config({"model_type": "mixtral", **shape_cfg})
    out = {"load_seconds": load_s, "load_peak_gib": load_peak, **quantized_report(model, shape, batch, seq)}
    policy = lora(model)
    reset_peak(device)
    out["train_tokens_per_s"] = train_tps(policy, shape.vocab_size, batch, seq, device)
    out["train_peak_gib"] = peak_gib(device)
    out["planned_train_gib"] = plan_for(shape, "sft", batch, seq, "4bit").total / GiB
    return out


# --------------------------------------------------------------------- driver


def run_step(name: str, smoke: bool, results_file: Path) -> None:
    """In the step's own process: run it, append its result to the shared results file."""
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    if not smoke:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        import torch

        torch.set_num_threads(1)
    result = globals()[f"step_{name}"](smoke, results.get("steps", {}))
    print("RESULT " + json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "gpu-results.json", help="results (JSON)")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU: checks the script, measures nothing useful")
    parser.add_argument("--total-seconds", type=float, default=470.0, help="start no step after this many seconds")
    parser.add_argument("--only", action="append", choices=[s for s, _, _ in STEPS], help="run only these steps")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        run_step(args.step, args.cpu_smoke, args.out)
        return 0

    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        args.out.write_text(json.dumps({"skipped": "no CUDA device"}, indent=2) + "\n")
        print("no CUDA device: skipped")
        return 0
    started = time.monotonic()
    doc: dict[str, Any] = {"mode": "cpu-smoke" if args.cpu_smoke else "gpu", "steps": {}, "errors": {}}
    env = dict(os.environ)  # the project is installed; never put the repo root on the path (its operator/ folder)
    for name, gpu_timeout, smoke_timeout in STEPS:
        if args.only and name not in args.only:
            continue
        left = args.total_seconds - (time.monotonic() - started)
        timeout = min(smoke_timeout if args.cpu_smoke else gpu_timeout, left)
        if timeout <= 5:
            doc["errors"][name] = "not started: the run's time was used up"
            continue
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--out", str(args.out)]
        cmd += ["--cpu-smoke"] if args.cpu_smoke else []
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            doc["errors"][name] = f"timed out after {timeout:.0f} s"
            print(f"{name}: timed out after {timeout:.0f} s", flush=True)
            continue
        line = next((l for l in reversed(proc.stdout.splitlines()) if l.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            doc["errors"][name] = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:300]
            print(f"{name}: failed: {doc['errors'][name]}", flush=True)
            continue
        doc["steps"][name] = {**json.loads(line[len("RESULT "):]), "step_seconds": time.monotonic() - t0}
        print(f"{name}: {json.dumps(doc['steps'][name])}", flush=True)
    doc["total_seconds"] = time.monotonic() - started
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nresults in {args.out} ({doc['total_seconds']:.0f} s)")
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
