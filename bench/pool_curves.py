"""Pool benchmark (issue 21): how fast does the reward model learn a SIMULATED expert, per way of picking labels?

    OMP_NUM_THREADS=1 python bench/pool_curves.py --plot bench/pool_curves.png      # the RESULTS.md run
    OMP_NUM_THREADS=1 python bench/pool_curves.py --seeds 0 --experts form --checkpoints 25 50 100

No RL loop: the pool of real SmolLM2 responses in ``bench/data/pool.jsonl.gz`` (``bench/response_pool.py``)
is fixed, each of the three simulated experts (``bench/sim_experts.py``) knows the true score of every
response, and a strategy decides which responses get labelled. Per seed the pool is split once into a
test set (``--test-fraction``, never labelled) and candidates. At every checkpoint (number of labels)
the reward model is fitted (``reward_model.fit_reward_model``: hashed text, policy token ids and MiniLM
embeddings, the set chosen by its own cross-validation) to the labels so far (the expert's score plus
its noise, ``--noise``) and scored on the test set against the noise-free rule:

* skill score: 1 - MSE / MSE of predicting the test ratings' own mean;
* within-batch rank correlation: Spearman inside each (policy, temperature) group of the test set,
  averaged (a group is one round's batch of a policy: what PPO's whitened advantages see).

Strategies (all start from the same ``--start`` uniform labels of the seed):

* ``uniform``: the first n of a seeded permutation of the candidates (``uniform_order``);
* ``active``: refit after every ``--step`` labels (or a quarter more, whichever is larger) and take
  the unlabelled candidates the model is least certain of (largest ensemble+Bayesian spread), the selection job's ``active`` rule without its
  per-prompt round robin;
* ``kcenter``: diversity: greedy farthest-first on the MiniLM embeddings (the candidate farthest from
  every labelled one, one at a time), no model needed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sim_experts  # noqa: E402  (a sibling script, not a package)

REPO = Path(__file__).resolve().parents[1]
POOL = REPO / "bench" / "data" / "pool.jsonl.gz"
ESCONV_TRAIN = REPO.parent / "shared" / "data" / "esconv" / "FailedESConv.json"
STRATEGIES = ("uniform", "active", "kcenter")
CHECKPOINTS = (25, 50, 100, 150, 200, 300, 400, 600)
TARGET_UNIFORM_AT, TARGET_ACTIVE_BY = 400, 200


def split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(candidates, test) indices of a pool of ``n``: a seeded permutation, its first share is the test set."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def uniform_order(candidates: np.ndarray, seed: int) -> np.ndarray:
    """The order uniform labels the candidates in (its first n are its n labels)."""
    return candidates[np.random.default_rng(seed + 10_000).permutation(len(candidates))]


def kcenter_picks(embeddings: np.ndarray, labelled: list[int], candidates: np.ndarray, k: int) -> list[int]:
    """``k`` candidates, each the one farthest (cosine distance) from everything labelled so far."""
    pool = np.array([c for c in candidates if c not in set(labelled)])
    if not len(pool) or k <= 0:
        return []
    dist = 1.0 - (embeddings[pool] @ embeddings[labelled].T).max(axis=1) if labelled else np.full(len(pool), 2.0)
    picks: list[int] = []
    for _ in range(min(k, len(pool))):
        j = int(np.argmax(dist))
        picks.append(int(pool[j]))
        dist = np.minimum(dist, 1.0 - embeddings[pool] @ embeddings[pool[j]])
        dist[j] = -np.inf
    return picks


def fit(matrices: dict[str, np.ndarray], texts: list[str], labels: np.ndarray, idx: list[int], seed: int):
    from therapy_rlhf.feedback import reward_model as rm

    return rm.fit_reward_model([texts[i] for i in idx], labels[idx], {k: m[idx] for k, m in matrices.items()}, seed=seed)


def evaluate(model, matrices, truth: np.ndarray, test: np.ndarray, batches: list[str]) -> dict:
    from therapy_rlhf.feedback import reward_model as rm

    mean, _ = model.predict({k: m[test] for k, m in matrices.items()})
    skill = rm.skill_score(mean, truth[test])
    rho = rm.rank_correlation_within_batches(mean, truth[test], [batches[i] for i in test])
    return {"skill": None if skill is None else round(skill, 4), "rank": None if rho is None else round(rho, 4),
            "feature_set": model.feature_set}


def grow(strategy: str, labelled: list[int], n: int, order: np.ndarray, candidates: np.ndarray, fit_to, matrices: dict,
         embeddings: np.ndarray, step: int) -> list[int]:
    """``labelled`` grown to ``n`` candidates by ``strategy`` (``fit_to(indices)`` fits the reward model)."""
    labelled = list(labelled)
    while len(labelled) < n:
        # a refit after every ``step`` labels, or a quarter more once that is larger (what a run's rounds do)
        k = min(max(step, len(labelled) // 4), n - len(labelled))
        if strategy == "uniform":
            labelled = [int(i) for i in order[: len(labelled) + k]]
        elif strategy == "kcenter":
            labelled += kcenter_picks(embeddings, labelled, candidates, k)
        else:
            model = fit_to(labelled)
            taken = set(labelled)
            rest = np.array([c for c in candidates if c not in taken])
            _, spread = model.predict({name: m[rest] for name, m in matrices.items()})
            labelled += [int(rest[j]) for j in np.argsort(-spread, kind="stable")[:k]]
    return labelled


def curve(strategy: str, truth: np.ndarray, labels: np.ndarray, matrices: dict[str, np.ndarray], embeddings: np.ndarray,
          texts: list[str], batches: list[str], checkpoints: list[int], seed: int, test_fraction: float, start: int,
          step: int) -> list[dict]:
    """The strategy's learning curve: one evaluation per checkpoint (``embeddings``: k-center's space)."""
    candidates, test = split(len(texts), test_fraction, seed)
    order = uniform_order(candidates, seed)
    labelled = [int(i) for i in order[:start]]

    def fit_to(idx: list[int]):
        return fit(matrices, texts, labels, idx, seed)

    points = []
    for n in checkpoints:
        labelled = grow(strategy, labelled, min(n, len(candidates)), order, candidates, fit_to, matrices, embeddings, step)
        points.append({"labels": len(labelled), **evaluate(fit_to(labelled), matrices, truth, test, batches)})
    return points


def load_inputs(pool_path: Path, references_path: Path, noise: float, features: list[str]) -> dict:
    """Everything a curve reads: texts, {expert: true scores}, {expert: labels}, feature matrices offered
    to the model, MiniLM embeddings, batch labels."""
    from response_pool import load_pool

    from therapy_rlhf.feedback import rm_features

    pool = load_pool(pool_path)
    texts = [p["response"] for p in pool]
    embed = sim_experts.embedder()
    emb = embed(texts)
    refs = embed(sim_experts.reference_replies(str(references_path)))
    truth = sim_experts.score_all(texts, emb, refs)
    ids = [p["id"] for p in pool]
    build = {
        "hashed": lambda: rm_features.feature_matrix(texts),
        "tokens": lambda: rm_features.token_matrix([p["response_token_ids"] for p in pool]),
        "embedding": lambda: emb,
    }
    return {
        "pool": pool, "texts": texts, "truth": truth, "embeddings": emb,
        "labels": {e: sim_experts.noisy(s, ids, e, noise) for e, s in truth.items()},
        "matrices": {k: build[k]() for k in features},
        "batches": [f"{p['policy']}-t{p['temperature']:g}" for p in pool],
    }


_SHARED: dict = {}  # set before the worker processes fork


def one(job: tuple) -> dict:
    strategy, expert, seed, opts = job
    d = _SHARED
    started = time.perf_counter()
    points = curve(strategy, d["truth"][expert], d["labels"][expert], d["matrices"], d["embeddings"], d["texts"],
                   d["batches"], opts["checkpoints"], seed, opts["test_fraction"], opts["start"], opts["step"])
    print(f"  {expert:8s} {strategy:8s} seed {seed}: " + " ".join(f"{p['labels']}:{p['skill']}" for p in points)
          + f" ({time.perf_counter() - started:.0f}s)", file=sys.stderr, flush=True)
    return {"strategy": strategy, "expert": expert, "seed": seed, "points": points}


def _mean_at(runs: list[dict], n: int, key: str) -> tuple[float | None, float]:
    vals = [p[key] for r in runs for p in r["points"] if p["labels"] == n and p[key] is not None]
    if not vals:
        return None, 0.0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def target_check(runs: list[dict], expert: str) -> dict:
    """Uniform's mean skill at 400 labels, and the fewest labels at which active's mean skill reaches it."""
    uni = [r for r in runs if r["expert"] == expert and r["strategy"] == "uniform"]
    bar, _ = _mean_at(uni, TARGET_UNIFORM_AT, "skill")
    out = {"expert": expert, "uniform_at_400": bar}
    for strategy in STRATEGIES[1:]:
        these = [r for r in runs if r["expert"] == expert and r["strategy"] == strategy]
        if not these or bar is None:
            continue
        ns = sorted({p["labels"] for p in these[0]["points"]})
        reach = next((n for n in ns if (_mean_at(these, n, "skill")[0] or -9) >= bar), None)
        out[strategy] = reach
    return out


def table(runs: list[dict], key: str) -> list[str]:
    """Markdown: mean ± sd over seeds of ``key`` per expert, strategy and checkpoint."""
    ns = sorted({p["labels"] for r in runs for p in r["points"]})
    out = [f"| expert | strategy | " + " | ".join(str(n) for n in ns) + " |", "|---|---|" + "---:|" * len(ns)]
    for expert in [e for e in sim_experts.EXPERTS if any(r["expert"] == e for r in runs)]:
        for strategy in STRATEGIES:
            these = [r for r in runs if r["expert"] == expert and r["strategy"] == strategy]
            if not these:
                continue
            cells = []
            for n in ns:
                m, sd = _mean_at(these, n, key)
                cells.append("-" if m is None else f"{m:.3f} ± {sd:.3f}")
            out.append(f"| {expert} | {strategy} | " + " | ".join(cells) + " |")
    return out


def chosen_sets(runs: list[dict]) -> list[str]:
    """Which feature set cross-validation picked, counted per expert over every fit at 200+ labels."""
    out = []
    for expert in sorted({r["expert"] for r in runs}):
        counts: dict[str, int] = {}
        for r in runs:
            if r["expert"] == expert:
                for p in r["points"]:
                    if p["labels"] >= 200:
                        counts[p["feature_set"]] = counts.get(p["feature_set"], 0) + 1
        out.append(f"{expert}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])))
    return out


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    experts = [e for e in sim_experts.EXPERTS if any(r["expert"] == e for r in runs)]
    fig, axes = plt.subplots(2, len(experts), figsize=(5 * len(experts), 7), dpi=100, squeeze=False)
    for col, expert in enumerate(experts):
        for row, (key, label) in enumerate((("skill", "skill score (1 - MSE/MSE of mean)"), ("rank", "within-batch Spearman"))):
            ax = axes[row][col]
            for i, strategy in enumerate(STRATEGIES):
                these = [r for r in runs if r["expert"] == expert and r["strategy"] == strategy]
                if not these:
                    continue
                ns = sorted({p["labels"] for p in these[0]["points"]})
                stats = [_mean_at(these, n, key) for n in ns]
                xs = [n for n, s in zip(ns, stats) if s[0] is not None]
                ys = np.array([s[0] for s in stats if s[0] is not None])
                sd = np.array([s[1] for s in stats if s[0] is not None])
                ax.plot(xs, ys, marker="o", ms=3, color=f"C{i}", label=strategy)
                ax.fill_between(xs, ys - sd, ys + sd, color=f"C{i}", alpha=0.15)
            ax.set(xscale="log", xlabel="labels (expert ratings)", ylabel=label, xticks=ns)
            ax.set_xticklabels([str(n) for n in ns], fontsize=7)
            ax.minorticks_off()
            ax.set_title(f"SIMULATED expert: {expert}", fontsize=10)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=Path, default=POOL)
    parser.add_argument("--references", type=Path, default=ESCONV_TRAIN)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--experts", nargs="+", choices=sim_experts.EXPERTS, default=list(sim_experts.EXPERTS))
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--features", nargs="+", choices=("hashed", "tokens", "embedding"),
                        default=["hashed", "tokens", "embedding"], help="feature sets offered to the reward model")
    parser.add_argument("--checkpoints", type=int, nargs="+", default=list(CHECKPOINTS))
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--start", type=int, default=25, help="uniform labels every strategy starts from")
    parser.add_argument("--step", type=int, default=25, help="labels per refit of the active strategy")
    parser.add_argument("--noise", type=float, default=0.05, help="sd of the experts' noise on the labels")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--summarize", type=Path, help="only the tables (and --plot) of the curves in this --json file")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.perf_counter()
    if args.summarize:
        runs = json.loads(args.summarize.read_text(encoding="utf-8"))
        args.experts = [e for e in sim_experts.EXPERTS if any(r["expert"] == e for r in runs)]
        print(f"{len(runs)} curves from {args.summarize}\n")
    else:
        runs = compute(args)
        if args.json:
            args.json.write_text(json.dumps(runs, indent=1) + "\n", encoding="utf-8")
    report(runs, args.experts)
    if args.plot:
        plot(runs, args.plot)
    return 0


def compute(args: argparse.Namespace) -> list[dict]:
    """Every (expert, seed, strategy) curve, ``--workers`` at a time."""
    started = time.perf_counter()
    _SHARED.update(load_inputs(args.pool, args.references, args.noise, args.features))
    opts = {"checkpoints": sorted(args.checkpoints), "test_fraction": args.test_fraction, "start": args.start, "step": args.step}
    jobs = [(s, e, seed, opts) for e in args.experts for seed in args.seeds for s in args.strategies]
    with ProcessPoolExecutor(args.workers) as pool:
        runs = list(pool.map(one, jobs))
    n = len(_SHARED["texts"])
    print(f"pool {args.pool.name}: {n} responses; test {int(round(n * args.test_fraction))}; features {' '.join(args.features)}; "
          f"noise sd {args.noise}; seeds {' '.join(map(str, args.seeds))}; {time.perf_counter() - started:.0f}s\n")
    return runs


def report(runs: list[dict], experts: list[str]) -> None:
    print("Skill score on the test set (mean ± sd over seeds), by labels:\n")
    print("\n".join(table(runs, "skill")))
    print("\nWithin-batch rank correlation on the test set:\n")
    print("\n".join(table(runs, "rank")))
    print("\nTarget (active reaches uniform's 400-label skill with at most 200 labels):\n")
    for e in experts:
        t = target_check(runs, e)
        bar = t["uniform_at_400"]
        print(f"- {e}: uniform at 400 = " + ("-" if bar is None else f"{bar:.3f}") + "; " + ", ".join(
            f"{s} reaches it at {t[s] if t[s] is not None else 'never (in range)'}" for s in STRATEGIES[1:] if s in t)
            + (" -> MET" if t.get("active") is not None and t["active"] <= TARGET_ACTIVE_BY else " -> NOT met"))
    print("\nFeature set chosen by cross-validation (fits at 200+ labels): " + "; ".join(chosen_sets(runs)))


if __name__ == "__main__":
    raise SystemExit(main())
