"""Does active selection spend the expert's ratings better? Reward against expert ratings, per strategy.

    OMP_NUM_THREADS=1 python bench/expert_time.py --plot bench/expert_time.png   # the RESULTS.md run (~10 min, 2 cores)
    OMP_NUM_THREADS=1 python bench/expert_time.py --rounds 2 --seeds 0 --rules readable --strategies all active

Every run is the real round loop of ``therapy_rlhf.jobs.learning`` (the generate and ppo jobs in process,
ratings through ``submit_rating``, the gate through ``close_gate``) on the tiny Mistral with the learning
check's settings, 4 prompts x 32 samples per round, and differs only in ``feedback.selection``:

* ``all``: every response to the (simulated) experts, 128 ratings a round (the paper's method);
* ``uniform-omit``: ``budget`` responses a round picked at random across prompts, the rest left out;
* ``active-omit``: ``budget`` picks where the reward model is least certain, the rest left out;
* ``uniform-model``: uniform picks, the rest scored by the reward model (prediction - 1 x uncertainty);
* ``active-model``: picks where the reward model is least certain, the rest scored by it;
* ``active-shuffled``: active-model with the experts' judgements dealt out at random among the picked
  responses (the control: same rewards, no link between text and score);
* ``all-shuffled``: ``all`` with the judgements dealt out at random over the whole batch (issue 21's control).

``--longer F`` lets every budgeted arm (mode not ``all``) run F times as many rounds (issue 21: at 25 %
a round, up to twice as many rounds), so the same ratings are spread over more updates; the summary then
says where each arm first reached `all`'s final reward (mean of its last three points, less 0.03; a
trailing mean over three points, so one lucky round does not count) and what share of `all`'s ratings
that took.

    OMP_NUM_THREADS=1 python bench/expert_time.py --rounds 10 --longer 2 --strategies all uniform-omit \\
        active-omit all-shuffled --seeds 0 1 2 3 4 --plot bench/expert_time_longer.png   # issue 21's run

Two simulated experts: ``empathy`` (the simulated rater's empathy word share, a word list) and ``readable``
(the share of the response's whitespace-separated chunks that are plain words, a rule about form, not a
word list). The true reward of a round is the rule's mean over its whole fresh batch (128 responses sampled
from the policy before that round's update, rated or not), plus one fresh batch after the last update.
The reward model's held-out error is each gate's check: MAE of its predictions, made before the experts
saw the round, against their rewards.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

STRATEGIES = {
    "all": ({"mode": "all"}, False),
    "uniform-omit": ({"mode": "uniform", "unselected": "omit"}, False),
    "active-omit": ({"mode": "active", "unselected": "omit"}, False),
    "uniform-model": ({"mode": "uniform", "unselected": "model"}, False),
    "active-model": ({"mode": "active", "unselected": "model"}, False),
    "active-shuffled": ({"mode": "active", "unselected": "model"}, True),
    "all-shuffled": ({"mode": "all"}, True),
}
# issue 21's target: a budgeted arm reaches `all`'s final reward (mean of its last three rounds, less this
# margin) with at most TARGET_SHARE of `all`'s expert ratings.
TARGET_MARGIN, TARGET_SHARE, TARGET_WINDOW = 0.03, 0.5, 3
RULES = ("empathy", "readable")
SHUFFLE_SEED = 7
# The learning check's prompts with the paper's prompt swapped for one without a crisis cue: a response to
# "hopeless" always goes to the experts (safety first), which would spend the whole budget on one prompt
# and leave nothing for the strategies to differ on.
PROMPTS = [
    {"id": "down-lately", "text": "I've been feeling really down lately and I don't know why.", "category": "depression"},
    {"id": "anxious-exams", "text": "My exams are next week and I can't stop panicking.", "category": "anxiety"},
    {"id": "grief-father", "text": "My father died last month and I still can't accept it.", "category": "grief"},
    {"id": "lonely-move", "text": "I moved to a new city and I feel so alone.", "category": "other"},
]
# --crisis adds the paper's prompt: every response to it goes to the experts, outside the budget (issue 21)
CRISIS_PROMPT = {"id": "paper-depressed-hopeless", "text": "I'm feeling depressed and hopeless. Can you help me?",
                 "category": "depression"}
_CHUNK = re.compile(r"^[A-Za-z']+[.,?!]?$")


def readable(text: str) -> float:
    """Share of whitespace-separated chunks that are plain words (letters, an apostrophe, one final mark)."""
    chunks = text.split()
    return sum(bool(_CHUNK.match(c)) for c in chunks) / len(chunks) if chunks else 0.0


def make_judge(rule: str):
    from therapy_rlhf.feedback import simrater
    from therapy_rlhf.contracts.records import Rating

    def judge(response, feedback):
        if rule == "empathy":
            return simrater.judge(response, feedback)
        value = round(min(1.0, max(0.0, readable(response.response))), 4)
        return Rating(
            response_id=response.id, rater=simrater.DEFAULT_RATER, criteria={c.name: value for c in feedback.rubric},
            reward=value, comment="SIMULATED RATER (readability rule, not a clinician)", client=simrater.CLIENT,
        )

    return judge


def one_run(rule: str, strategy: str, seed: int, rounds: int, budget: int, workdir: str, per_prompt: int = 32,
            crisis: bool = False) -> dict:
    """One run; returns its per-round curve (true reward, cumulative expert ratings, model error)."""
    import torch
    import transformers

    torch.set_num_threads(1)
    transformers.logging.disable_progress_bar()
    from therapy_rlhf.jobs import generate, learning
    from therapy_rlhf.jobs.common import JobContext, make_logger
    from therapy_rlhf.contracts.layout import RunPaths
    from therapy_rlhf.feedback.rounds import read_batch, read_gate
    from therapy_rlhf.feedback.selection import read_selection
    from therapy_rlhf.store.backends import LocalStore

    selection, shuffled = STRATEGIES[strategy]
    store_dir = Path(workdir) / f"{rule}-{strategy}-{seed}"
    feedback = {"selection": {**selection, "budget": budget, "minRatings": 16, "seed": seed}}
    manifest = learning.learning_manifest(
        store_dir, name="expert-time", feedback=feedback, rounds=rounds + 1,
        generation={"maxNewTokens": 8, "temperature": 0.5, "topP": 1.0, "topK": 0, "batchSize": 4, "seed": seed},
        seed=seed, prompts=PROMPTS + ([CRISIS_PROMPT] if crisis else []), samplesPerPrompt=per_prompt,
    )
    store = LocalStore(store_dir)
    judge = make_judge(rule)
    started = time.perf_counter()
    results = learning.run_loop(
        manifest, store, rounds, shuffle_seed=SHUFFLE_SEED + seed if shuffled else None, judge=judge
    )
    # One more fresh batch from the last policy: the reward after the last update.
    ctx = JobContext(kind="generate", manifest=manifest, round=rounds + 1, store=store, log=make_logger(),
                     private_dir=str(store_dir.parent / f"private-{store_dir.name}"))
    ctx.log.setLevel(40)
    try:
        generate.main(ctx)
    finally:
        ctx.close()
    batch, _, _ = read_batch(store, RunPaths(manifest.namespace, manifest.name), rounds + 1)
    final = statistics.fmean(judge(r, manifest.spec.feedback).reward for r in batch)
    cumulative, points = 0, []
    paths = RunPaths(manifest.namespace, manifest.name)
    for r in results:
        chosen, gate = read_selection(store, paths, r.round), read_gate(store, paths, r.round)
        check = gate.reward_model if gate is not None else None
        points.append({"round": r.round, "reward": round(r.mean_reward, 4), "ratings_before": cumulative,
                       "model_error": r.model_error, "model_scored": r.model_scored,
                       "model_decides": bool(chosen and chosen.model_decides),
                       "skill": None if check is None or not check.judged else check.skill,
                       "safety_selected": len(chosen.safety_selected) if chosen else 0})
        cumulative += r.expert_ratings
    points.append({"round": rounds + 1, "reward": round(final, 4), "ratings_before": cumulative,
                   "model_error": None, "model_scored": 0, "model_decides": False, "skill": None, "safety_selected": 0})
    print(f"  {rule:8s} {strategy:15s} seed {seed}: final {final:.3f} after {cumulative} expert ratings "
          f"({time.perf_counter() - started:.0f}s)", file=sys.stderr, flush=True)
    return {"rule": rule, "strategy": strategy, "seed": seed, "points": points}


def summarize(runs: list[dict], rounds: int) -> list[str]:
    """Markdown: per rule and arm, rounds, expert ratings (of them safety reviews), the reward at the end, and
    how often the reward model picked and with what judged skill."""
    out = ["| rule | arm | rounds | expert ratings (safety) | true reward, last 3 points (mean ± sd over seeds) | "
           "final fresh batch | rounds the model picked | judged skill, last 3 judgements |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    for rule in sorted({r["rule"] for r in runs}):
        for strategy in STRATEGIES:
            these = [r for r in runs if r["rule"] == rule and r["strategy"] == strategy]
            if not these:
                continue
            ends = [statistics.fmean(p["reward"] for p in r["points"][-TARGET_WINDOW:]) for r in these]
            finals = [r["points"][-1]["reward"] for r in these]
            cost = statistics.fmean(r["points"][-1]["ratings_before"] for r in these)
            safety = statistics.fmean(sum(p.get("safety_selected", 0) for p in r["points"]) for r in these)
            skills = [s for r in these for s in [p["skill"] for p in r["points"] if p.get("skill") is not None][-3:]]
            picks = STRATEGIES[strategy][0]["mode"] == "active" or STRATEGIES[strategy][0].get("unselected") == "model"
            decided = statistics.fmean(sum(p.get("model_decides", False) for p in r["points"]) for r in these) if picks else None
            sd = statistics.stdev(ends) if len(ends) > 1 else 0.0
            out.append(f"| {rule} | {strategy} | {len(these[0]['points']) - 1} | {cost:.0f} ({safety:.0f}) | "
                       f"{statistics.fmean(ends):.3f} ± {sd:.3f} | {statistics.fmean(finals):.3f} | "
                       + ("-" if decided is None else f"{decided:.1f}") + " | "
                       + (f"{statistics.fmean(skills):.3f}" if skills else "-") + " |")
    return out


def arm_rounds(strategy: str, args: argparse.Namespace) -> int:
    """Rounds an arm runs: ``--rounds``, times ``--longer`` for a budgeted arm."""
    return args.rounds if STRATEGIES[strategy][0]["mode"] == "all" else round(args.rounds * args.longer)


def trailing(points: list[dict], window: int = TARGET_WINDOW) -> list[tuple[int, float]]:
    """(ratings before the point, mean reward of the point and the window-1 before it), from the window-th point on."""
    return [(points[k]["ratings_before"], statistics.fmean(p["reward"] for p in points[k - window + 1 : k + 1]))
            for k in range(window - 1, len(points))]


def target_lines(runs: list[dict]) -> list[str]:
    """Issue 21's target per rule: `all`'s final reward (mean of its last three points, less the margin), and
    the ratings each arm spent until its trailing three-point mean first reached it (share of `all`'s)."""
    out = ["| rule | arm | ratings until the trailing 3-point mean reached `all`'s final - 0.03 | share of `all`'s ratings | seeds |",
           "|---|---|---:|---:|---:|"]
    for rule in sorted({r["rule"] for r in runs}):
        alls = [r for r in runs if r["rule"] == rule and r["strategy"] == "all"]
        if not alls:
            continue
        final = statistics.fmean(statistics.fmean(p["reward"] for p in r["points"][-TARGET_WINDOW:]) for r in alls)
        target = final - TARGET_MARGIN
        spent = statistics.fmean(r["points"][-1]["ratings_before"] for r in alls)
        out.append(f"| {rule} | (target: `all`'s final {final:.3f} - {TARGET_MARGIN} = {target:.3f}, `all` spent {spent:.0f}) | | | |")
        for strategy in STRATEGIES:
            these = [r for r in runs if r["rule"] == rule and r["strategy"] == strategy]
            if not these:
                continue
            hits = [next((n for n, m in trailing(r["points"]) if m >= target), None) for r in these]
            reached = [h for h in hits if h is not None]
            cost = statistics.fmean(reached) if reached else None
            share = "-" if cost is None else f"{cost / spent:.0%}" + (" (met)" if cost <= TARGET_SHARE * spent and len(reached) == len(hits) else "")
            out.append(f"| {rule} | {strategy} | " + ("not reached" if cost is None else f"{cost:.0f}")
                       + f" | {share} | {len(reached)}/{len(hits)} |")
    return out


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rules = sorted({r["rule"] for r in runs})
    fig, axes = plt.subplots(1, len(rules), figsize=(6 * len(rules), 4), dpi=100, squeeze=False)
    for ax, rule in zip(axes[0], rules):
        for i, strategy in enumerate(STRATEGIES):
            these = [r for r in runs if r["rule"] == rule and r["strategy"] == strategy]
            if not these:
                continue
            n = len(these[0]["points"])
            xs = [statistics.fmean(r["points"][k]["ratings_before"] for r in these) for k in range(n)]
            ys = [statistics.fmean(r["points"][k]["reward"] for r in these) for k in range(n)]
            ax.plot(xs, ys, marker="o", ms=3, color=f"C{i}", label=strategy, linestyle="--" if "shuffled" in strategy else "-")
        ax.set_xlabel("cumulative expert ratings")
        ax.set_ylabel("true reward of a fresh batch")
        ax.set_title(f"rule: {rule} (SIMULATED experts; mean over seeds)", fontsize=10)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="PPO rounds per run (default 8).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES))
    parser.add_argument("--strategies", nargs="+", choices=list(STRATEGIES), default=list(STRATEGIES))
    parser.add_argument("--budget", type=int, default=32, help="Expert ratings per round for uniform/active (default 32 of 128).")
    parser.add_argument("--longer", type=float, default=1.0,
                        help="budgeted arms (mode not all) run this many times --rounds (default 1; issue 21: 2)")
    parser.add_argument("--per-prompt", type=int, default=32, help="samples per prompt a round (4 prompts; default 32)")
    parser.add_argument("--crisis", action="store_true", help="add the paper's prompt (a crisis cue) as a fifth prompt")
    parser.add_argument("--workers", type=int, default=2, help="Runs in parallel, one torch thread each.")
    parser.add_argument("--json", type=Path, help="Append every run's curve here as it finishes (JSON lines).")
    parser.add_argument("--summarize", type=Path, help="Only print the tables (and --plot) of the runs in this --json file.")
    parser.add_argument("--plot", type=Path, help="Write the reward-vs-ratings plot here (PNG).")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.perf_counter()
    if args.summarize:
        runs = [json.loads(line) for line in args.summarize.read_text(encoding="utf-8").splitlines() if line.strip()]
        args.seeds = sorted({r["seed"] for r in runs})
    else:
        runs = []
        with tempfile.TemporaryDirectory(prefix="expert-time-") as tmp, ProcessPoolExecutor(args.workers) as pool:
            futures = [pool.submit(one_run, rule, strategy, seed, arm_rounds(strategy, args), args.budget, tmp, args.per_prompt, args.crisis)
                       for rule in args.rules for seed in args.seeds for strategy in args.strategies]
            for f in as_completed(futures):  # each run kept as it ends: a run cut short still leaves its curves
                runs.append(f.result())
                if args.json:
                    with args.json.open("a", encoding="utf-8") as fh:
                        fh.write(json.dumps(runs[-1]) + "\n")
    if args.summarize:
        print(f"{len(runs)} runs from {args.summarize}, seeds {' '.join(map(str, args.seeds))}")
    else:
        print(f"tiny:mistral, {len(PROMPTS) + args.crisis} prompts x {args.per_prompt} samples a round, {args.rounds} rounds (budgeted arms "
              f"{round(args.rounds * args.longer)}) + a final fresh batch, budget {args.budget}, seeds "
              f"{' '.join(map(str, args.seeds))}; {time.perf_counter() - started:.0f}s")
    print()
    print("\n".join(summarize(runs, args.rounds)))
    print()
    print("\n".join(target_lines(runs)))
    if args.plot:
        plot(runs, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
