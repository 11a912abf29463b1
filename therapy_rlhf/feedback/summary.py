"""What each round of a run amounts to: counts, reward, agreement, the model's part.

The CLI's ``status``, the TUI's start screen and the operator's round history
all read rounds through these functions, so they report the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.contracts.records import Gate, RecordError, Selection
from therapy_rlhf.contracts.spec import RunManifest
from therapy_rlhf.feedback.gate import agreement, aggregate, coverage
from therapy_rlhf.feedback.rounds import RoundState, load_round
from therapy_rlhf.feedback.simrater import is_simulated
from therapy_rlhf.feedback.selection import read_selection
from therapy_rlhf.store.backends import Store, StoreError
from therapy_rlhf.store.runs import read_fluency, read_frozen_run, stored_rounds


@dataclass(frozen=True)
class RoundSummary:
    round: int
    responses: int
    rated: int  # responses with >= minRaters raters
    ratings: int  # latest ratings counted
    raters: tuple[str, ...]
    mean_reward: float | None
    agreement: float | None
    gate_closed: bool
    updated: bool
    waiting_since: str | None
    batch_errors: int = 0
    late: int = 0  # ratings stored after the gate closed: kept, never used
    garbage: int = 0  # objects in the ratings prefix that are not usable ratings (skipped)
    reward_mismatches: int = 0  # stored rewards the criteria do not give (the recomputed one is used)
    simulated: tuple[str, ...] = ()  # raters whose latest ratings come from the simulated rater
    # feedback.selection: responses the experts did not see, and the model's part in a closed round
    not_sent: int = 0  # responses not sent to the experts
    model_scored: int = 0  # of those, rewarded by the reward model (gate.model_scored)
    reward_model_error: float | None = None  # MAE on this round's fresh expert rewards
    reward_model_drifted: bool = False  # judged no better than the mean: the next round falls back
    reward_model_skill: float | None = None  # skill over the mean on the held-out ratings (issue 21)
    reward_model_skill_lower: float | None = None  # its bootstrap lower bound (<= 0: no better than the mean)
    # what the round's selection decided and why (selection.json; None where it cannot be read)
    selection_mode: str | None = None
    selection_decision: str | None = None  # a phases reason: ColdStart, ModelOnProbation, ModelSkilled, ...
    safety_flagged: int = 0  # sent to the experts for safety, outside the budget
    safety_cap_exceeded: bool = False
    # the batch's fluency (jobs/fluency.py, rounds/r/fluency.json), measured without any rater
    fluency_log_likelihood: float | None = None
    dictionary_share: float | None = None

    def to_dict(self) -> dict:
        return {
            "round": self.round,
            "responses": self.responses,
            "rated": self.rated,
            "ratings": self.ratings,
            "raters": list(self.raters),
            "meanReward": self.mean_reward,
            "agreement": self.agreement,
            "gateClosed": self.gate_closed,
            "updated": self.updated,
            "waitingSince": self.waiting_since,
            "late": self.late,
            "garbage": self.garbage,
            "rewardMismatches": self.reward_mismatches,
            "notSentToExperts": self.not_sent,
            "modelScored": self.model_scored,
            "rewardModelError": self.reward_model_error,
            "rewardModelDrifted": self.reward_model_drifted,
            "rewardModelSkill": self.reward_model_skill,
            "rewardModelSkillLower": self.reward_model_skill_lower,
            "selectionMode": self.selection_mode,
            "selectionDecision": self.selection_decision,
            "safetyFlagged": self.safety_flagged,
            "safetyCapExceeded": self.safety_cap_exceeded,
            "fluencyLogLikelihood": self.fluency_log_likelihood,
            "dictionaryShare": self.dictionary_share,
        }


def summarize_round(
    store: Store, paths: RunPaths, manifest: RunManifest, round_no: int, state: RoundState | None = None
) -> RoundSummary:
    """Counts and reward of one round; a closed round reports its frozen rating set.

    Everything is recomputed from the ratings under the run's rules: of a closed
    round, the ratings its gate froze (later ones are counted as late), never
    the numbers a gate.json claims. ``state`` is the round as ``load_round``
    read it, when the caller has it already.
    """
    fb = manifest.spec.feedback
    state = state if state is not None else load_round(store, paths, round_no, feedback=fb)
    gate: Gate | None = state.gate
    cov = coverage(state, fb.min_raters)
    rewards = aggregate(state, fb)
    mean = round(sum(r.reward for r in rewards.values()) / len(rewards), 4) if rewards else None
    alpha = agreement(state, fb)
    since = datetime.fromtimestamp(store.modified_at(paths.batch(round_no)), timezone.utc)
    fluency = read_fluency(store, paths, round_no) or {}
    check = gate.reward_model if gate is not None else None
    chosen = _selection(store, paths, round_no) if fb.selection.mode != "all" else None
    return RoundSummary(
        round=round_no,
        responses=cov.total,
        rated=cov.complete,
        ratings=cov.ratings,
        raters=tuple(sorted({rater for _, rater in state.latest()})),
        mean_reward=mean,
        agreement=alpha,
        gate_closed=gate is not None,
        # A listing, not a HEAD: a rater's credential may list the run but not read checkpoints.
        updated=paths.policy_metrics(round_no) in store.list(paths.policy_prefix(round_no) + "/"),
        waiting_since=since.isoformat(timespec="seconds"),
        batch_errors=len(state.batch_errors),
        late=len(state.late_ids),
        garbage=len(state.garbage),
        reward_mismatches=len(state.reward_disagreements()),
        simulated=tuple(sorted({r.rater for r in state.latest().values() if is_simulated(r)})),
        not_sent=len(state.not_sent),
        model_scored=len(gate.model_scored) if gate is not None else 0,
        reward_model_error=check.mae if check is not None else None,
        reward_model_drifted=bool(check is not None and check.drifted),
        reward_model_skill=check.skill if check is not None else None,
        reward_model_skill_lower=check.skill_lower if check is not None else None,
        selection_mode=chosen.mode if chosen else None,
        selection_decision=chosen.decision if chosen else None,
        safety_flagged=len(chosen.safety_selected) if chosen else 0,
        safety_cap_exceeded=bool(chosen and chosen.safety_cap_exceeded),
        fluency_log_likelihood=fluency.get("mean_log_likelihood"),
        dictionary_share=fluency.get("dictionary_share"),
    )


def _selection(store: Store, paths: RunPaths, round_no: int) -> Selection | None:
    """The round's selection, or None where there is none or the reader may not see it (a rater's S3 access)."""
    try:
        return read_selection(store, paths, round_no)
    except (StoreError, RecordError):
        return None


def summarize_run(store: Store, paths: RunPaths) -> tuple[RunManifest, list[RoundSummary]]:
    manifest = read_frozen_run(store, paths)
    return manifest, [summarize_round(store, paths, manifest, r) for r in stored_rounds(store, paths)]
