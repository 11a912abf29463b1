"""The ``evaluate`` job: reference-based metrics for base, SFT, PPO checkpoints and external systems.

    python -m therapy_rlhf.jobs evaluate --run-config examples/tiny-local.yaml --round 0 --store ./local-store

For each ESConv test context (``evaluation.dataset``: the test split of a
whole ESConv JSON file, split by conversation exactly as the SFT job splits
it, or a file that is already a test split such as ESConv's
``testWithStrategy_short.tsv``; default the project's test fixture), at most
``evaluation.maxExamples`` of them spread across conversations, every checkpoint in
``evaluation.checkpoints`` answers with greedy decoding: ``base`` (adapter
disabled), ``sft`` (``sft/adapter``), ``final`` (the last round's policy) and
``round-N``. ``evaluation.externalResponses`` adds systems whose answers were
produced elsewhere: a JSONL file with ``response`` and either ``id`` (the
example ids listed in results.json) or ``context`` (the seeker's last
message). Each system's answers are scored against the reference responses
(``text_metrics``). Writes ``eval/report.md`` and ``eval/reward_curve.png``,
then ``eval/results.json`` LAST.

Every checkpoint is checked in the store, and the BERTScore model resolved
(layer, baseline, download), before any chat model is loaded, so a missing
one fails fast with one line naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from therapy_rlhf.jobs import data, models, report, text_metrics
from therapy_rlhf.jobs.common import JobContext, JobError

SAMPLES_IN_RESULTS = 5
PROMPT_BUDGET_FRACTION = 0.75


@dataclass
class System:
    name: str
    label: str
    kind: str  # "checkpoint" | "external"
    source: str | None  # adapter prefix in the store, external file, or None for base
    responses: list[str] | None = None
    example_idx: list[int] | None = None  # external systems may cover a subset


def checkpoint_prefix(ctx: JobContext, name: str) -> tuple[str | None, str]:
    """(adapter prefix, marker key) for 'base' | 'sft' | 'final' | 'round-N'."""
    paths = ctx.paths
    if name == "base":
        return None, ""
    if name == "sft":
        return paths.sft_adapter(), paths.sft_metrics()
    r = ctx.spec.ppo.rounds if name == "final" else int(name.split("-", 1)[1])
    return paths.policy_prefix(r), paths.policy_metrics(r)


def plan_systems(ctx: JobContext) -> list[System]:
    systems = []
    for name in ctx.spec.evaluation.checkpoints:
        prefix, marker = checkpoint_prefix(ctx, name)
        if marker and not ctx.store.exists(marker):
            raise JobError(
                f"checkpoint {name!r} missing from the store: {ctx.store.describe(marker)} does not exist"
            )
        label = {"base": "Base", "sft": "SFT (LoRA)", "final": "PPO (final)"}.get(name, f"PPO ({name})")
        systems.append(System(name, label, "checkpoint", prefix))
    for ext in ctx.spec.evaluation.external_responses:
        systems.append(System(ext.name, ext.name, "external", ext.path))
    return systems


def read_external(path: str, examples: list[data.Example]) -> tuple[list[int], list[str]]:
    """Match an external JSONL responses file to the examples by id or seeker's last message."""
    text = data.read_text(path)
    by_id = {ex.id: i for i, ex in enumerate(examples)}
    by_context = {ex.context[-1]["content"]: i for i, ex in enumerate(examples)}
    found: dict[int, str] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise JobError(f"external responses {path}, line {lineno}: not valid JSON ({err.args[0]})") from None
        if not isinstance(row, dict) or not isinstance(row.get("response"), str):
            raise JobError(f"external responses {path}, line {lineno}: expected an object with a 'response' string")
        idx = by_id.get(str(row.get("id"))) if "id" in row else by_context.get(" ".join(str(row.get("context", "")).split()))
        if idx is not None:
            found[idx] = row["response"]
    if not found:
        raise JobError(f"external responses {path}: no line matches an evaluation example by 'id' or 'context'")
    order = sorted(found)
    return order, [found[i] for i in order]


def generate_all(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int, device: str) -> list[str]:
    """Greedy answers for rendered prompts, batched with left padding."""
    import torch

    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.no_grad():
            ids = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        new = ids[:, batch["input_ids"].shape[1] :]
        out.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
    return out


def run_checkpoints(ctx: JobContext, systems: list[System], examples: list[data.Example]) -> None:
    """Load the base once, add each adapter by name, and answer every example."""
    ev = ctx.spec.evaluation
    base, tokenizer = models.load_base_model(ctx.spec.model, ctx.device, ctx.cache_dir)
    budget = max(16, int(ctx.spec.model.max_length * PROMPT_BUDGET_FRACTION))
    system = ctx.spec.model.system_message
    prompts = [
        models.format_chat(tokenizer, models.trim_context(tokenizer, ex.prompt_messages(), budget, system), system=system)
        for ex in examples
    ]
    adapters = [s for s in systems if s.kind == "checkpoint" and s.source]
    model = base
    for s in adapters:
        adapter_dir = ctx.fetch_prefix(s.source, f"checkpoint {s.name!r}")
        if model is base:
            from peft import PeftModel

            model = PeftModel.from_pretrained(base, str(adapter_dir), adapter_name=s.name)
        else:
            model.load_adapter(str(adapter_dir), adapter_name=s.name)
    model.eval()
    ctx.begin_work()
    batch_size = ctx.spec.ppo.generation.batch_size
    for s in systems:
        if s.kind != "checkpoint":
            continue
        ctx.progress("generating %d answers with %s", len(examples), s.name)
        if s.source is None and model is not base:
            with model.disable_adapter():
                s.responses = generate_all(model, tokenizer, prompts, ev.max_new_tokens, batch_size, ctx.device)
        else:
            if s.source:
                model.set_adapter(s.name)
            s.responses = generate_all(model, tokenizer, prompts, ev.max_new_tokens, batch_size, ctx.device)
        s.example_idx = list(range(len(examples)))


def select_examples(ev) -> data.Selection:
    """The evaluation examples: the dataset's test split, at most ``maxExamples`` spread across conversations."""
    chosen = data.load_split(ev.dataset, "test")
    chosen.examples = data.spread(chosen.examples, ev.max_examples, ev.dataset.split_seed)
    chosen.conversations = len({e.conversation or e.id for e in chosen.examples})
    return chosen


def make_scorer(ctx: JobContext) -> "text_metrics.BertScore | None":
    ev = ctx.spec.evaluation
    if "bertscore" not in ev.metrics:
        return None
    settings = text_metrics.bertscore_settings(
        ev.bertscore_model, ev.bertscore_model_type, ev.bertscore_layer, ev.rescale_with_baseline
    )
    ctx.progress("BERTScore: %s, layer %d (%s)%s", settings.model, settings.layer, settings.layer_from,
                 ", rescaled with baseline" if settings.rescaled else "")
    return text_metrics.BertScore(settings, ctx.device, cache_root=ctx.cache_dir)


def main(ctx: JobContext) -> None:
    ev = ctx.spec.evaluation
    if not ev.enabled:
        raise JobError("evaluation.enabled is false in this run; there is nothing for the evaluate job to do")
    systems = plan_systems(ctx)
    selection = select_examples(ev)
    examples = selection.examples
    ctx.progress("%d examples from %d conversations of %s (%s)", len(examples), selection.conversations,
                 selection.source, selection.describe()["split"])
    for s in systems:
        if s.kind == "external":
            s.example_idx, s.responses = read_external(s.source, examples)
    scorer = make_scorer(ctx)
    if any(s.kind == "checkpoint" for s in systems):
        run_checkpoints(ctx, systems, examples)
    ctx.begin_work()

    refs = [ex.response for ex in examples]
    results_systems = []
    for s in systems:
        s_refs = [refs[i] for i in s.example_idx]
        scores = text_metrics.compute(s.responses, s_refs, list(ev.metrics), scorer)
        ctx.progress("%s: %s", s.name, scores)
        results_systems.append(
            {"name": s.name, "label": s.label, "kind": s.kind, "source": s.source, "n": len(s_refs), "scores": scores}
        )

    paths = ctx.paths
    curve = report.reward_curve(ctx.store, paths, ctx.spec.ppo.rounds)
    out = ctx.scratch("eval")
    source = report.rating_source(ctx.store, paths, ctx.spec.ppo.rounds)
    report.plot_reward_curve(curve, out / "reward_curve.png", f"{ctx.manifest.name}: {report.curve_title(source)}")
    results: dict[str, Any] = {
        "run": f"{ctx.manifest.namespace}/{ctx.manifest.name}",
        "dataset": selection.source,
        "split": selection.describe()["split"],
        "conversations": selection.conversations,
        "examples": len(examples),
        "example_ids": [ex.id for ex in examples],
        "metrics": list(ev.metrics),
        "max_new_tokens": ev.max_new_tokens,
        "bertscore_model": scorer.settings.model if scorer else None,
        "bertscore": scorer.settings.describe() if scorer else None,
        "systems": results_systems,
        "reward_curve": curve,
        "reward_source": source,
        "report": paths.eval_report(),
        "plot": paths.eval_reward_curve(),
        "samples": [
            {
                "id": ex.id,
                "context": ex.context[-1]["content"],
                "reference": ex.response,
                "responses": {s.name: s.responses[s.example_idx.index(i)] for s in systems if i in s.example_idx},
            }
            for i, ex in enumerate(examples[:SAMPLES_IN_RESULTS])
        ],
    }
    (out / "report.md").write_text(render(results, paths.eval_reward_curve()), encoding="utf-8")
    if ctx.is_main_process:
        ctx.store.write_bytes(paths.eval_reward_curve(), (out / "reward_curve.png").read_bytes())
        ctx.store.write_bytes(paths.eval_report(), (out / "report.md").read_bytes())
    ctx.write_metrics(paths.eval_results(), results)


def render(results: dict[str, Any], curve_key: str) -> str:
    return report.render_markdown(results, curve_key)
