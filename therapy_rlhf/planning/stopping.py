"""The stopping rule (``ppo.stopping``, issue 21): has the reward stopped rising beyond its noise?

After round r's update, the gates' mean rewards of the last ``window`` rounds
are fitted by least squares against the round number. The rise is *inside its
noise* when the lower end of the slope's two-sided 90% interval (Student's t
with window - 2 degrees of freedom, the residual scatter as the noise) is at
or below 0: more rounds of ratings are not buying a reward that measurably
rises. Pure Python: the planner runs in the operator, which has no numpy
guarantee beyond what it needs.
"""

from __future__ import annotations

import math
from typing import Sequence

# One-sided 95% quantiles of Student's t (the two-sided 90% interval's ends), by degrees of freedom.
_T95 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860, 9: 1.833, 10: 1.812,
        11: 1.796, 12: 1.782, 13: 1.771, 14: 1.761, 15: 1.753, 16: 1.746, 17: 1.740, 18: 1.734, 19: 1.729,
        20: 1.725, 25: 1.708, 30: 1.697, 40: 1.684, 60: 1.671, 120: 1.658}


def t95(df: int) -> float:
    """The one-sided 95% t quantile for ``df`` degrees of freedom (the next tabulated df at or below it)."""
    if df < 1:
        raise ValueError(f"a slope interval needs at least 1 degree of freedom, got {df}")
    return _T95[max(k for k in _T95 if k <= df)] if df <= 120 else 1.645


def slope_interval(rewards: Sequence[float]) -> tuple[float, float, float]:
    """(slope per round, lower end, upper end of its 90% interval) of ``rewards`` at rounds 0, 1, 2, ..."""
    n = len(rewards)
    if n < 3:
        raise ValueError(f"a slope interval needs at least 3 rounds, got {n}")
    xs = range(n)
    mx, my = (n - 1) / 2, sum(rewards) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, rewards)) / sxx
    resid = [y - (my + slope * (x - mx)) for x, y in zip(xs, rewards)]
    se = math.sqrt(sum(e * e for e in resid) / (n - 2) / sxx)
    half = t95(n - 2) * se
    return slope, slope - half, slope + half


def plateau(rewards_by_round: dict[int, float | None], round_no: int, window: int | None) -> str | None:
    """Why the reward has plateaued after round ``round_no`` (a sentence), or None: not enough rounds, a gate
    without a mean reward in the window, no stopping rule, or a rise beyond the noise."""
    if window is None or round_no < window:
        return None
    rounds = list(range(round_no - window + 1, round_no + 1))
    values = [rewards_by_round.get(q) for q in rounds]
    if any(v is None for v in values):
        return None
    slope, low, high = slope_interval([float(v) for v in values])  # type: ignore[arg-type]
    if low > 0:
        return None
    return (
        f"the gates' mean reward over rounds {rounds[0]}-{rounds[-1]} rises {slope:+.4f} a round "
        f"(90% interval {low:+.4f} to {high:+.4f}): inside its noise"
    )
