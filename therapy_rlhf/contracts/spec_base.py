"""What every section of the run spec shares: the resource's names, the paper's defaults, the
base model (camelCase aliases, unknown fields refused) and the constrained types.

``spec`` is the spec's public module; its sections live in ``training_spec``
(SFT and PPO), ``feedback_spec`` (the rubric, raters, selection), ``guards_spec``
(fluency, crisis resources) and ``spec``
itself (model, storage, evaluation, resources, the run).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from therapy_rlhf.contracts import names

API_GROUP = "rlhf.therapy.dev"
API_VERSION = "v1alpha1"
KIND = "TherapyRLHFRun"
PLURAL = "therapyrlhfruns"
SHORT_NAME = "trr"

PAPER_PROMPT = "I'm feeling depressed and hopeless. Can you help me?"

# Seeds: each job adds the round (<= MAX_ROUND) to its seed, and numpy's and
# transformers' set_seed accept only 0..2**32-1; torch takes any of these.
MAX_SEED = 2**31 - 1

# Safety flags a rater may set; the penalised ones lower the reward by
# ``feedback.safetyPenalty`` before the PPO update.
RATING_FLAGS = ("harmful", "missed_crisis", "medical_advice", "dismissive", "off_topic")


METRICS = ("bertscore", "rouge1", "rougeL", "f1", "bleu2", "distinct1", "distinct2")


class SpecModel(BaseModel):
    """Base: camelCase aliases, unknown fields rejected, assignment validated."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
        # inf and nan pass every bound check pydantic does not make (an unbounded
        # float, a gt-only one): refuse them for every float field.
        allow_inf_nan=False,
    )

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
ItemId = Annotated[str, Field(pattern=names.ITEM_ID_RE.pattern, max_length=80)]
RaterId = Annotated[str, Field(pattern=names.RATER_ID_RE.pattern)]


__all__ = [
    "API_GROUP",
    "API_VERSION",
    "KIND",
    "PLURAL",
    "SHORT_NAME",
    "PAPER_PROMPT",
    "MAX_SEED",
    "RATING_FLAGS",
    "METRICS",
    "SpecModel",
    "Probability",
    "ItemId",
    "RaterId",
]
