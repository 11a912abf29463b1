"""The evaluation report: a Markdown table like the paper's Table 1 and the reward curve.

``results_table(results)`` renders ``eval/results.json`` as Markdown (one row
per system; BERTScore, ROUGE-1 and F1 first as in the paper, then ROUGE-L,
BLEU-2 and Distinct-1/2). ``reward_curve(store, paths, rounds)`` reads every
closed round's ``gate.json`` and ``plot_reward_curve`` draws the mean reward
per round with the spread across responses (like the paper's Figure 2).
``rating_source`` says whether those rewards came from people or from the
simulated rater, and every title says so: simulated scores are never called
an expert's.
"""

from __future__ import annotations

import statistics
import textwrap
from pathlib import Path
from typing import Any

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.rounds import changed_after_gate, read_gate
from therapy_rlhf.store.runs import read_fluency
from therapy_rlhf.contracts.records import Rating, RecordError, parse_rating_id, parse_record
from therapy_rlhf.feedback.simrater import is_simulated
from therapy_rlhf.store.backends import Store, StoreError

COLUMNS = [
    ("bertscore", "BERTScore"),
    ("rouge1", "ROUGE-1"),
    ("f1", "F1"),
    ("rougeL", "ROUGE-L"),
    ("bleu2", "BLEU-2"),
    ("distinct1", "Dist-1"),
    ("distinct2", "Dist-2"),
]


def results_table(results: dict[str, Any]) -> str:
    """Markdown table of every system's scores (only the metrics that were computed)."""
    systems = results.get("systems", [])
    present = [(k, title) for k, title in COLUMNS if any(k in s.get("scores", {}) for s in systems)]
    head = "| Model | " + " | ".join(t for _, t in present) + " | n |"
    rule = "|---|" + "---:|" * len(present) + "---:|"
    rows = []
    for s in systems:
        cells = [f"{s['scores'][k]:.4f}" if k in s.get("scores", {}) else "-" for k, _ in present]
        rows.append(f"| {s['label']} | " + " | ".join(cells) + f" | {s.get('n', '-')} |")
    return "\n".join([head, rule, *rows])


def render_markdown(results: dict[str, Any], curve_key: str | None = None) -> str:
    """The whole eval/report.md."""
    lines = [
        f"# Evaluation of {results.get('run', 'run')}",
        "",
        f"Reference-based metrics on {results.get('examples', 0)} ESConv test contexts "
        f"from `{results.get('dataset', '?')}` (greedy decoding, at most "
        f"{results.get('max_new_tokens', '?')} new tokens; BERTScore encoder `{results.get('bertscore_model', '-')}`).",
        "",
        results_table(results),
        "",
    ]
    lines += definitions(results)
    curve = results.get("reward_curve") or []
    if curve:
        lines.append(rounds_table(curve, curve_title(results.get("reward_source", "raters"))))
        if any(p.get("model_scored") or p.get("model_error") is not None for p in curve):
            lines += [
                "## The reward model's part (feedback.selection)",
                "",
                "The table above is experts' rewards only. Responses the experts did not see and the reward model "
                "scored are counted here, never above; the model's error is on each round's fresh expert rewards, "
                "predicted before the experts gave them.",
                "",
                "| Round | Model-scored responses | Model error (MAE) | Compared | Drift |",
                "|---:|---:|---:|---:|---|",
            ]
            lines += [
                f"| {p['round']} | {p.get('model_scored', 0)} | "
                + (f"{p['model_error']:.3f}" if p.get("model_error") is not None else "-")
                + f" | {p.get('model_compared', 0)} | {'yes' if p.get('model_drifted') else 'no'} |"
                for p in curve
            ]
            lines.append("")
    changed = [p for p in curve if p.get("changed_after_gate")]
    if changed:
        lines += [
            "**Warning:** ratings changed in the store after their gate closed ("
            + ", ".join(f"round {p['round']}: {p['changed_after_gate']}" for p in changed)
            + "); every number here is what the gates froze, which is what trained.",
            "",
        ]
    if curve_key:
        lines += [f"Reward curve: `{curve_key}`", ""]
    return "\n".join(lines)


def rounds_table(curve: list[dict[str, Any]], title: str) -> str:
    """The per-round reward table (Markdown) under a heading, with each batch's fluency, ending with a blank line."""
    lines = [
        f"## {title}",
        "",
        "Fluency is measured without any rater (docs/metrics.md): the batch's mean token log-likelihood under the "
        "frozen base model, and its share of dictionary words.",
        "",
        "| Round | Mean | Std | Min | Max | Responses | Fluency (log-lik.) | Dictionary words |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {p['round']} | {p['mean']:.3f} | {p['std']:.3f} | {p['min']:.3f} | {p['max']:.3f} | {p['n']} | "
        f"{_num(p.get('fluency_log_likelihood'), '.2f')} | {_num(p.get('dictionary_share'), '.0%')} |"
        for p in curve
    ]
    if not curve:
        lines.append("| - | no closed round yet | | | | | | |")
    return "\n".join(lines) + "\n"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


SOURCE_TITLES = {
    "raters": "Rater scores (reward) per PPO round",
    "simulated": "SIMULATED rater scores (reward) per PPO round: a word-list heuristic, not a clinician",
    "mixed": "Rater scores (reward) per PPO round, some from the SIMULATED rater",
}


def curve_title(source: str) -> str:
    return SOURCE_TITLES.get(source, SOURCE_TITLES["raters"])


def rating_source(store: Store, paths: RunPaths, rounds: int) -> str:
    """'simulated', 'mixed' or 'raters': who gave the ratings the closed gates froze."""
    simulated = human = 0
    for r in range(1, rounds + 1):
        gate = read_gate(store, paths, r)
        if gate is None:
            continue
        for rating_id in sorted({i for rr in gate.rewards.values() for i in rr.ratings}):
            try:
                # The content the gate froze (what trained); the stored object only for gates older than that.
                doc = gate.frozen.get(rating_id) or store.read_json(paths.rating(r, *parse_rating_id(rating_id)))
                rating = parse_record(Rating, doc, rating_id)
            except (StoreError, RecordError, ValueError):
                continue  # not readable: counted as neither
            simulated += is_simulated(rating)
            human += not is_simulated(rating)
    if simulated and human:
        return "mixed"
    return "simulated" if simulated else "raters"


def definitions(results: dict[str, Any]) -> list[str]:
    """One line saying how each number was computed (docs/metrics.md has the definitions)."""
    bs = results.get("bertscore") or {}
    parts = []
    if bs:
        parts.append(
            f"BERTScore = F1 with `{bs.get('model')}`, layer {bs.get('layer')} ({bs.get('layer_from')}), "
            + ("rescaled with bert-score's baseline" if bs.get("rescaled") else "not rescaled")
        )
    parts.append("F1 = SQuAD token F1; ROUGE = rouge-score F-measure, no stemming; means over examples")
    where = ""
    if results.get("conversations"):
        where = f" {results['examples']} examples from {results['conversations']} conversations ({results.get('split', '?')})."
    return ["; ".join(parts) + " (docs/metrics.md)." + where, ""]


def reward_curve(store: Store, paths: RunPaths, rounds: int) -> list[dict[str, float]]:
    """Mean, spread and count of the gated expert rewards of each closed round (model scores never in them)."""
    points = []
    for r in range(1, rounds + 1):
        gate = read_gate(store, paths, r)
        if gate is None:
            continue
        rewards = [rr.reward for rr in gate.rewards.values()]
        if not rewards:
            continue
        fluency = read_fluency(store, paths, r) or {}
        points.append(
            {
                "round": r,
                "mean": round(statistics.fmean(rewards), 6),
                "std": round(statistics.pstdev(rewards), 6),
                "min": round(min(rewards), 6),
                "max": round(max(rewards), 6),
                "n": len(rewards),
                "model_scored": len(gate.model_scored),
                "model_error": gate.reward_model.mae if gate.reward_model else None,
                "model_compared": gate.reward_model.responses if gate.reward_model else 0,
                "model_drifted": bool(gate.reward_model and gate.reward_model.drifted),
                "fluency_log_likelihood": fluency.get("mean_log_likelihood"),
                "dictionary_share": fluency.get("dictionary_share"),
                # ratings whose stored object changed after the gate: the rewards above are the frozen ones
                "changed_after_gate": len(changed_after_gate(store, paths, r, gate)),
            }
        )
    return points


def plot_reward_curve(points: list[dict[str, float]], out: Path, title: str = SOURCE_TITLES["raters"]) -> Path:
    """PNG: mean reward per round, a band of +-1 std and the min..max range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    if points:
        xs = [p["round"] for p in points]
        mean = [p["mean"] for p in points]
        lo = [max(0.0, p["mean"] - p["std"]) for p in points]
        hi = [min(1.0, p["mean"] + p["std"]) for p in points]
        ax.fill_between(xs, [p["min"] for p in points], [p["max"] for p in points], color="C0", alpha=0.12, label="min..max")
        ax.fill_between(xs, lo, hi, color="C0", alpha=0.3, label="mean +- std")
        ax.plot(xs, mean, marker="o", label="mean reward")
        share = [(p["round"], p["dictionary_share"]) for p in points if p.get("dictionary_share") is not None]
        if share:  # fluency beside the reward: a rising reward on falling fluency is a policy learning noise
            ax.plot(*zip(*share), color="C2", linestyle="--", marker="s", label="dictionary-word share")
        ll = [(p["round"], p["fluency_log_likelihood"]) for p in points if p.get("fluency_log_likelihood") is not None]
        if ll:
            right = ax.twinx()
            right.plot(*zip(*ll), color="C3", linestyle=":", marker="^", label="log-likelihood under base")
            right.set_ylabel("mean token log-likelihood under the base (nats)", color="C3", fontsize=8)
            # a fixed floor well below fluent text (-1..-2) and near noise (-log vocabulary), so a small
            # wobble does not look like a collapse
            right.set_ylim(min(-8.0, min(v for _, v in ll) - 0.5), 0.0)
            right.legend(loc="lower left", fontsize=8)
        ax.set_xticks(xs)
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no rated rounds yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("PPO round")
    ax.set_ylabel("reward (0..1)")
    ax.set_title("\n".join(textwrap.wrap(title, 64)), fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
