"""A few of a round's answers in the local runner's output, so a person sees what the model says.

The local runner with ``--scoring auto`` prints, after the simulated rater has
scored a round, one answer per prompt (the first sample) with its simulated
reward, and the batch's fluency (``rounds/r/fluency.json``). Text only: the
preview reads the store like ``status`` does and changes nothing.
"""

from __future__ import annotations

import textwrap

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.rounds import load_round
from therapy_rlhf.store.runs import read_fluency
from therapy_rlhf.contracts.spec import RunSpec
from therapy_rlhf.store.backends import Store

WIDTH = 100  # characters of an answer shown (the whole answer is in the batch)


def round_lines(store: Store, paths: RunPaths, spec: RunSpec, round_no: int, prompts: int = 2) -> list[str]:
    """Lines showing up to ``prompts`` answers of round ``round_no`` and the batch's fluency."""
    state = load_round(store, paths, round_no, feedback=spec.feedback)
    rewards = {response_id: rating.reward for (response_id, _), rating in state.latest().items()}
    seen: set[str] = set()
    lines: list[str] = []
    for r in state.responses:
        if r.prompt_id in seen or len(seen) >= prompts:
            continue
        seen.add(r.prompt_id)
        reward = f"{rewards[r.id]:.2f}" if r.id in rewards else "-"
        lines.append(f"  patient: {textwrap.shorten(r.prompt, WIDTH)}")
        lines.append(f"  model:   {textwrap.shorten(r.response, WIDTH) or '(empty)'}  [reward {reward}]")
    fluency = read_fluency(store, paths, round_no)
    if fluency:
        lines.append(
            f"  fluency: log-likelihood under the base {fluency.get('mean_log_likelihood')}, "
            f"dictionary words {fluency.get('dictionary_share')}"
        )
    return lines
