"""Safety badges: what the automatic screen found, in words (never colour alone)."""

from __future__ import annotations

from textual.widgets import Static

from therapy_rlhf.records import SafetyScreen


class SafetyBadges(Static):
    """One line of bracketed badges, e.g. ``[! CRISIS CUE: hopeless]``."""

    def show(self, safety: SafetyScreen) -> None:
        badges = safety.badges
        self.set_class(bool(badges), "alert")
        if not badges:
            self.update("Safety screen: no findings")
            return
        self.update("Safety: " + "  ".join(f"[! {b}]" for b in badges), layout=True)

    def __init__(self, **kwargs) -> None:
        super().__init__("", markup=False, **kwargs)
