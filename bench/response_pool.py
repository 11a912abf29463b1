"""A fixed pool of real responses for the pool benchmark (issue 21): the bundled SmolLM2 over the prompt suite.

    OMP_NUM_THREADS=1 python bench/response_pool.py --out bench/data/pool.jsonl.gz     # 36 min on a loaded 2-core machine

Generated once and committed, so ``bench/active_pool.py`` reruns without a model. The pool is every
prompt of the project's suite (15 prompts, 3 with crisis cues) plus the example's
``anxiety-cannot-sleep``, sampled ``--samples`` times at each of ``--temperatures`` from two policies:

* ``base``: SmolLM2-135M-Instruct as shipped (``bundled:smollm2-135m-instruct``, examples/smol-local.yaml);
* ``sft``: the same with a LoRA adapter from the real ``sft`` job on ESConv's training split (the real
  FailedESConv.json in ../shared/data/esconv, split by conversation: train only), ``--sft-steps`` steps.

Different temperatures and the two policies give a spread of quality (fluent replies at 0.5, looser text
at 1.2). Sampling is the generate job's own (``generate.sample_responses``: untruncated, seeded); each
line keeps the response's token ids (the reward model's token features) and the safety screen's verdict.
Torch runs on one thread.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import yaml

REPO = Path(__file__).resolve().parents[1]
ESCONV = REPO.parent / "shared" / "data" / "esconv"
TEMPERATURES = (0.5, 0.9, 1.2)
POLICIES = ("base", "sft")


def pool_manifest(store: Path, args: argparse.Namespace):
    """examples/smol-local.yaml with the suite's prompts and a longer SFT on ESConv's train split."""
    from therapy_rlhf.contracts.spec import parse_run

    doc = yaml.safe_load((REPO / "examples" / "smol-local.yaml").read_text())
    doc["metadata"]["name"] = "response-pool"
    spec = doc["spec"]
    spec["storage"] = {"localPath": str(store)}
    # maxExamples caps the train and the dev split alike (dev: the validation passes)
    spec["sft"].update(
        dataset={"path": str(args.sft_data), "maxExamples": args.sft_examples},
        maxSteps=args.sft_steps, batchSize=4, evalSteps=args.sft_steps, learningRate=args.sft_lr,
    )
    spec["ppo"].update(builtinSuite=True, prompts=spec["ppo"]["prompts"][1:])
    spec["ppo"]["generation"]["maxNewTokens"] = args.max_new_tokens
    return parse_run(doc, "response pool")


def sample_policy(ctx, policy: str, args: argparse.Namespace, out: list[dict]) -> None:
    """Every prompt x temperature x sample of one policy, appended to ``out``."""
    from therapy_rlhf.jobs import generate, models, prompts, safety
    from therapy_rlhf.feedback.selection import safety_flagged

    spec = ctx.spec
    adapter = ctx.paths.sft_adapter() if policy == "sft" else None
    model, tokenizer, _ = models.load_policy(ctx, adapter, trainable=False)
    prompt_list = prompts.load_prompts(spec.ppo)
    for t_index, temperature in enumerate(args.temperatures):
        started = time.perf_counter()
        rollouts, stats = generate.sample_responses(
            model, tokenizer, prompt_list, samples_per_prompt=args.samples, temperature=temperature,
            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed, round_no=t_index + 1,
            device="cpu", max_length=spec.model.max_length, system=spec.model.system_message,
        )
        for r in rollouts:
            screen = safety.screen(r.prompt.text, r.text, resources=spec.safety.crisis_resources)
            flagged = safety_flagged(SimpleNamespace(safety=screen))
            out.append({
                "id": f"{policy}-t{temperature:g}-{r.prompt.id}-s{r.sample:02d}",
                "policy": policy, "temperature": temperature, "prompt_id": r.prompt.id,
                "category": r.prompt.category, "prompt": r.prompt.text, "sample": r.sample,
                "response": r.text, "response_token_ids": r.response_ids,
                "crisis_cue": bool(screen.crisis_cues), "safety_flagged": flagged,
            })
        print(f"  {policy} t={temperature:g}: {len(rollouts)} responses, {stats['new_tokens']} tokens in "
              f"{time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)


def generate_pool(args: argparse.Namespace) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    from therapy_rlhf.jobs import sft
    from therapy_rlhf.jobs.common import JobContext
    from therapy_rlhf.store.backends import LocalStore

    out: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="response-pool-") as tmp:
        store = LocalStore(Path(tmp))
        manifest = pool_manifest(Path(tmp), args)
        if "sft" in args.policies:
            started = time.perf_counter()
            ctx = JobContext(kind="sft", manifest=manifest, round=0, store=store)
            try:
                sft.main(ctx)
            finally:
                ctx.close()
            metrics = store.read_json(ctx.paths.sft_metrics())
            print(f"  sft: {metrics['steps']} steps on {metrics['train_examples']} train examples, eval loss "
                  f"{metrics['eval_loss']} in {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
        for policy in args.policies:
            ctx = JobContext(kind="generate", manifest=manifest, round=1, store=store)
            try:
                sample_policy(ctx, policy, args, out)
            finally:
                ctx.close()
    return out


def load_pool(path: Path) -> list[dict]:
    """The pool's responses, one dict each (as written by ``main``)."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_pool(path: Path, pool: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # mtime 0: the same pool gives the same bytes
    with gzip.GzipFile(path, "wb", mtime=0) as fh:
        fh.write("".join(json.dumps(p, sort_keys=True) + "\n" for p in pool).encode("utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "data" / "pool.jsonl.gz")
    parser.add_argument("--samples", type=int, default=11, help="samples per prompt, temperature and policy")
    parser.add_argument("--temperatures", type=float, nargs="+", default=list(TEMPERATURES))
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate() call")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--sft-data", default=str(ESCONV / "FailedESConv.json"))
    parser.add_argument("--sft-steps", type=int, default=30)
    parser.add_argument("--sft-examples", type=int, default=160)
    parser.add_argument("--sft-lr", type=float, default=1e-4)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    pool = generate_pool(args)
    write_pool(args.out, pool)
    print(f"{len(pool)} responses ({', '.join(args.policies)}; temperatures {args.temperatures}) -> {args.out} "
          f"({args.out.stat().st_size} bytes) in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
