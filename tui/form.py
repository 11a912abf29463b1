"""The rating being typed: scores per criterion, flags, comment, notes, and a cursor.

Pure logic (no Textual), so the key-press rules are unit-tested on their own:
a number key scores the current row and moves to the next unscored one, which
is what makes a complete rating five digits and Enter; ``x`` marks the current
criterion "not applicable" and moves on the same way. Scores are kept as
*levels* (the digit pressed); ``therapy_rlhf.feedback.rewards.level_value`` turns them
into 0..1 and ``compute_reward`` / ``effective_reward`` give the reward, so
the rating rules live only in the shared contract.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from therapy_rlhf.feedback.rewards import RatingError, compute_reward, effective_reward, level_value
from therapy_rlhf.contracts.records import Rating
from therapy_rlhf.contracts.spec import RATING_FLAGS, FeedbackSpec

# The row a 'direct' reward rule adds: the rater sets the reward itself.
REWARD_ROW = "reward"


@dataclass
class RatingForm:
    feedback: FeedbackSpec
    levels: dict[str, int] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)
    comment: str = ""
    cursor: int = 0
    not_applicable: set[str] = field(default_factory=set)
    notes: dict[str, str] = field(default_factory=dict)

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
        return bool(
            self.levels or self.flags or self.comment.strip() or self.not_applicable
            or any(n.strip() for n in self.notes.values())
        )

    def allows_not_applicable(self, row: str) -> bool:
        return any(c.name == row and c.allow_not_applicable for c in self.feedback.rubric)

    def is_done(self, row: str) -> bool:
        return row in self.levels or row in self.not_applicable

    def move(self, step: int) -> None:
        self.cursor = (self.cursor + step) % len(self.rows)

    def select(self, row: str) -> None:
        self.cursor = self.rows.index(row)

    def score(self, level: int, row: str | None = None) -> None:
        """Score a row (the current one by default) and advance to the next unscored row."""
        level_value(level, self.feedback)  # raises RatingError outside the scale
        row = row or self.current
        self.levels[row] = level
        self.not_applicable.discard(row)
        self._advance_from(row)

    def mark_not_applicable(self, row: str | None = None) -> None:
        """Mark a criterion 'not applicable' (or undo the mark) and move on like a score."""
        row = row or self.current
        if not self.allows_not_applicable(row):
            raise RatingError(f"{self.title(row)} always applies in this run: give it a score")
        if row in self.not_applicable:
            self.not_applicable.discard(row)
            self.cursor = self.rows.index(row)
            return
        self.not_applicable.add(row)
        self.levels.pop(row, None)
        self._advance_from(row)

    def _advance_from(self, row: str) -> None:
        self.cursor = self.rows.index(row)
        for step in range(1, len(self.rows) + 1):
            nxt = (self.cursor + step) % len(self.rows)
            if not self.is_done(self.rows[nxt]):
                self.cursor = nxt
                return
        # Everything scored: stay at the last row so Enter is the next key.
        self.cursor = len(self.rows) - 1 if self.cursor == len(self.rows) - 1 else self.cursor + 1

    def title(self, row: str) -> str:
        if row == REWARD_ROW:
            return "Overall score"
        return next((c.title for c in self.feedback.rubric if c.name == row), row)

    def adjust(self, step: int) -> None:
        """Nudge the current row's level (arrow keys / mouse users)."""
        now = self.levels.get(self.current, 0 if step > 0 else self.top_level + 1)
        self.levels[self.current] = min(self.top_level, max(0, now + step))
        self.not_applicable.discard(self.current)

    def toggle_flag(self, flag: str) -> None:
        self.flags ^= {flag}

    # ---------------------------------------------------------- results
    def value(self, row: str) -> float | None:
        return level_value(self.levels[row], self.feedback) if row in self.levels else None

    def criteria(self) -> dict[str, float]:
        return {row: self.value(row) for row in self.levels if row != REWARD_ROW}  # type: ignore[misc]

    def missing(self) -> list[str]:
        return [row for row in self.required_rows if not self.is_done(row)]

    def base_reward(self) -> float | None:
        if self.direct:
            return self.value(REWARD_ROW)
        return compute_reward(self.criteria(), self.feedback, self.not_applicable)

    def to_rating(self, response_id: str, rater: str, seconds: float, client: str) -> Rating:
        """The rating to store, with a fresh submission id (a retry or a replay reuses it)."""
        if self.missing():
            raise RatingError(f"score {', '.join(self.title(r) for r in self.missing())} first")
        if not self.direct and len(self.not_applicable) == len(self.rows):
            raise RatingError("every criterion is marked not applicable: score at least one")
        return Rating(
            response_id=response_id,
            rater=rater,
            criteria=self.criteria(),
            reward=self.base_reward(),
            flags=sorted(self.flags),
            comment=self.comment.strip(),
            not_applicable=sorted(self.not_applicable),
            notes={k: v.strip() for k, v in sorted(self.notes.items()) if v.strip()},
            seconds_spent=round(max(0.0, seconds), 1),
            submission_id=uuid.uuid4().hex,
            client=client,
        )

    def effective(self) -> tuple[float, bool] | None:
        """(reward after the spec's safety penalty, penalised?) once complete."""
        base = self.base_reward()
        if base is None:
            return None
        # The criteria too: under a criteria rule the reward is recomputed from them.
        probe = Rating(response_id="probe", rater="probe", criteria=self.criteria(), reward=base, flags=sorted(self.flags),
                       not_applicable=sorted(self.not_applicable))
        return effective_reward(probe, self.feedback)

    def same_as(self, rating: Rating) -> bool:
        """Whether submitting now would store what ``rating`` already says."""
        if self.missing():
            return False
        return (
            self.criteria(), self.base_reward(), sorted(self.flags), self.comment.strip(),
            sorted(self.not_applicable), {k: v.strip() for k, v in self.notes.items() if v.strip()},
        ) == (
            rating.criteria, rating.reward, rating.flags, rating.comment, sorted(rating.not_applicable), rating.notes,
        )

    # ------------------------------------------------------------ drafts
    def to_draft(self) -> dict[str, Any]:
        """What the journal keeps of typed-but-unsubmitted input."""
        return {
            "levels": dict(self.levels),
            "flags": sorted(self.flags),
            "comment": self.comment,
            "not_applicable": sorted(self.not_applicable),
            "notes": dict(self.notes),
            "cursor": self.cursor,
        }

    @classmethod
    def from_draft(cls, doc: dict[str, Any], feedback: FeedbackSpec) -> "RatingForm":
        """A journaled draft as a form; anything the run's rubric no longer has is dropped."""
        form = cls(feedback)
        rows = set(form.rows)
        top = form.top_level
        for row, level in dict(doc.get("levels") or {}).items():
            if row in rows and isinstance(level, int) and 0 <= level <= top:
                form.levels[row] = level
        form.flags = {f for f in doc.get("flags") or [] if isinstance(f, str)} & set(RATING_FLAGS)
        form.comment = str(doc.get("comment") or "")
        form.not_applicable = {r for r in doc.get("not_applicable") or [] if r in rows and form.allows_not_applicable(r)}
        form.notes = {k: str(v) for k, v in dict(doc.get("notes") or {}).items() if k in rows}
        cursor = doc.get("cursor")
        form.cursor = cursor if isinstance(cursor, int) and 0 <= cursor < len(form.rows) else 0
        return form

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
        form.not_applicable = {r for r in rating.not_applicable if r in known}
        form.notes = {k: v for k, v in rating.notes.items() if k in known}
        return form
