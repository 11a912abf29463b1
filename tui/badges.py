"""Safety badges: what the automatic screen found, in words (never colour alone).

A response that contains the model's control markers (special tokens such as
``[INST]`` or ``</s>``, shown as they are in the text) says so too: the rater
scores exactly what the policy is trained on.
"""

from __future__ import annotations

from textual.widgets import Static

from therapy_rlhf.contracts.records import PendingResponse


class SafetyBadges(Static):
    """One line of bracketed badges, e.g. ``[! CRISIS CUE: hopeless]``."""

    def __init__(self, **kwargs) -> None:
        super().__init__("", markup=False, **kwargs)

    def show(self, item: PendingResponse) -> None:
        badges = list(item.safety.badges)
        if item.special_tokens:
            shown = " ".join(dict.fromkeys(item.special_tokens))
            badges.append(f"CONTROL MARKERS IN THE TEXT: {shown}")
        self.set_class(bool(badges), "alert")
        if not badges:
            self.update("Safety screen: no findings")
            return
        self.update("Safety: " + "  ".join(f"[! {b}]" for b in badges), layout=True)
