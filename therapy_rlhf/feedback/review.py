"""After a round's gate has closed: where raters disagreed, and how each rater sits against the panel.

Pure functions over the frozen rating set (``gate.json`` names exactly which
ratings counted), so the numbers match what the update trained on. Only a
closed round is reviewed: while a gate is open raters score blind.

* A *disagreement* is a response scored by two or more raters, ranked by the
  spread of their scores (highest minus lowest, after safety penalties).
* A rater's *calibration* is their mean offset to the panel: over the
  responses they shared with others, the mean of (their score - the mean of
  the other raters' scores). +0.10 means they score a tenth of the scale above
  their colleagues on average.

Later columns (a reward model's prediction, say) are added by passing
``extra``: a name and a function of the response id, shown next to the
raters' scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import fmean
from typing import Callable, Mapping

from therapy_rlhf.feedback.rounds import RoundState
from therapy_rlhf.feedback.rewards import effective_reward
from therapy_rlhf.contracts.records import Gate, PendingResponse, Rating
from therapy_rlhf.feedback.simrater import is_simulated
from therapy_rlhf.contracts.spec import FeedbackSpec


class NotClosed(ValueError):
    """The round's gate is still open: its ratings are blind."""


@dataclass(frozen=True)
class RaterScore:
    rating: Rating
    score: float  # after the safety penalty, 0..1
    simulated: bool


@dataclass(frozen=True)
class Disagreement:
    response: PendingResponse
    position: int  # 1-based place in the batch
    scores: tuple[RaterScore, ...]
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def spread(self) -> float:
        values = [s.score for s in self.scores]
        return max(values) - min(values)


@dataclass(frozen=True)
class Calibration:
    rater: str
    shared: int  # responses scored together with at least one other rater
    offset: float | None  # mean (own - others' mean); None without shared responses
    simulated: bool


@dataclass(frozen=True)
class Review:
    round: int
    disagreements: list[Disagreement]
    calibration: list[Calibration]


def frozen_ratings(state: RoundState, gate: Gate) -> dict[str, list[Rating]]:
    """Response id -> the ratings the gate froze for it."""
    by_id = {r.id: r for r in state.ratings}
    return {
        resp: [by_id[i] for i in reward.ratings if i in by_id]
        for resp, reward in gate.rewards.items()
    }


def review_round(
    state: RoundState,
    gate: Gate | None,
    feedback: FeedbackSpec,
    extra: Mapping[str, Callable[[str], str]] | None = None,
) -> Review:
    if gate is None:
        raise NotClosed(f"batch {state.round} is still open: disagreements are shown once it is closed")
    positions = {r.id: i + 1 for i, r in enumerate(state.responses)}
    responses = {r.id: r for r in state.responses}
    items: list[Disagreement] = []
    for resp, ratings in frozen_ratings(state, gate).items():
        if len(ratings) < 2 or resp not in responses:
            continue
        scores = tuple(RaterScore(r, effective_reward(r, feedback)[0], is_simulated(r)) for r in ratings)
        columns = {name: fn(resp) for name, fn in (extra or {}).items()}
        items.append(Disagreement(responses[resp], positions[resp], scores, columns))
    items.sort(key=lambda d: (-d.spread, d.position))
    return Review(state.round, items, calibration(items))


def calibration(items: list[Disagreement]) -> list[Calibration]:
    offsets: dict[str, list[float]] = {}
    simulated: dict[str, bool] = {}
    for item in items:
        for mine in item.scores:
            others = [s.score for s in item.scores if s.rating.rater != mine.rating.rater]
            if others:
                offsets.setdefault(mine.rating.rater, []).append(mine.score - fmean(others))
            simulated[mine.rating.rater] = mine.simulated
    return [
        Calibration(rater, len(values), round(fmean(values), 4) if values else None, simulated[rater])
        for rater, values in sorted(offsets.items())
    ]
