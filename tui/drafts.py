"""Scores typed but not submitted: one form per response, kept in the journal as drafts.

No Textual here. The rating screen marks a form changed after every key;
``flush`` (called a second after the last change, when leaving, quitting or
on SIGHUP/SIGTERM) writes each changed form to the journal, so half-typed
scores come back when the rater opens the batch again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from therapy_rlhf.tui.form import RatingForm
from therapy_rlhf.tui.journal import Journal
from therapy_rlhf.tui.session import RoundSession


@dataclass
class Drafts:
    journal: Journal
    forms: dict[str, RatingForm] = field(default_factory=dict)  # response id -> form on screen
    dirty: set[str] = field(default_factory=set)  # changed since the last flush
    restored: set[str] = field(default_factory=set)  # came back from the journal
    problem: str | None = None

    def form_for(self, session: RoundSession, response_id: str) -> RatingForm:
        form = self.forms.get(response_id)
        if form is None:
            previous = session.own(response_id) or session.undone.get(response_id)
            form = RatingForm.from_rating(previous, session.feedback) if previous else RatingForm(session.feedback)
            self.forms[response_id] = form
        return form

    def restore(self, session: RoundSession) -> int:
        """Load this batch's journaled drafts; returns how many came back."""
        try:
            saved = self.journal.drafts_for(session.title, session.round)
        except OSError as err:
            self.problem = f"cannot read drafts from {self.journal.path}: {err.strerror}"
            return 0
        known = {r.id for r in session.responses}
        for rid, doc in saved.items():
            if rid not in known:
                continue
            form = RatingForm.from_draft(doc, session.feedback)
            own = session.own(rid)
            if not form.touched or (own is not None and form.same_as(own)):
                continue
            self.forms[rid] = form
            self.restored.add(rid)
        return len(self.restored)

    def changed(self, response_id: str) -> None:
        self.dirty.add(response_id)

    def submitted(self, response_id: str) -> None:
        """The journal's 'queued' entry supersedes the draft."""
        self.forms.pop(response_id, None)
        self.dirty.discard(response_id)
        self.restored.discard(response_id)

    def is_unsaved(self, session: RoundSession, response_id: str) -> bool:
        """Typed input that differs from what is stored (or was just taken back by an undo)."""
        form = self.forms.get(response_id)
        if form is None or not form.touched:
            return False
        reference = session.own(response_id) or session.undone.get(response_id)
        return reference is None or not form.same_as(reference)

    def unsaved(self, session: RoundSession) -> list[str]:
        return [rid for rid in self.forms if self.is_unsaved(session, rid)]

    def flush(self, session: RoundSession) -> None:
        """Write every changed form to the journal (a cleared form removes its draft)."""
        for rid in sorted(self.dirty):
            doc = self.forms[rid].to_draft() if rid in self.forms and self.is_unsaved(session, rid) else None
            try:
                self.journal.draft(session.title, session.round, rid, doc)
            except OSError as err:
                self.problem = f"cannot keep drafts in {self.journal.path}: {err.strerror}"
                return
        self.dirty.clear()
