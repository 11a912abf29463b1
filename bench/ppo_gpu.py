"""GPU benchmark of the PPO round's heavy parts on random-weight models of the real shapes.

    python bench/ppo_gpu.py                      # on a CUDA machine; prints a Markdown table
    python bench/ppo_gpu.py --cpu-smoke          # a scaled-down shape on CPU, to check the script itself

Without a CUDA device (and without --cpu-smoke) it prints "no CUDA device:
skipped" and exits 0.

What it measures, per model:

* generation: ``model.generate`` of ``--batch`` sequences, ``--prompt-len``
  random prompt tokens, exactly ``--new-tokens`` new tokens (sampling),
  new tokens per second;
* the PPO update: ``ppo_trainer.ppo_update`` (the project's own loop: old and
  reference passes, then ``epochs`` of clipped-surrogate training with
  gradient checkpointing) on those sequences with random scores; sequence
  tokens per second of the training phase;
* peak GPU memory of each phase;
* MFU of the training phase, with TRL's ``compute_mfu`` and its FLOPs
  convention (3 x forward FLOPs per token, i.e. ~6N), and the same with
  2 x forward (~4N), which is what LoRA needs (no weight gradients for the
  frozen base); gradient checkpointing's recomputation is not counted, as
  usual for MFU.

Models: Mistral-7B's shape (32 layers, hidden 4096, GQA 32/8, vocab 32000) in
bf16 with LoRA r=16 on q/k/v/o. Mixtral-8x7B: transformers 5 stores its
experts as fused 3-D tensors, which bitsandbytes' 4-bit linear layers cannot
quantize from a random initialisation, and in bf16 the whole model (~94 GB)
does not fit one 80 GB card, so by default it runs Mixtral's full width with
``--mixtral-layers`` (8 of 32) layers in bf16; throughput per token scales
with the layer count and MFU is comparable.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

MISTRAL_7B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=32000,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    sliding_window=None,
    tie_word_embeddings=False,
)
MIXTRAL_8X7B = dict(MISTRAL_7B, num_local_experts=8, num_experts_per_tok=2)
SMOKE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=512)


def forward_flops_per_token(config: Any, seq_len: int) -> int:
    """Forward FLOPs per token (TRL's formula; Mixtral's experts use ``intermediate_size``)."""
    h, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    attn = 2 * h * (heads * head_dim + 2 * kv * head_dim) + 2 * heads * head_dim * h + 2 * 2 * heads * head_dim * seq_len
    top_k = getattr(config, "num_experts_per_tok", None)
    if top_k:
        mlp = top_k * 2 * 3 * h * config.intermediate_size + 2 * h * config.num_local_experts
    else:
        mlp = 2 * 3 * h * config.intermediate_size
    return layers * (attn + mlp) + 2 * vocab * h


def peak_flops(device_name: str) -> float | None:
    try:
        from trl.trainer.utils import get_peak_flops

        return get_peak_flops(device_name, "bfloat16")
    except ImportError:
        return None


def build(arch: str, shape: dict, device: str, dtype: Any) -> Any:
    import torch
    from transformers import MistralConfig, MistralForCausalLM, MixtralConfig, MixtralForCausalLM

    config_cls, model_cls = (MistralConfig, MistralForCausalLM) if arch == "mistral" else (MixtralConfig, MixtralForCausalLM)
    config = config_cls(**shape)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = model_cls(config)  # random init directly on the device, in bf16
    finally:
        torch.set_default_dtype(previous)
    model.config.use_cache = True
    return model


def bench_model(label: str, arch: str, shape: dict, args: argparse.Namespace, device: str) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model

    from therapy_rlhf.jobs import ppo_trainer
    from therapy_rlhf.jobs.value_head import ValueHead
    from therapy_rlhf.spec import PpoSpec

    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build(arch, shape, device, dtype)
    if cuda:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    policy = get_peft_model(
        model,
        LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"),
    )
    build_seconds = time.perf_counter() - t0
    config = model.config
    out: dict[str, Any] = {"model": label, "parameters_b": sum(p.numel() for p in model.parameters()) / 1e9, "build_s": build_seconds}

    # generation
    prompts = torch.randint(3, config.vocab_size, (args.batch, args.prompt_len), device=device)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    policy.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        generated = policy.generate(
            input_ids=prompts,
            attention_mask=torch.ones_like(prompts),
            do_sample=True,
            temperature=0.7,
            top_p=0.9,
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            pad_token_id=0,
        )
    if cuda:
        torch.cuda.synchronize()
    gen_seconds = time.perf_counter() - t0
    new_tokens = (generated.shape[1] - args.prompt_len) * args.batch
    out["gen_tokens_per_s"] = new_tokens / gen_seconds
    out["gen_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")

    # PPO update through the project's trainer
    samples = [
        ppo_trainer.Sample(prompts[i].tolist(), generated[i, args.prompt_len :].tolist(), float(torch.rand(())))
        for i in range(args.batch)
    ]
    ppo = PpoSpec(epochs=args.epochs, mini_batch_size=args.mini_batch, gradient_accumulation_steps=args.batch // args.mini_batch)
    head = ValueHead(config.hidden_size).reset(0)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    stats = ppo_trainer.ppo_update(policy, head, samples, ppo, 0.2, pad_id=0, device=device, seed=0)
    seq_len = args.prompt_len + args.new_tokens
    seq_tokens = seq_len * args.batch * args.epochs
    train_tps = seq_tokens / stats["train_seconds"]
    out.update(
        ppo_rollout_forward_s=stats["rollout_forward_seconds"],
        ppo_train_s=stats["train_seconds"],
        ppo_train_tokens_per_s=train_tps,
        ppo_peak_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
    )
    peak = peak_flops(torch.cuda.get_device_name(0)) if cuda else None
    fwd = forward_flops_per_token(config, seq_len)
    if peak:
        from trl.trainer.utils import compute_mfu

        out["mfu_6n_pct"] = compute_mfu(3 * fwd, train_tps, 1, peak)
        out["mfu_4n_pct"] = compute_mfu(2 * fwd, train_tps, 1, peak)
        out["gen_mfu_pct"] = compute_mfu(fwd, out["gen_tokens_per_s"], 1, peak)  # decode: 1 x forward per token
    del policy, model
    if cuda:
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--mini-batch", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--mixtral-layers", type=int, default=8)
    parser.add_argument("--only", choices=["mistral", "mixtral"])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU: checks the script, measures nothing useful")
    args = parser.parse_args(argv)
    if args.batch % args.mini_batch:
        parser.error("--batch must be a multiple of --mini-batch")

    import torch

    if args.cpu_smoke:
        device = "cpu"
        runs = [("mistral (smoke shape)", "mistral", SMOKE), ("mixtral (smoke shape)", "mixtral", dict(SMOKE, num_local_experts=4, num_experts_per_tok=2))]
    elif not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return 0
    else:
        device = "cuda"
        runs = [
            ("Mistral-7B shape, bf16 + LoRA r16", "mistral", MISTRAL_7B),
            (f"Mixtral-8x7B shape ({args.mixtral_layers}/32 layers), bf16 + LoRA r16", "mixtral", dict(MIXTRAL_8X7B, num_hidden_layers=args.mixtral_layers)),
        ]
    if args.only:
        runs = [r for r in runs if r[1] == args.only]
    card = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    print(f"device: {card}; torch {torch.__version__}; batch {args.batch} x ({args.prompt_len} prompt + {args.new_tokens} new tokens), "
          f"PPO epochs {args.epochs}, minibatch {args.mini_batch}")
    print()
    print("| model | params (B) | gen tokens/s | gen peak GiB | PPO train tokens/s | PPO peak GiB | MFU 6N % | MFU 4N (LoRA) % | gen MFU % |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, arch, shape in runs:
        try:
            r = bench_model(label, arch, shape, args, device)
        except torch.cuda.OutOfMemoryError:
            print(f"| {label} | - | out of GPU memory | | | | | | |")
            torch.cuda.empty_cache()
            continue
        print(
            f"| {label} | {r['parameters_b']:.2f} | {r['gen_tokens_per_s']:.1f} | {r['gen_peak_gib']:.1f} | "
            f"{r['ppo_train_tokens_per_s']:.1f} | {r['ppo_peak_gib']:.1f} | {r.get('mfu_6n_pct', float('nan')):.1f} | "
            f"{r.get('mfu_4n_pct', float('nan')):.1f} | {r.get('gen_mfu_pct', float('nan')):.2f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
