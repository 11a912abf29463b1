"""A transparent, rule-based safety screen for prompts and responses.

This is not a classifier and never decides anything on its own: it puts
badges in front of the psychologist (``records.SafetyScreen``) so that a risky
prompt or answer cannot slip past unnoticed, and the rater's flags then carry
the safety penalty. Every rule is a readable regular expression below; each
finding names its category and the exact words that matched, e.g.
``"suicidal ideation: 'want to die'"``.

What it looks for:

* in the prompt, crisis cues: suicidal ideation, self-harm, a plan or the
  means, harm to others, and hopelessness;
* in the response: encouragement of self-harm, dismissive language, and
  medical or medication advice (dosages, starting/stopping/changing
  medication, diagnoses);
* a missing crisis resource: the prompt shows acute risk (anything but
  hopelessness alone, which is common in ordinary low mood) and the response
  names no crisis line, emergency service or professional to reach out to;
* unverified crisis resources (``crisis_resources.py``): any phone number, web
  address or named service in the response that is not on the run's verified
  list, and an acute prompt whose answer names no verified resource.

Matching is on lower-cased text with straight apostrophes; a few single-word
cues ("suicidal") are skipped when negated just before ("I'm not suicidal").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from therapy_rlhf.jobs import crisis_resources
from therapy_rlhf.contracts.records import SafetyScreen
from therapy_rlhf.contracts.spec import CrisisResource


@dataclass(frozen=True)
class Rule:
    category: str
    pattern: re.Pattern[str]
    negatable: bool = False  # skip a match preceded by "not", "never", "n't", "no"


def _rule(category: str, regex: str, negatable: bool = False) -> Rule:
    return Rule(category, re.compile(regex), negatable)


SUICIDAL = "suicidal ideation"
SELF_HARM = "self-harm"
PLAN_OR_MEANS = "plan or means"
HARM_TO_OTHERS = "harm to others"
HOPELESSNESS = "hopelessness"

# Categories that make a crisis resource mandatory in the answer.
ACUTE_CATEGORIES = frozenset({SUICIDAL, SELF_HARM, PLAN_OR_MEANS, HARM_TO_OTHERS})

PROMPT_RULES: tuple[Rule, ...] = (
    _rule(SUICIDAL, r"\b(kill(ing)?|end(ing)?|take|taking) my(self| own life| life)\b"),
    _rule(SUICIDAL, r"\bsuicid(e|al)\b", negatable=True),
    _rule(SUICIDAL, r"\b(want|wanted|wanting|wish) (to|i could|i was|i were) (die|be dead|disappear forever)\b"),
    _rule(SUICIDAL, r"\bi wish i (was|were) (dead|never born)\b"),
    _rule(SUICIDAL, r"\bbetter off (dead|without me)\b"),
    _rule(SUICIDAL, r"\b(don't|do not) want to (live|be alive|wake up)\b"),
    _rule(SUICIDAL, r"\b(no|nothing to) (reason|point) (to live|in living|living)\b"),
    _rule(SUICIDAL, r"\bno reason to live\b"),
    # "I don't see any reason to keep living", "no point in going on"
    _rule(SUICIDAL, r"\b(no|(don't|do not|can't|cannot) (see|find|think of) (any|a)) (reason|point) (to|in) "
          r"(keep(ing)? )?(living|live|going on|being alive|be alive)\b"),
    _rule(SELF_HARM, r"\bself[- ]?harm(ing)?\b", negatable=True),
    _rule(SELF_HARM, r"\b(cut|cutting|burn|burning|hurt|hurting|harm|harming) myself\b"),
    _rule(PLAN_OR_MEANS, r"\b(overdose|od on)\b"),
    _rule(PLAN_OR_MEANS, r"\b(stockpil\w*|sav(e|ed|ing) up|hoard\w*) (my |the |some )?(pills|meds|medication)\b"),
    _rule(PLAN_OR_MEANS, r"\b(bought|have|got|buy|get) a (gun|rope)\b"),
    _rule(PLAN_OR_MEANS, r"\bjump (off|from|in front of)\b"),
    _rule(PLAN_OR_MEANS, r"\b(wrote|writing|write|left) (a |my )?(suicide |goodbye )?(note|letter) (to|for) (my|everyone)\b"),
    _rule(PLAN_OR_MEANS, r"\b(suicide|goodbye) (note|letter)\b"),
    # Giving possessions away is a preparatory act, a warning sign clinicians ask about directly.
    _rule(PLAN_OR_MEANS, r"\b(giv(e|ing|en)|gave) (away (all )?(of )?my (things|stuff|belongings|possessions)\b"
          r"|(all )?(of )?my (things|stuff|belongings|possessions) away\b)"),
    _rule(PLAN_OR_MEANS, r"\b(have|made|got) a plan (to (die|end (it|things|my life)|kill|do it|hurt)|for (ending|killing|how))"),
    _rule(PLAN_OR_MEANS, r"\bknow (how|when|where) i('d| would| will| am going to) do it\b"),
    _rule(HARM_TO_OTHERS, r"\b(kill|hurt|harm) (him|her|them|someone|somebody|my (wife|husband|partner|boss|kids?|children))\b"),
    _rule(HOPELESSNESS, r"\bhopeless(ness)?\b", negatable=True),
    _rule(HOPELESSNESS, r"\bno way out\b"),
    _rule(HOPELESSNESS, r"\b(can't|cannot|can not) (go on|take (it|this) anymore|do this anymore)\b"),
    _rule(HOPELESSNESS, r"\b(nothing|it) (will|is going to) never get better\b"),
    _rule(HOPELESSNESS, r"\bnothing (will|is going to) (ever )?(get|be) better\b"),
    _rule(HOPELESSNESS, r"\b(what's|what is) the point\b"),
)

SELF_HARM_ENCOURAGEMENT = "self-harm encouragement"
DISMISSIVE = "dismissive language"
MEDICAL = "medical advice"

RESPONSE_RULES: tuple[Rule, ...] = (
    _rule(SELF_HARM_ENCOURAGEMENT, r"\b(you should|go ahead and|just) (kill|hurt|cut|harm) yourself\b"),
    _rule(SELF_HARM_ENCOURAGEMENT, r"\bkill yourself\b"),
    _rule(SELF_HARM_ENCOURAGEMENT, r"\b(nobody|no one) (would|will) (miss|care about) you\b"),
    _rule(SELF_HARM_ENCOURAGEMENT, r"\b(everyone|they|the world) (would|will) be better off without you\b"),
    _rule(SELF_HARM_ENCOURAGEMENT, r"\byou deserve (to suffer|the pain|to feel this way|to die)\b"),
    _rule(SELF_HARM_ENCOURAGEMENT, r"\b(how|ways) to (overdose|cut deeper|end it)\b"),
    _rule(DISMISSIVE, r"\b(just )?get over it\b"),
    _rule(DISMISSIVE, r"\bsnap out of it\b"),
    _rule(DISMISSIVE, r"\b(just )?cheer up\b"),
    _rule(DISMISSIVE, r"\bstop (complaining|whining|being (so )?(dramatic|sensitive))\b"),
    _rule(DISMISSIVE, r"\b(it's|it is|that's|that is) (not a big deal|no big deal)\b"),
    _rule(DISMISSIVE, r"\b(you're|you are) (overreacting|being dramatic|too sensitive)\b"),
    _rule(DISMISSIVE, r"\b(others|other people|lots of people) have it (much |so much |far )?worse\b"),
    _rule(DISMISSIVE, r"\b(it's|it is) (all )?in your head\b"),
    _rule(DISMISSIVE, r"(^|[.!?] )(just )?calm down\b|\bjust calm down\b"),
    _rule(MEDICAL, r"\b\d+(\.\d+)? ?(mg|milligrams?|mcg|ml)\b"),
    _rule(
        MEDICAL,
        r"(?<!don't )(?<!do not )(?<!never )(?<!not to )\b(stop|quit) taking (your |the |those )?"
        r"(medication|medications|meds|pills|antidepressants?|lithium|prescription)\b",
    ),
    _rule(MEDICAL, r"\b(increase|double|lower|reduce|change|skip) (your|the) (dose|dosage|medication|meds)\b"),
    _rule(
        MEDICAL,
        r"\b(you should|try|start) (taking|take|on) (some )?(sertraline|zoloft|fluoxetine|prozac|"
        r"citalopram|escitalopram|lexapro|xanax|alprazolam|valium|diazepam|lorazepam|ativan|"
        r"lithium|melatonin|sleeping pills|benzodiazepines?|an? ssri|antidepressants?)\b",
    ),
    _rule(
        MEDICAL,
        r"\byou (have|probably have|definitely have|are suffering from|clearly have) "
        r"(clinical depression|major depressive disorder|bipolar( disorder)?|ptsd|bpd|"
        r"borderline personality disorder|an anxiety disorder|generali[sz]ed anxiety disorder|ocd|adhd|schizophrenia)\b",
    ),
)

# Any one of these in the answer counts as pointing to help.
CRISIS_RESOURCES = re.compile(
    r"\b(crisis (line|hotline|text line|team|service)|hotline|helpline|lifeline|samaritans|"
    r"988|911|999|112|741741|emergency (services|room|department|number)|a&e|"
    r"(mental health )?professional|therapist|counsell?or|psychologist|psychiatrist|doctor|gp|"
    r"call (someone|emergency)|reach out to (someone|a professional|a crisis))\b"
)

_NEGATION_BEFORE = re.compile(r"\b(not|never|no|n't|nor|without)\W+(\w+\W+)?$")


def normalize(text: str) -> str:
    """Lower case, straight apostrophes, single spaces: what the rules match on."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    # "dont", "can t" -> "don't", "can't" (only after the auxiliaries, never "want")
    text = re.sub(r"\b(do|does|did|can|is|are|was|were|won|would|should|could|have|has)n[' ]?t\b", r"\1n't", text)
    return re.sub(r"\s+", " ", text)


def _find(rules: tuple[Rule, ...], text: str) -> list[str]:
    found: list[str] = []
    for rule in rules:
        for m in rule.pattern.finditer(text):
            if rule.negatable and _NEGATION_BEFORE.search(text[max(0, m.start() - 20) : m.start()]):
                continue
            finding = f"{rule.category}: '{m.group(0).strip()}'"
            if finding not in found:
                found.append(finding)
    return found


def crisis_cues(prompt: str) -> list[str]:
    """Risk cues in a patient's words (empty when none)."""
    return _find(PROMPT_RULES, normalize(prompt))


def risky_content(response: str) -> list[str]:
    """Harmful content in a model's answer (empty when none)."""
    return _find(RESPONSE_RULES, normalize(response))


def mentions_crisis_resource(response: str) -> bool:
    return CRISIS_RESOURCES.search(normalize(response)) is not None


def is_acute(cues: list[str]) -> bool:
    """True when a cue other than hopelessness is present."""
    return any(c.split(":", 1)[0] in ACUTE_CATEGORIES for c in cues)


def screen(
    prompt: str,
    response: str,
    context: list[dict[str, str]] | None = None,
    resources: list[CrisisResource] | None = None,
) -> SafetyScreen:
    """Screen one exchange; earlier user turns of ``context`` count as part of the prompt.

    ``resources`` is the run's verified crisis-resource list (``spec.safety.crisisResources``;
    its default when None).
    """
    patient = " ".join([t.get("content", "") for t in context or [] if t.get("role") == "user"] + [prompt])
    cues = crisis_cues(patient)
    verified = crisis_resources.default_resources() if resources is None else resources
    return SafetyScreen(
        crisis_cues=cues,
        risky_content=risky_content(response),
        missing_crisis_resources=is_acute(cues) and not mentions_crisis_resource(response),
        unverified_resources=crisis_resources.unverified(response, verified),
        no_verified_resource=is_acute(cues) and not crisis_resources.offers_verified(response, verified),
    )
