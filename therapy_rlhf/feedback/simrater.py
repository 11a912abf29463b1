"""A SIMULATED rater, for demos and CI only: never a stand-in for a psychologist.

It scores pending responses with a transparent heuristic and writes ordinary
rating objects through the same store API the TUI uses, so the gate, the PPO
update and the reports cannot tell how a rating was made — except that every
rating it writes says so in ``client`` and in the comment.

The heuristic (all word lists below, nothing learned):
* empathy        share of words from an empathy lexicon (saturates at 25 %)
* guidance       share of words from a constructive-guidance lexicon (saturates at 15 %)
* safe-language  0 when a dismissive phrase appears, else 1
* boundaries     0 when a boundary-crossing phrase appears, else 1
* overall        mean of empathy and guidance
Unknown rubric criteria get the ``overall`` score. The safety screen recorded
on the response (and dismissive phrases) become flags, so the run's safety
penalty applies as it would to a human's flags. A small deterministic jitter
per rater keeps two simulated raters from agreeing perfectly.
"""

from __future__ import annotations

import hashlib
import re
from typing import Sequence

from therapy_rlhf import __version__
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.rater_keys import signer_for
from therapy_rlhf.feedback.rewards import compute_reward
from therapy_rlhf.feedback.rounds import load_round
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.contracts.records import PendingResponse, Rating
from therapy_rlhf.contracts.feedback_spec import RaterKey
from therapy_rlhf.contracts.spec import FeedbackSpec, RunManifest
from therapy_rlhf.store.backends import Store

CLIENT_NAME = "therapy-rlhf-simrater"
CLIENT = f"{CLIENT_NAME}/{__version__}"
DEFAULT_RATER = "sim-rater"
SIMULATED_LABEL = "simulated rater, not a clinician"


def is_simulated(rating: Rating) -> bool:
    """Whether a stored rating came from this simulated rater (its ``client`` says so)."""
    return rating.client.split("/", 1)[0] == CLIENT_NAME

EMPATHY_WORDS = frozenset(
    """sorry hear understand understandable feel feeling feelings valid difficult hard
    here listen listening care support alone together sounds heavy painful okay
    natural brave thank sharing matters""".split()
)
GUIDANCE_WORDS = frozenset(
    """try could might talk reach professional therapist counselor step small breathe
    breathing routine sleep walk friend family journal plan help helpful support""".split()
)
DISMISSIVE_PHRASES = ("get over it", "just cheer up", "stop complaining", "calm down", "not a big deal", "snap out of it")
BOUNDARY_PHRASES = ("i love you", "meet me", "my phone number", "i am a doctor", "trust me, i")

_WORD = re.compile(r"[a-z']+")
EMPATHY_SATURATION = 0.25
GUIDANCE_SATURATION = 0.15
JITTER = 0.05


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def lexicon_share(text: str, lexicon: frozenset[str]) -> float:
    """Share of the words in ``text`` that belong to ``lexicon`` (0 for empty text)."""
    toks = words(text)
    return sum(t in lexicon for t in toks) / len(toks) if toks else 0.0


def _jitter(rater: str, response_id: str) -> float:
    digest = hashlib.sha256(f"{rater}/{response_id}".encode()).digest()
    return (digest[0] / 255.0 * 2 - 1) * JITTER


def _clamp(x: float) -> float:
    return round(min(1.0, max(0.0, x)), 4)


def judge(response: PendingResponse, feedback: FeedbackSpec, rater: str = DEFAULT_RATER) -> Rating:
    """A complete rating of one response by the heuristic above."""
    text = response.response.lower()
    jitter = _jitter(rater, response.id)
    empathy = _clamp(lexicon_share(text, EMPATHY_WORDS) / EMPATHY_SATURATION + jitter)
    guidance = _clamp(lexicon_share(text, GUIDANCE_WORDS) / GUIDANCE_SATURATION + jitter)
    dismissive = any(p in text for p in DISMISSIVE_PHRASES)
    crossing = any(p in text for p in BOUNDARY_PHRASES)
    overall = _clamp((empathy + guidance) / 2)
    known = {
        "empathy": empathy,
        "guidance": guidance,
        "safe-language": 0.0 if dismissive else 1.0,
        "boundaries": 0.0 if crossing else 1.0,
        "overall": overall,
    }
    criteria = {c.name: known.get(c.name, overall) for c in feedback.rubric}
    flags: list[str] = []
    if dismissive:
        flags.append("dismissive")
    if response.safety.risky_content:
        if any("medic" in r for r in response.safety.risky_content):
            flags.append("medical_advice")
        if any("medic" not in r for r in response.safety.risky_content):
            flags.append("harmful")
    if response.safety.unverified_resources:  # an invented hotline can leave a patient in crisis with nobody
        flags.append("harmful")
    if response.safety.crisis_cues and response.safety.missing_crisis_resources:
        flags.append("missed_crisis")
    reward = compute_reward(criteria, feedback)
    if reward is None:  # 'direct' rule: the rater states the reward itself
        reward = round(sum(criteria.values()) / len(criteria), 6)
    return Rating(
        response_id=response.id,
        rater=rater,
        criteria=criteria,
        reward=reward,
        flags=sorted(set(flags)),  # type: ignore[arg-type]
        comment=(
            "SIMULATED RATER (heuristic, not a clinician): "
            f"empathy words {lexicon_share(text, EMPATHY_WORDS):.0%}, "
            f"guidance words {lexicon_share(text, GUIDANCE_WORDS):.0%}"
            + (", dismissive phrase" if dismissive else "")
        ),
        client=CLIENT,
    )


def simulated_raters(feedback: FeedbackSpec) -> list[str]:
    """As many simulated rater ids as the gate needs ('sim-rater', 'sim-rater-2', ...)."""
    return [DEFAULT_RATER] + [f"{DEFAULT_RATER}-{i}" for i in range(2, feedback.min_raters + 1)]


def with_simulated_roster(manifest: RunManifest) -> RunManifest:
    """A local demo's manifest with its simulated raters' keys registered (``run --scoring auto``).

    The keys are made on first use in this machine's key folder, so a restarted
    demo registers the same ones and its frozen spec is unchanged. A spec that
    names its raters (``raters`` or ``allowedRaters``) is left as it is.
    """
    feedback = manifest.spec.feedback
    if feedback.raters or feedback.allowed_raters:
        return manifest
    roster = []
    for rater in simulated_raters(feedback):
        signer = signer_for(rater, create=True)
        roster.append(RaterKey(id=rater, public_key=signer.public_key))  # type: ignore[union-attr]
    spec = manifest.spec.model_copy(update={"feedback": feedback.model_copy(update={"raters": roster})})
    return manifest.model_copy(update={"spec": spec})


def demo_roster(store: Store, manifest: RunManifest, auto: bool) -> RunManifest:
    """The manifest a local runner freezes: a new run scored by the simulated rater registers its
    raters' keys; a restarted one (whatever its scoring now) keeps the roster it was frozen with."""
    from therapy_rlhf.store.backends import NotFound
    from therapy_rlhf.store.runs import read_frozen_run

    try:
        stored = read_frozen_run(store, RunPaths(manifest.namespace, manifest.name)).spec.feedback
    except NotFound:
        return with_simulated_roster(manifest) if auto else manifest
    simulated = [r.id for r in stored.raters] == simulated_raters(manifest.spec.feedback)
    return with_simulated_roster(manifest) if simulated and not manifest.spec.feedback.raters else manifest


def rate_round(
    store: Store,
    paths: RunPaths,
    manifest: RunManifest,
    round_no: int,
    raters: str | Sequence[str] | None = None,
) -> int:
    """Rate every response of a round not yet rated by each simulated rater; returns how many written."""
    feedback = manifest.spec.feedback
    if raters is None:
        raters = simulated_raters(feedback)
    elif isinstance(raters, str):
        raters = [raters]
    state = load_round(store, paths, round_no, feedback=feedback)
    already = set(state.latest())
    written = 0
    for rater in raters:
        # A simulated rater's key is made on first use, in this machine's key folder like a person's.
        signer = signer_for(rater, feedback, create=True)
        for response in state.responses:
            if (response.id, rater) in already:
                continue
            submit_rating(store, paths, state, judge(response, feedback, rater), feedback, signer=signer)
            written += 1
    return written
