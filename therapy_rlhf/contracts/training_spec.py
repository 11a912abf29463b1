"""The run spec's training sections: SFT (data, splits) and PPO (prompts, generation, KL, the update)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from therapy_rlhf.contracts.layout import MAX_ROUND  # rounds are four digits in store keys

from therapy_rlhf.contracts.spec_base import MAX_SEED, PAPER_PROMPT, ItemId, Probability, SpecModel


class SplitRatios(SpecModel):
    """Shares of a whole dataset's conversations in train, dev and test (the ESConv literature's 70/15/15)."""

    train: float = Field(0.7, gt=0, lt=1)
    dev: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitRatios":
        total = self.train + self.dev + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + dev + test must sum to 1 (got {total:g})")
        return self


DATASET_SPLITS = ("auto", "train", "dev", "test", "all")


class DatasetSpec(SpecModel):
    """An ESConv-format dataset: the official JSON or the context/response TSV."""

    path: str | None = Field(
        None,
        description="File path or s3:// key; empty means the small fixture shipped with the project.",
    )
    format: Literal["auto", "esconv-json", "esconv-tsv"] = Field(
        "auto", description="'auto' picks by file extension."
    )
    split: Literal[DATASET_SPLITS] = Field(  # type: ignore[valid-type]
        "auto",
        description="Part of a whole-dataset JSON file to use, split by conversation: 'auto' is what the job "
        "needs (SFT trains on train and validates on dev, evaluation uses test); 'all' uses the whole file. "
        "A TSV file (ESConv's released dev/test files) or the fixture is already a split and is used whole.",
    )
    split_ratios: SplitRatios = Field(default_factory=SplitRatios)
    split_seed: int = Field(
        13, ge=0, le=MAX_SEED, description="Seed of the conversation shuffle (13, as in ESConv's reference preprocessing); "
        "also picks which examples a maxExamples cap keeps."
    )
    max_examples: int | None = Field(
        None, ge=1, description="Cap on examples (for quick runs), spread across conversations."
    )


class SftSpec(SpecModel):
    """The LoRA SFT baseline on ESConv (TRL SFTTrainer)."""

    enabled: bool = Field(True, description="Run SFT before PPO; the PPO policy then starts from it.")
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    epochs: float = Field(1.0, gt=0, le=100)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many steps.")
    learning_rate: float = Field(2e-4, gt=0, le=1)
    batch_size: int = Field(4, ge=1, le=1024)
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    validation_fraction: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="Share of the examples held out for validation, whole conversations at a time, when the "
        "dataset is already a split (TSV, fixture, split: all); a whole JSON dataset validates on its dev split.",
    )
    early_stopping_patience: int = Field(2, ge=1, description="Evaluations without improvement.")
    eval_steps: int = Field(50, ge=1, description="Steps between validation passes.")
    seed: int = Field(0, ge=0, le=MAX_SEED)


# ----------------------------------------------------------------------- PPO


class PromptSpec(SpecModel):
    """One patient prompt for PPO rounds."""

    id: ItemId
    text: str = Field(..., min_length=1, max_length=8000)
    category: Literal["depression", "anxiety", "grief", "trauma", "crisis", "other"] = "other"


class GenerationSpec(SpecModel):
    """Sampling settings for the rollouts the psychologist rates.

    The sampler must be the policy PPO updates: the update scores every token
    under softmax(logits / temperature), exactly what was sampled, so
    truncation (topP < 1, topK > 0) is refused for PPO rounds.
    """

    max_new_tokens: int = Field(128, ge=1, le=4096)
    temperature: float = Field(
        0.7, gt=0, le=5, description="Sampling temperature; the PPO update applies the same one to its logits."
    )
    top_p: Probability = Field(1.0, description="Must be 1 (no nucleus truncation) for PPO rollouts.")
    top_k: int = Field(0, ge=0, description="Must be 0 (no top-k truncation) for PPO rollouts.")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    batch_size: int = Field(8, ge=1, le=1024, description="Prompts per generate() call.")

    @field_validator("top_p", "top_k")
    @classmethod
    def _untruncated(cls, value: float, info: Any) -> float:
        neutral, kind = {"top_p": (1.0, "nucleus"), "top_k": (0, "top-k")}[info.field_name]
        if value != neutral:
            raise ValueError(
                f"must be {neutral} for PPO rollouts: the update scores tokens under the untruncated policy, "
                f"so {kind} sampling would make the sampler differ from the policy"
            )
        return value


class KlSpec(SpecModel):
    """Per-token KL penalty against the reference, the policy PPO started from (the frozen SFT
    adapter when SFT ran, the base model otherwise); TRL 0.11 defaults."""

    init_coef: float = Field(0.2, ge=0, le=100)
    adaptive: bool = True
    target: float = Field(6.0, gt=0)
    horizon: int = Field(10000, ge=1)


class StoppingSpec(SpecModel):
    """Stop, or ask, when the reward has stopped rising (issue 21): after a round's update, the slope of the
    gates' mean rewards over the last ``window`` rounds is estimated by least squares; when the lower end of
    its 90% interval is at or below 0, the rise is inside its noise."""

    window: int | None = Field(
        None, ge=3, le=100,
        description="Rounds the slope is fitted over (at least 3); unset: no stopping rule (run every round).",
    )
    mode: Literal["stop", "ask"] = Field(
        "ask",
        description="stop: skip the remaining rounds (evaluation still runs); ask: pause the run (phase Suspended, "
        "reason RewardPlateau) until someone decides: the close-gate override runs one more round.",
    )


def _paper_prompts() -> list[PromptSpec]:
    return [PromptSpec(id="paper-depressed-hopeless", text=PAPER_PROMPT, category="depression")]


class PpoSpec(SpecModel):
    """PPO rounds: generate, wait for ratings, update."""

    rounds: int = Field(50, ge=1, le=MAX_ROUND, description="PPO rounds (the paper ran 50 steps).")
    prompts: list[PromptSpec] = Field(default_factory=_paper_prompts)
    prompt_file: str | None = Field(
        None, description="JSONL/YAML prompt file used instead of (or in addition to) prompts."
    )
    builtin_suite: bool = Field(
        False, description="Add the project's prompt suite (depression, anxiety, grief, trauma, crisis)."
    )
    samples_per_prompt: int = Field(4, ge=1, le=256)
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    learning_rate: float = Field(1.4e-5, gt=0, le=1)
    clip_range: float = Field(0.2, gt=0, le=1, description="Clipped surrogate epsilon.")
    clip_range_value: float = Field(0.2, gt=0, description="Value-loss clip.")
    value_loss_coef: float = Field(0.1, ge=0)
    gamma: Probability = 1.0
    lam: Probability = 0.95
    epochs: int = Field(4, ge=1, le=100, description="PPO epochs over each gated batch.")
    mini_batch_size: int = Field(1, ge=1, le=4096)
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    max_grad_norm: float = Field(1.0, gt=0)
    whiten_rewards: bool = False
    kl: KlSpec = Field(default_factory=KlSpec)
    ratio_threshold: float = Field(
        10.0,
        gt=1,
        description="A minibatch whose mean probability ratio leaves 1/ratioThreshold..ratioThreshold is "
        "reported (TRL's ratio_threshold).",
    )
    skip_ratio_outliers: bool = Field(
        False, description="Also skip such a minibatch (no gradient from it); recorded in the round's metrics."
    )
    seed: int = Field(0, ge=0, le=MAX_SEED)
    stopping: StoppingSpec = Field(
        default_factory=StoppingSpec,
        description="Stop or ask for a decision when the gates' mean reward stops rising beyond its noise.",
    )
    one_job_per_round: bool = Field(
        True,
        description="Run each round's PPO update and the next round's generation in one Job, with the model "
        "loaded once (the update's checkpoint is written first); false: a ppo Job and a generate Job per round.",
    )

    @field_validator("prompts")
    @classmethod
    def _unique_prompt_ids(cls, prompts: list[PromptSpec]) -> list[PromptSpec]:
        seen: set[str] = set()
        for p in prompts:
            if p.id in seen:
                raise ValueError(f"duplicate prompt id {p.id!r}")
            seen.add(p.id)
        return prompts


__all__ = [
    "SplitRatios",
    "DATASET_SPLITS",
    "DatasetSpec",
    "SftSpec",
    "PromptSpec",
    "GenerationSpec",
    "KlSpec",
    "StoppingSpec",
    "PpoSpec",
]
