"""What the rating screen says in words: where a response stands, and the banner over a batch."""

from __future__ import annotations

from therapy_rlhf.tui.drafts import Drafts
from therapy_rlhf.tui.session import RoundSession


def state_words(s: RoundSession, drafts: Drafts) -> str:
    """Where the current response stands for this rater (the status line's last words)."""
    rid = s.current.id
    own = s.own(rid)
    if own is not None:
        words = "waiting to save" if rid in s.queued else ("corrected by you" if own.version > 1 else "scored by you")
    elif rid in s.undone:
        words = "taken back: score it again"
    elif drafts.is_unsaved(s, rid):
        words = "draft kept, not submitted"
    else:
        words = "skipped, not scored yet" if rid in s.skipped else "not scored yet"
    return words + (" (read only)" if s.closed else "")


def banner_text(s: RoundSession, drafts: Drafts, next_batch: bool, closed_while_open: bool) -> str:
    """The banner: a closed batch, all scored, covered by the others; a waiting next batch first."""
    cov = s.round_coverage()
    fully = f"{cov.complete} of {cov.total} responses have the {cov.min_raters} rater(s) they need"
    text = ""
    # The instruction for a waiting batch comes first: at 80x24 the banner's three lines
    # must never cut it off.
    ready = f"A new batch ({s.round + 1}) is ready: Esc, then Enter." if next_batch else ""
    if s.closed:
        when = s.gate.closed_at.replace("T", " ").removesuffix("Z")
        text = f"CLOSED {when} UTC: scoring finished, read only; new scores would not count."
        unsent = drafts.unsaved(s) if closed_while_open else []
        if unsent:  # said only when there is typed work that was not submitted
            text += f" What you typed for {len(unsent)} response(s) is kept as a draft."
        text += " r: review disagreements"
        text, ready = (f"{ready} {text}", "") if ready else (text, "")
    elif s.done:
        text = f"You have scored all {len(s.responses)} responses. {fully}. t: summary  Esc: list  q: quit"
    elif s.others_have_covered():
        text = f"The others have covered what you have not scored ({fully}); more scores still help agreement."
    if ready:
        text += f"{' ' if text else ''}{ready}"
    return text
