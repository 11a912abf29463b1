"""The suite's one wait budget (tests/support/budget.py)."""

import pytest

from tests.support.budget import DEFAULT_SCALE, SCALE_ENV, budget


def test_budget_scales_quiet_seconds(monkeypatch):
    monkeypatch.delenv(SCALE_ENV, raising=False)
    assert budget(5) == 5 * DEFAULT_SCALE
    monkeypatch.setenv(SCALE_ENV, "2.5")
    assert budget(4) == 10.0


@pytest.mark.parametrize("raw", ["fast", "0", "-1"])
def test_budget_refuses_a_bad_scale(monkeypatch, raw):
    monkeypatch.setenv(SCALE_ENV, raw)
    with pytest.raises(ValueError, match=SCALE_ENV):
        budget(1)
