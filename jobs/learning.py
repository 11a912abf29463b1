"""Does the PPO update learn? The whole round loop in one process, with the simulated rater.

Each round runs the real pieces in order: the ``generate`` job's ``main``,
the simulated rater's judgement of every response written through
``ratings.submit_rating``, ``ratings.close_gate``, and the ``ppo`` job's
``main``; adapters, value heads and KL state travel through the store exactly
as they do between Kubernetes Jobs. The curve is the mean simulated reward of
each round's fresh batch, i.e. of what the policy says *before* that round's
update.

The control keeps everything but the link between text and reward: every
round, the rater's judgements are dealt out to the batch's responses in a
random order (same rewards, same mean, no information about which text earned
them). A policy that learns from the rewards should climb; the control should
not.

Used by ``tests/jobs/test_learning.py`` and ``bench/ppo_learning.py``; the
settings live in the run spec (``learning_manifest``), not in code.
"""

from __future__ import annotations

import logging
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from therapy_rlhf.feedback import simrater
from therapy_rlhf.jobs import generate, ppo
from therapy_rlhf.jobs.common import JobContext, make_logger
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.gate import close_gate
from therapy_rlhf.feedback.predictions import PredictionsVault, PrivateFolder
from therapy_rlhf.feedback.selection import read_selection
from therapy_rlhf.feedback.rounds import load_round
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.contracts.records import Gate, PendingResponse, Rating
from therapy_rlhf.contracts.spec import FeedbackSpec, RunManifest, parse_run
from therapy_rlhf.store.backends import Store

LEARNING_PROMPTS = [
    {"id": "paper-depressed-hopeless", "text": "I'm feeling depressed and hopeless. Can you help me?", "category": "depression"},
    {"id": "anxious-exams", "text": "My exams are next week and I can't stop panicking.", "category": "anxiety"},
    {"id": "grief-father", "text": "My father died last month and I still can't accept it.", "category": "grief"},
    {"id": "lonely-move", "text": "I moved to a new city and I feel so alone.", "category": "other"},
]


def learning_manifest(
    store_dir: str | Path, name: str = "learning", feedback: dict[str, Any] | None = None, **ppo_overrides: Any
) -> RunManifest:
    """The run the learning check uses: tiny Mistral, no SFT, an empathy-only rubric.

    What makes PPO visible within a few CPU minutes is all here: short
    responses (one empathic word moves the reward a lot), a learning rate far
    above the paper's 1.4e-5 (which assumes a 7B model and 50 rounds), LoRA
    on the output head as well as attention, and a reward that is the empathy
    criterion alone. Sampling is untruncated, as every PPO rollout is: the
    random tiny model spreads its mass over its whole vocabulary, so a
    temperature of 0.5 (which the update applies too), lr 1e-2 and 32
    samples per prompt (a lower-variance batch) stand in for what
    transformers' implicit top-50 truncation did before the sampler was made
    the policy.
    """
    ppo_spec = {
        "rounds": 15,
        "prompts": LEARNING_PROMPTS,
        "samplesPerPrompt": 32,
        "generation": {"maxNewTokens": 8, "temperature": 0.5, "topP": 1.0, "topK": 0, "batchSize": 4, "seed": 0},
        "learningRate": 1e-2,
        "epochs": 4,
        "miniBatchSize": 16,
        "kl": {"initCoef": 0.05, "adaptive": True},
        "seed": 0,
    }
    ppo_spec.update(ppo_overrides)
    doc = {
        "apiVersion": "rlhf.therapy.dev/v1alpha1",
        "kind": "TherapyRLHFRun",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "model": {
                "source": "tiny:mistral",
                "maxLength": 256,
                "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["q_proj", "v_proj", "o_proj", "lm_head"]},
            },
            "storage": {"localPath": str(store_dir)},
            "sft": {"enabled": False},
            "ppo": ppo_spec,
            "feedback": {"rubric": [{"name": "empathy", "description": "Empathetic acknowledgment."}], **(feedback or {})},
            "evaluation": {"enabled": False, "checkpoints": ["base"]},
        },
    }
    return parse_run(doc, "learning_manifest")


@dataclass
class RoundResult:
    round: int
    mean_reward: float  # the rater's judgement of this round's whole batch (before any shuffling)
    stdev: float
    kl: float  # from the update
    seconds: float
    expert_ratings: int = 0  # ratings stored this round (responses feedback.selection sent to the experts)
    model_error: float | None = None  # the gate's reward-model check (MAE on the fresh expert rewards)
    model_skill: float | None = None  # its skill over the mean on the held-out ratings (None: not measured)
    model_decides: bool = False  # the round's selection let the model pick / score (judged skilled)
    model_scored: int = 0


Judge = Callable[[PendingResponse, FeedbackSpec], Rating]


def rate(
    store: Store, manifest: RunManifest, round_no: int, shuffle: random.Random | None, judge: Judge | None = None,
    vault: PredictionsVault | None = None,
) -> tuple[list[float], Gate]:
    """Have the simulated rater judge the batch; with ``shuffle``, deal the judgements out at random.

    Every response of the batch is judged (the policy's true reward under the rule), but only those
    ``feedback.selection`` sent to the experts are rated and reach the gate.
    """
    judge = judge or simrater.judge
    paths = RunPaths(manifest.namespace, manifest.name)
    feedback = manifest.spec.feedback
    state = load_round(store, paths, round_no, feedback=feedback)
    judged = [judge(r, feedback) for r in state.responses]
    rewards = [j.reward for j in judged] + [judge(r, feedback).reward for r in state.not_sent]
    order = list(range(len(judged)))
    if shuffle is not None:
        shuffle.shuffle(order)
    for response, j in zip(state.responses, (judged[i] for i in order)):
        submit_rating(store, paths, state, j.model_copy(update={"response_id": response.id}), feedback)
    gate = close_gate(store, paths, round_no, feedback, closed_by="learning-check", vault=vault).gate
    return rewards, gate  # type: ignore[return-value]


def run_loop(
    manifest: RunManifest,
    store: Store,
    rounds: int,
    *,
    shuffle_seed: int | None = None,
    cache_dir: Path | None = None,
    report: Callable[[RoundResult], None] | None = None,
    judge: Judge | None = None,
) -> list[RoundResult]:
    """Run ``rounds`` rounds in process; ``shuffle_seed`` turns on the shuffled-reward control."""
    quiet = make_logger()
    quiet.setLevel(logging.WARNING)
    shuffle = random.Random(shuffle_seed) if shuffle_seed is not None else None
    # This loop is the executor: the reward model's predictions wait in its own private folder for the gate.
    with tempfile.TemporaryDirectory(prefix="therapy-rlhf-private-") as tmp:
        private = Path(tmp)
        results = []
        for r in range(1, rounds + 1):
            started = time.perf_counter()
            for kind, module in (("generate", generate), ("ppo", ppo)):
                ctx = JobContext(kind=kind, manifest=manifest, round=r, store=store, log=quiet, private_dir=str(private))
                if cache_dir is not None:
                    ctx.cache_dir = cache_dir
                try:
                    module.main(ctx)
                finally:
                    ctx.close()
                if kind == "generate":
                    rewards, gate = rate(store, manifest, r, shuffle, judge, PrivateFolder(private))
                    chosen = read_selection(store, RunPaths(manifest.namespace, manifest.name), r)
            metrics = store.read_json(RunPaths(manifest.namespace, manifest.name).policy_metrics(r))
            result = RoundResult(
                round=r,
                mean_reward=statistics.fmean(rewards),
                stdev=statistics.pstdev(rewards),
                kl=metrics["kl"],
                seconds=time.perf_counter() - started,
                expert_ratings=sum(len(x.ratings) for x in gate.rewards.values()),
                model_error=gate.reward_model.mae if gate.reward_model else None,
                model_skill=gate.reward_model.skill if gate.reward_model else None,
                model_decides=bool(chosen and chosen.model_decides),
                model_scored=len(gate.model_scored),
            )
            results.append(result)
            if report:
                report(result)
    return results

