"""Runs as the store holds them: the frozen spec, the run list, per-round summaries.

The CLI's ``status``, the TUI's start screen and the operator's round history
all read runs through these functions, so they report the same numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

from therapy_rlhf.layout import RunPaths, parse_run_root
from therapy_rlhf.ratings import RoundState, agreement, aggregate, coverage, load_round
from therapy_rlhf.records import Gate
from therapy_rlhf.spec import RunManifest, SpecError, parse_run
from therapy_rlhf.simrater import is_simulated
from therapy_rlhf.store import AlreadyExists, NotFound, Store


# How many other runs a "no such run" message names.
MISSING_RUN_SHOWN = 5


class FrozenSpecMismatch(ValueError):
    """The store already holds a different frozen spec for this run."""


def _canonical(manifest: RunManifest) -> dict:
    doc = manifest.to_json_dict()
    doc.pop("status", None)
    doc["metadata"] = {"name": manifest.name, "namespace": manifest.namespace}
    return doc


def freeze_spec(store: Store, manifest: RunManifest) -> RunManifest:
    """Write spec.json once; on a later start return the frozen one.

    A run's training settings never change under it: if the stored spec
    differs from ``manifest`` in anything but ``suspend``, the stored spec is
    kept and FrozenSpecMismatch says which top-level fields differ.
    """
    paths = RunPaths(manifest.namespace, manifest.name)
    doc = _canonical(manifest)
    try:
        store.create_json(paths.spec(), doc)
        return manifest
    except AlreadyExists:
        pass
    frozen = read_frozen_run(store, paths)
    old, new = _canonical(frozen)["spec"], doc["spec"]
    old.pop("suspend", None)
    new.pop("suspend", None)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        raise FrozenSpecMismatch(
            f"run {manifest.namespace}/{manifest.name} was started with a different spec "
            f"(fields {', '.join('spec.' + c for c in changed)} differ from {store.describe(paths.spec())}); "
            "start a new run under another name to change them"
        )
    return frozen


def read_frozen_run(store: Store, paths: RunPaths) -> RunManifest:
    source = store.describe(paths.spec())
    try:
        return parse_run(store.read_json(paths.spec()), source)
    except NotFound:
        raise NotFound(missing_run(store, paths)) from None


def missing_run(store: Store, paths: RunPaths) -> str:
    """Why a run is not there, told apart: a misspelt name (the store holds other runs) or the wrong store
    (it holds none). A store directory that does not exist raises NoSuchStore from the listing."""
    others = [f"{p.namespace}/{p.run}" for p in list_runs(store)]
    if not others:
        return (
            f"no run {paths.namespace}/{paths.run} in {store.uri}, which holds no runs at all: is it the right "
            "store? (--store, $THERAPY_RLHF_STORE or the manifest's spec.storage)"
        )
    shown = ", ".join(others[:MISSING_RUN_SHOWN]) + (f" and {len(others) - MISSING_RUN_SHOWN} more" if len(others) > MISSING_RUN_SHOWN else "")
    return f"no run {paths.namespace}/{paths.run} in {store.uri} (it holds {shown})"


def list_runs(store: Store) -> list[RunPaths]:
    """Every run whose frozen spec is in the store."""
    out = []
    for key in store.list(""):
        parsed = parse_run_root(key)
        if parsed:
            out.append(RunPaths(*parsed))
    return out


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
    reward_model_drifted: bool = False
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
        not_sent=len(state.model_only),
        model_scored=len(gate.model_scored) if gate is not None else 0,
        reward_model_error=gate.reward_model.mae if gate is not None and gate.reward_model is not None else None,
        reward_model_drifted=bool(gate is not None and gate.reward_model is not None and gate.reward_model.drifted),
        fluency_log_likelihood=fluency.get("mean_log_likelihood"),
        dictionary_share=fluency.get("dictionary_share"),
    )


def read_fluency(store: Store, paths: RunPaths, round_no: int) -> dict | None:
    """rounds/r/fluency.json, or None when absent or unreadable (never fatal: the guard then cannot act)."""
    try:
        doc = store.read_json(paths.fluency(round_no))
    except Exception:  # noqa: BLE001  (missing or damaged: the run goes on, unmeasured)
        return None
    return doc if isinstance(doc, dict) else None


def stored_rounds(store: Store, paths: RunPaths) -> list[int]:
    """Rounds that have a batch, in order."""
    rounds = []
    prefix = paths.root + "/rounds/"
    for key in store.list(prefix):
        rest = key[len(prefix) :]
        if rest.endswith("/batch.jsonl") and rest.count("/") == 1 and rest[:4].isdigit():
            rounds.append(int(rest[:4]))
    return sorted(rounds)


def summarize_run(store: Store, paths: RunPaths) -> tuple[RunManifest, list[RoundSummary]]:
    manifest = read_frozen_run(store, paths)
    return manifest, [summarize_round(store, paths, manifest, r) for r in stored_rounds(store, paths)]


def dump_manifest(manifest: RunManifest) -> str:
    return json.dumps(_canonical(manifest), indent=2, sort_keys=True)


__all__ = [
    "FrozenSpecMismatch",
    "RoundSummary",
    "SpecError",
    "dump_manifest",
    "freeze_spec",
    "list_runs",
    "missing_run",
    "read_fluency",
    "read_frozen_run",
    "stored_rounds",
    "summarize_round",
    "summarize_run",
]
