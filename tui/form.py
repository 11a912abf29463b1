"""The rating being typed: scores per criterion, flags, comment, and a cursor.

Pure logic (no Textual), so the key-press rules are unit-tested on their own:
a number key scores the current row and moves to the next unscored one, which
is what makes a complete rating five digits and Enter. Scores are kept as
*levels* (the digit pressed); ``therapy_rlhf.ratings.level_value`` turns them
into 0..1 and ``compute_reward`` / ``effective_reward`` give the reward, so
the rating rules live only in the shared contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from therapy_rlhf.ratings import RatingError, compute_reward, effective_reward, level_value
from therapy_rlhf.records import Rating
from therapy_rlhf.spec import FeedbackSpec

# The row a 'direct' reward rule adds: the rater sets the reward itself.
REWARD_ROW = "reward"


@dataclass
class RatingForm:
    feedback: FeedbackSpec
    levels: dict[str, int] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)
    comment: str = ""
    cursor: int = 0

    # ------------------------------------------------------------- rows
    @property
    def direct(self) -> bool:
        return self.feedback.reward_rule == "direct"

    @property
    def rows(self) -> list[str]:
        """Scorable rows in key order; a 'direct' run rates the reward first."""
        names = [c.name for c in self.feedback.rubric]
        return [REWARD_ROW, *names] if self.direct else names

    @property
    def required_rows(self) -> list[str]:
        return [REWARD_ROW] if self.direct else [c.name for c in self.feedback.rubric]

    @property
    def current(self) -> str:
        return self.rows[self.cursor]

    @property
    def top_level(self) -> int:
        return self.feedback.scale_levels - 1

    @property
    def touched(self) -> bool:
        """Whether anything was typed that a submit would store."""
        return bool(self.levels or self.flags or self.comment.strip())

    def move(self, step: int) -> None:
        self.cursor = (self.cursor + step) % len(self.rows)

    def select(self, row: str) -> None:
        self.cursor = self.rows.index(row)

    def score(self, level: int, row: str | None = None) -> None:
        """Score a row (the current one by default) and advance to the next unscored row."""
        level_value(level, self.feedback)  # raises RatingError outside the scale
        row = row or self.current
        self.levels[row] = level
        self.cursor = self.rows.index(row)
        for step in range(1, len(self.rows) + 1):
            nxt = (self.cursor + step) % len(self.rows)
            if self.rows[nxt] not in self.levels:
                self.cursor = nxt
                return
        # Everything scored: stay at the last row so Enter is the next key.
        self.cursor = len(self.rows) - 1 if self.cursor == len(self.rows) - 1 else self.cursor + 1

    def adjust(self, step: int) -> None:
        """Nudge the current row's level (arrow keys / mouse users)."""
        now = self.levels.get(self.current, 0 if step > 0 else self.top_level + 1)
        self.levels[self.current] = min(self.top_level, max(0, now + step))

    def toggle_flag(self, flag: str) -> None:
        self.flags ^= {flag}

    # ---------------------------------------------------------- results
    def value(self, row: str) -> float | None:
        return level_value(self.levels[row], self.feedback) if row in self.levels else None

    def criteria(self) -> dict[str, float]:
        return {row: self.value(row) for row in self.levels if row != REWARD_ROW}  # type: ignore[misc]

    def missing(self) -> list[str]:
        return [row for row in self.required_rows if row not in self.levels]

    def base_reward(self) -> float | None:
        if self.direct:
            return self.value(REWARD_ROW)
        return compute_reward(self.criteria(), self.feedback)

    def to_rating(self, response_id: str, rater: str, seconds: float, client: str) -> Rating:
        if self.missing():
            raise RatingError(f"score {', '.join(self.missing())} first")
        return Rating(
            response_id=response_id,
            rater=rater,
            criteria=self.criteria(),
            reward=self.base_reward(),
            flags=sorted(self.flags),
            comment=self.comment.strip(),
            seconds_spent=round(max(0.0, seconds), 1),
            client=client,
        )

    def effective(self) -> tuple[float, bool] | None:
        """(reward after the spec's safety penalty, penalised?) once complete."""
        base = self.base_reward()
        if base is None:
            return None
        probe = Rating(response_id="probe", rater="probe", reward=base, flags=sorted(self.flags))
        return effective_reward(probe, self.feedback)

    @classmethod
    def from_rating(cls, rating: Rating, feedback: FeedbackSpec) -> "RatingForm":
        """Pre-fill from a stored rating (a correction starts from what was there)."""
        form = cls(feedback)
        top = feedback.scale_levels - 1
        known = {c.name for c in feedback.rubric}
        for name, score in rating.criteria.items():
            if name in known:
                form.levels[name] = round(score * top)
        if form.direct and rating.reward is not None:
            form.levels[REWARD_ROW] = round(rating.reward * top)
        form.flags = set(rating.flags)
        form.comment = rating.comment
        return form
