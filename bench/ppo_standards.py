"""Issue 8's numbers: KL at step 0 with SFT on, sampler-vs-update agreement, a Table-1-style evaluation.

    python bench/ppo_standards.py                       # real ESConv from ../shared/data/esconv/
    python bench/ppo_standards.py --esconv DIR --rounds 3 --eval-examples 200

1. KL before the first update with SFT on: a real LoRA SFT of the tiny
   Mistral on the train split of ``FailedESConv.json`` (validated on its dev
   split), round 1 sampled from it, rated by the simulated rater, gated, and
   the ppo job's ``kl`` (must be 0.000); next to it the KL the old reference
   (the base, adapter disabled) gives on the same batch.
2. Sampler vs update: ``sampler_agreement`` on the tiny Mistral, for the
   generate job's sampler and for generate() as it was called before
   (temperature and top_p only, transformers' implicit top_k=50), each
   scored by the update as it is now and as it was (temperature 1).
3. Table 1: base / SFT / PPO (after ``--rounds`` rounds with the simulated
   rater) evaluated by the evaluate job on ESConv's test split
   (``testWithStrategy_short.tsv``), ``--eval-examples`` examples spread
   across its conversations, with the bundled MiniLM BERTScore encoder.
   Whether the SFT data and this test split share a conversation is checked
   and printed (FailedESConv's conversations are not ESConv's).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from therapy_rlhf.feedback import simrater
from therapy_rlhf.jobs import data, evaluate, generate, models, ppo, ppo_trainer, sampler_agreement, sft
from therapy_rlhf.jobs.common import JobContext, configure_cpu_threads, make_logger
from therapy_rlhf.jobs.report import results_table
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.gate import close_gate
from therapy_rlhf.contracts.records import parse_batch
from therapy_rlhf.contracts.spec import ModelSpec, parse_run
from therapy_rlhf.store.backends import LocalStore
from tests.support.manifests import run_doc

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "I'm feeling depressed and hopeless. Can you help me?"


def manifest(store: Path, esconv: Path, rounds: int, eval_examples: int):
    return parse_run(
        run_doc({
                "model": {"source": "tiny:mistral", "maxLength": 256, "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
                "storage": {"localPath": str(store)},
                "sft": {
                    "dataset": {"path": str(esconv / "FailedESConv.json"), "maxExamples": 600},
                    "maxSteps": 200, "evalSteps": 100, "batchSize": 8, "learningRate": 2e-3, "seed": 0,
                },
                "ppo": {
                    "rounds": rounds,
                    "builtinSuite": True,
                    "prompts": [{"id": "paper-depressed-hopeless", "text": PROMPT, "category": "depression"}],
                    "samplesPerPrompt": 4,
                    "generation": {"maxNewTokens": 24, "temperature": 0.7, "batchSize": 16},
                    "learningRate": 1e-3, "epochs": 2, "miniBatchSize": 8,
                },
                "evaluation": {
                    "dataset": {"path": str(esconv / "testWithStrategy_short.tsv")},
                    "maxExamples": eval_examples, "maxNewTokens": 24, "checkpoints": ["base", "sft", "final"],
                },
                "resources": {"gpus": 0},
            }, "issue-8-bench", "default"),
        "bench",
    )


def run(module, kind, m, store, round_no, log):
    ctx = JobContext(kind=kind, manifest=m, round=round_no, store=store, log=log)
    try:
        module.main(ctx)
    finally:
        ctx.close()


def base_reference_kl(m, store, paths, log) -> tuple[float, float]:
    """(per-sequence, per-token) KL of round 1's batch: SFT policy vs the base (the old reference)."""
    ctx = JobContext(kind="check", manifest=m, round=1, store=store, log=log)
    policy, tok, _ = models.load_policy(ctx, paths.sft_adapter(), trainable=False)
    responses, _ = parse_batch(store.read_text(paths.batch(1)))
    samples = [ppo_trainer.Sample(r.prompt_token_ids, r.response_token_ids, 0.0) for r in responses]
    width = max(len(s.response_ids) for s in samples)
    t = responses[0].generation.temperature
    with torch.no_grad():
        lp = ppo_trainer.forward_responses(policy, None, samples, width, tok.pad_token_id, "cpu", temperature=t).logprobs
        with policy.disable_adapter():
            ref = ppo_trainer.forward_responses(policy, None, samples, width, tok.pad_token_id, "cpu", temperature=t).logprobs
    ctx.close()
    tokens = sum(len(s.response_ids) for s in samples)
    diff = float((lp - ref).sum())
    return diff / len(samples), diff / tokens


def sampler_rows(samples: int) -> list[dict]:
    model, tok = models.load_base_model(ModelSpec(source="tiny:mistral"), "cpu")
    rows = []
    for temperature in (1.0, 0.7):
        drawn = sampler_agreement.draw(model, tok, PROMPT, samples, temperature, 4, seed=0)
        for scored_at in sorted({temperature, 1.0}, reverse=True):
            a = sampler_agreement.score(model, tok, drawn, scored_at)
            rows.append({"sampler": f"generate job (T={temperature}, top_k=0, top_p=1)", "update": f"T={scored_at}", **a.__dict__})
    ids = tok(models.format_chat(tok, [{"role": "user", "content": PROMPT}]), add_special_tokens=False)["input_ids"]
    for temperature, top_p in ((1.0, 1.0), (0.7, 0.9)):
        torch.manual_seed(0)
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([ids]), do_sample=True, temperature=temperature, top_p=top_p,
                                 max_new_tokens=4, num_return_sequences=samples, pad_token_id=tok.pad_token_id)
        drawn = [generate.Rollout(None, k, ids, generate._trim(row[len(ids):].tolist(), {tok.eos_token_id}, tok.pad_token_id), "")
                 for k, row in enumerate(out)]
        for scored_at in sorted({temperature, 1.0}, reverse=True):
            a = sampler_agreement.score(model, tok, drawn, scored_at)
            rows.append({"sampler": f"before: generate(T={temperature}, top_p={top_p}), implicit top_k=50",
                         "update": f"T={scored_at}", **a.__dict__})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--esconv", type=Path, default=ROOT.parent / "shared" / "data" / "esconv")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--eval-examples", type=int, default=200)
    parser.add_argument("--sampler-samples", type=int, default=2000)
    parser.add_argument("--skip-sampler", action="store_true", help="only the KL and Table 1 parts")
    args = parser.parse_args(argv)
    configure_cpu_threads("cpu")  # one torch thread, as the jobs run on CPU
    log = make_logger()
    log.setLevel(logging.WARNING)
    started = time.perf_counter()
    out: dict = {}

    print("## sampler vs update (tiny:mistral, 4 new tokens per sample)")
    print("| sampler | update scores at | tokens | KS distance | KS 0.1% critical | drawn outside top-50 | update's mass outside top-50 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in [] if args.skip_sampler else sampler_rows(args.sampler_samples):
        print(f"| {r['sampler']} | {r['update']} | {r['tokens']} | {r['ks_distance']:.4f} | {r['ks_critical_001']:.4f} "
              f"| {r['outside_top_sampled']:.3f} | {r['outside_top_expected']:.3f} |")
    print(flush=True)

    with tempfile.TemporaryDirectory(prefix="issue8-bench-") as tmp:
        store_dir = Path(tmp) / "store"
        store = LocalStore(store_dir)
        m = manifest(store_dir, args.esconv, args.rounds, args.eval_examples)
        paths = RunPaths(m.namespace, m.name)
        run(sft, "sft", m, store, 0, log)
        sft_metrics = store.read_json(paths.sft_metrics())
        out["sft"] = {k: sft_metrics[k] for k in ("train_examples", "train_conversations", "validation_examples",
                                                  "validation_conversations", "train_split", "validation_split",
                                                  "eval_loss", "steps")}
        for r in range(1, args.rounds + 1):
            run(generate, "generate", m, store, r, log)
            simrater.rate_round(store, paths, m, r)
            close_gate(store, paths, r, m.spec.feedback, closed_by="bench")
            if r == 1:
                out["kl_step0_base_reference"] = base_reference_kl(m, store, paths, log)
            run(ppo, "ppo", m, store, r, log)
            metrics = store.read_json(paths.policy_metrics(r))
            if r == 1:
                out["kl_step0"] = {"kl": metrics["kl"], "reference": metrics["reference"],
                                   "tokens": metrics["response_tokens"], "responses": metrics["responses"]}
            print(f"round {r}: mean reward {metrics['mean_reward']:.3f}, KL {metrics['kl']:.4f} "
                  f"(reference {metrics['reference']}), warnings {metrics['warnings']}", flush=True)
        run(evaluate, "evaluate", m, store, 0, log)
        results = store.read_json(paths.eval_results())
    print("## KL before the first update, SFT on")
    k0 = out["kl_step0"]
    seq, tok = out["kl_step0_base_reference"]
    print(f"reference = {k0['reference']}: KL {k0['kl']:.6f} per sequence ({k0['kl'] / k0['tokens']:.6f} per token) "
          f"over {k0['responses']} responses, {k0['tokens']} tokens")
    print(f"reference = base (adapter disabled, before): KL {seq:.4f} per sequence ({tok:.4f} per token) on the same batch")
    print(f"SFT: {json.dumps(out['sft'])}")
    print()
    train = {json.dumps(e.context[:2]) for e in data.load_split(m.spec.sft.dataset, "train").examples if len(e.context) >= 2}
    test = {json.dumps(e.context[:2]) for e in data.load_examples(str(args.esconv / "testWithStrategy_short.tsv")) if len(e.context) >= 2}
    print(f"conversation openings (first seeker turn + first reply) shared by SFT train and the test split: {len(train & test)}")
    print(f"## Table 1 on {results['dataset']} ({results['examples']} examples from {results['conversations']} "
          f"conversations, {results['split']})")
    print(results_table(results))
    print(f"BERTScore settings: {json.dumps(results['bertscore'])}")
    print(f"wall {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
