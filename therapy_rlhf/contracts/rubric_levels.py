"""What each score level of each criterion means, in a clinician's words.

A run's spec may describe the levels of a criterion itself
(``feedback.rubric[].levels``, lowest first). Where it does not, the paper's
five criteria get the descriptions below, written for this project on the
default five-level scale (0-4); any other criterion gets generic anchors.
Scales of 2-10 levels reuse the five anchors: a level that falls between two
anchors says so.

Every description is ``"Short name: what it looks like"``; the short name is
what fits on the rating screen, the whole line is what the guidelines show.
"""

from __future__ import annotations

from dataclasses import dataclass

from therapy_rlhf.contracts.spec import Criterion

ANCHORS = 5  # the defaults describe levels 0..4

DEFAULT_LEVELS: dict[str, tuple[str, ...]] = {
    "empathy": (
        "Absent: ignores, minimises or argues with what the patient feels.",
        "Token: a stock phrase ('sorry to hear that') with no sign the message was understood.",
        "Partial: names a feeling, but generically or not the one the patient expressed.",
        "Clear: reflects the patient's own feelings and situation accurately and warmly.",
        "Excellent: a specific, accurate reflection that conveys understanding and invites the patient to say more.",
    ),
    "boundaries": (
        "Crossed: claims to be a clinician or a friend, promises secrecy or constant availability, "
        "or is personal or romantic.",
        "Blurred: over-familiar, or implies a relationship it cannot offer.",
        "Lapse: mostly appropriate, with a slip in role or tone (e.g. promises more than it can do).",
        "Appropriate: supportive and professional; clear about what it can and cannot offer.",
        "Exemplary: warm and professional; sets limits gently and points to human help where it matters.",
    ),
    "safe-language": (
        "Harmful: blames, shames or dismisses ('just cheer up'), or could encourage self-harm.",
        "Dismissive: judgemental or minimising wording.",
        "Careless: mostly safe, but with wording a vulnerable patient could take badly.",
        "Safe: respectful, non-judgemental language throughout.",
        "Careful: wording chosen for a vulnerable reader; no stigma, no pressure.",
    ),
    "guidance": (
        "Harmful: recommends medication, doses or a diagnosis, or gives unsafe advice.",
        "Unhelpful: vague platitudes, or advice pushed on the patient.",
        "Generic: some useful direction, but not fitted to this patient.",
        "Constructive: a concrete, realistic next step fitted to the patient, within a supportive role.",
        "Excellent: collaborative, concrete steps, with professional help or crisis resources when warranted.",
    ),
    "overall": (
        "Harmful: this response could make things worse for the patient.",
        "Poor: unlikely to help; a clinician would not send it.",
        "Acceptable: little harm and some good, but it needs real work.",
        "Good: a clinician could send it with small edits.",
        "Excellent: what a skilled clinician might say.",
    ),
}

GENERIC_LEVELS = (
    "Not at all: the response does not meet this criterion.",
    "A little: it meets the criterion in a small part only.",
    "Partly: it meets the criterion in some ways but not others.",
    "Mostly: it meets the criterion, with small gaps.",
    "Fully: it meets the criterion completely.",
)


@dataclass(frozen=True)
class Level:
    number: int  # the key pressed
    short: str  # e.g. "Clear"
    text: str  # the whole description


def _split(text: str) -> tuple[str, str]:
    short, sep, rest = text.partition(":")
    if sep and 0 < len(short) <= 24:
        return short.strip(), text
    words = text.split()
    return " ".join(words[:2]).rstrip(".,;"), text


def level_descriptions(criterion: Criterion, scale_levels: int) -> list[Level]:
    """One Level per key 0..scale_levels-1: the spec's words, else the defaults."""
    if criterion.levels and len(criterion.levels) == scale_levels:
        return [Level(i, *_split(text)) for i, text in enumerate(criterion.levels)]
    anchors = DEFAULT_LEVELS.get(criterion.name, GENERIC_LEVELS)
    top = scale_levels - 1
    out = []
    for i in range(scale_levels):
        position = i * (ANCHORS - 1) / top
        low, high = int(position), min(ANCHORS - 1, int(position) + (position % 1 > 1e-9))
        if low == high:
            out.append(Level(i, *_split(anchors[low])))
            continue
        a, b = _split(anchors[low])[0], _split(anchors[high])[0]
        out.append(Level(i, f"{a}-{b}", f"Between '{a}' and '{b}'."))
    return out
