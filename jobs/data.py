"""ESConv-format data: the official JSON and the context/response TSV.

* JSON (``ESConv.json``, ``FailedESConv.json``): a list of conversations
  ``{situation, emotion_type, problem_type, dialog: [{speaker, annotation,
  content}]}``. Speakers are spelled "seeker"/"supporter" in the full release
  and "speaker"/"listener" in FailedESConv; both are accepted.
* TSV (``devWithStrategy_short.tsv``): one example a line, turns joined by
  `` EOS ``, each turn ``<weight> <speaker 0|1> <index> [<Strategy>] text``;
  the last turn is the supporter's reference response.

Splits (``load_split``): a whole-dataset JSON file is split by conversation
as ESConv's reference preprocessing does (Python's ``random`` seeded with
``splitSeed``, 13 there, shuffles the conversations in file order; the first
``int(dev * n)`` are dev, the next ``int(test * n)`` test, the rest train), so
no conversation is in two splits and the full ``ESConv.json`` with the
defaults gives that recipe's split. A TSV file (ESConv's released dev and
test files) and the project's fixtures are already a split and are used
whole. A ``maxExamples`` cap keeps examples spread across conversations
(``spread``), never just the first rows.

Both become ``Example(context, response)``: ``context`` is a list of chat
messages (seeker = "user", supporter = "assistant") that starts and ends with
the seeker, consecutive turns of one speaker merged (chat templates such as
Mistral's require strict alternation); ``response`` is the supporter's next
turn(s). Malformed files raise ``DataError`` naming the file and the line or
conversation.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from therapy_rlhf.jobs.common import JobError

SEEKER_NAMES = {"seeker": "seeker", "speaker": "seeker", "usr": "seeker"}
SUPPORTER_NAMES = {"supporter": "supporter", "listener": "supporter", "sys": "supporter"}
ROLE = {"seeker": "user", "supporter": "assistant"}
TSV_SEPARATOR = " EOS "
TSV_TURN_RE = re.compile(r"^(?P<weight>[0-9]+(?:\.[0-9]+)?) (?P<speaker>[01]) (?P<index>[0-9]+)(?: \[(?P<strategy>[^\]]+)\])?(?: (?P<text>.*))?$", re.S)
FIXTURE_TRAIN = "esconv-train.json"
FIXTURE_TEST = "esconv-test.json"


class DataError(JobError):
    """A dataset file that cannot be read as ESConv data."""


@dataclass(frozen=True)
class Turn:
    speaker: str  # "seeker" | "supporter"
    content: str
    strategy: str | None = None


@dataclass
class Conversation:
    turns: list[Turn]
    situation: str = ""
    emotion_type: str = ""
    problem_type: str = ""


@dataclass
class Example:
    """One supervised example: what the seeker said so far, and the supporter's answer."""

    id: str
    context: list[dict[str, str]]
    response: str
    strategy: str | None = None
    meta: dict = field(default_factory=dict)
    # The conversation this example comes from; examples of one conversation share
    # context, so a train/validation split keeps them on one side. "" = unknown.
    conversation: str = ""

    def prompt_messages(self) -> list[dict[str, str]]:
        return [dict(m) for m in self.context]


def _clean(text: str) -> str:
    return " ".join(str(text).split())


# ------------------------------------------------------------------- JSON


def parse_esconv_json(text: str, source: str) -> list[Conversation]:
    """The official ESConv JSON (either speaker spelling) -> conversations."""
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise DataError(f"{source}: not valid JSON ({err})") from None
    if not isinstance(doc, list):
        raise DataError(f"{source}: expected a JSON list of conversations, got {type(doc).__name__}")
    out = []
    for i, conv in enumerate(doc):
        where = f"{source}: conversation {i}"
        if not isinstance(conv, dict) or not isinstance(conv.get("dialog"), list):
            raise DataError(f"{where}: expected an object with a 'dialog' list")
        turns = []
        for j, turn in enumerate(conv["dialog"]):
            if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
                raise DataError(f"{where}, turn {j}: expected an object with 'speaker' and 'content'")
            name = str(turn.get("speaker", "")).lower()
            speaker = SEEKER_NAMES.get(name) or SUPPORTER_NAMES.get(name)
            if speaker is None:
                raise DataError(
                    f"{where}, turn {j}: unknown speaker {turn.get('speaker')!r} "
                    "(expected seeker/supporter or speaker/listener)"
                )
            annotation = turn.get("annotation") or {}
            strategy = annotation.get("strategy") if isinstance(annotation, dict) else None
            turns.append(Turn(speaker, _clean(turn["content"]), strategy))
        out.append(
            Conversation(
                turns=turns,
                situation=_clean(conv.get("situation", "")),
                emotion_type=str(conv.get("emotion_type", "")),
                problem_type=str(conv.get("problem_type", "")),
            )
        )
    return out


def _merge(turns: list[Turn]) -> list[Turn]:
    """Join consecutive non-empty turns of one speaker (strategy of the first kept)."""
    merged: list[Turn] = []
    for t in turns:
        if not t.content:
            continue
        if merged and merged[-1].speaker == t.speaker:
            prev = merged[-1]
            merged[-1] = Turn(t.speaker, f"{prev.content} {t.content}", prev.strategy or t.strategy)
        else:
            merged.append(t)
    return merged


def _messages(turns: list[Turn]) -> list[dict[str, str]]:
    """Chat messages from merged turns: leading and trailing supporter turns dropped."""
    turns = _merge(turns)
    while turns and turns[0].speaker == "supporter":
        turns = turns[1:]
    while turns and turns[-1].speaker == "supporter":
        turns = turns[:-1]
    return [{"role": ROLE[t.speaker], "content": t.content} for t in turns]


def conversation_examples(conv: Conversation, conv_id: str) -> list[Example]:
    """One example per supporter reply (a run of supporter turns) that follows a seeker turn."""
    merged = _merge(conv.turns)
    out = []
    for i, turn in enumerate(merged):
        if turn.speaker != "supporter":
            continue
        context = _messages(merged[:i])
        if not context:
            continue
        out.append(
            Example(
                id=f"{conv_id}-t{i:03d}",
                context=context,
                response=turn.content,
                strategy=turn.strategy,
                meta={"emotion_type": conv.emotion_type, "problem_type": conv.problem_type},
                conversation=conv_id,
            )
        )
    return out


# -------------------------------------------------------------------- TSV


def parse_esconv_tsv(text: str, source: str) -> list[Example]:
    """The context/response TSV -> examples (the last turn of each line is the reference).

    The TSV has no conversation ids; its lines run through each conversation in
    order, so a line whose last turn index does not grow starts a new one.
    """
    out = []
    conversation, last_index = 0, -1
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        turns = []
        for k, raw in enumerate(line.split(TSV_SEPARATOR)):
            m = TSV_TURN_RE.match(raw.strip())
            if not m:
                raise DataError(
                    f"{source}: line {lineno}, turn {k}: expected '<weight> <speaker 0|1> <index> [<Strategy>] text', "
                    f"got {raw.strip()[:60]!r}"
                )
            speaker = "seeker" if m["speaker"] == "0" else "supporter"
            turns.append(Turn(speaker, _clean(m["text"] or ""), m["strategy"]))
        last = turns[-1]
        index = int(m["index"])  # of the last turn
        if index <= last_index:
            conversation += 1
        last_index = index
        if last.speaker != "supporter":
            raise DataError(f"{source}: line {lineno}: the last turn must be the supporter's (speaker 1)")
        context = _messages(turns[:-1])
        if not context or not last.content:
            continue  # nothing the seeker said yet, or an empty reference
        out.append(Example(id=f"l{lineno:05d}", context=context, response=last.content, strategy=last.strategy,
                           conversation=f"c{conversation:05d}"))
    return out


# ----------------------------------------------------------------- loading


def detect_format(path: str, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    lowered = path.lower()
    if lowered.endswith(".json"):
        return "esconv-json"
    if lowered.endswith((".tsv", ".txt")):
        return "esconv-tsv"
    raise DataError(f"{path}: cannot tell the dataset format from the extension; set format: esconv-json or esconv-tsv")


def read_text(path: str) -> str:
    """A local file or an s3://bucket/key object as text."""
    if path.startswith("s3://"):
        from therapy_rlhf.store.backends import StoreError, open_store

        bucket, _, key = path[len("s3://") :].partition("/")
        try:
            return open_store(f"s3://{bucket}").read_text(key)
        except StoreError as err:
            raise DataError(f"dataset {path}: {err}") from None
    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"dataset {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"dataset {path}: cannot read ({err})") from None


def conversation_id(index: int) -> str:
    """Id of the index-th conversation of a JSON file (the prefix of its examples' ids)."""
    return f"c{index:04d}"


def load_examples(path: str, fmt: str = "auto", max_examples: int | None = None) -> list[Example]:
    """Examples from an ESConv JSON or TSV file (first ``max_examples`` in file order)."""
    fmt = detect_format(path, fmt)
    text = read_text(path)
    if fmt == "esconv-json":
        examples = []
        for i, conv in enumerate(parse_esconv_json(text, path)):
            examples.extend(conversation_examples(conv, conversation_id(i)))
    else:
        examples = parse_esconv_tsv(text, path)
    if not examples:
        raise DataError(f"dataset {path} holds no usable examples")
    return examples[:max_examples] if max_examples else examples


# ------------------------------------------------------------------ splits

SPLITS = ("train", "dev", "test")


def split_conversations(conversation_ids: list[str], dev: float, test: float, seed: int) -> dict[str, str]:
    """Conversation id -> 'train' | 'dev' | 'test' (ESConv's reference recipe, see the module doc).

    ``conversation_ids`` are in file order; the result depends only on them,
    the two ratios and the seed.
    """
    order = list(conversation_ids)
    random.Random(seed).shuffle(order)
    n_dev, n_test = int(dev * len(order)), int(test * len(order))
    out = {c: "dev" for c in order[:n_dev]}
    out.update({c: "test" for c in order[n_dev : n_dev + n_test]})
    out.update({c: "train" for c in order[n_dev + n_test :]})
    return out


def spread(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    """At most ``n`` examples spread over as many conversations as possible, in file order.

    Conversations are visited in a seeded order, one example each (a seeded
    pick) per pass, until ``n`` are chosen: 200 examples from ESConv's test
    split come from 200 conversations, not from the first 14.
    """
    if n is None or n >= len(examples):
        return list(examples)
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ex.conversation or ex.id, []).append(i)
    rng = random.Random(seed)
    order = list(groups)
    rng.shuffle(order)
    for key in order:
        rng.shuffle(groups[key])
    picked: list[int] = []
    depth = 0
    while len(picked) < n:
        for key in order:
            if depth < len(groups[key]) and len(picked) < n:
                picked.append(groups[key][depth])
        depth += 1
    return [examples[i] for i in sorted(picked)]


@dataclass
class Selection:
    """The examples a job uses, and where they come from (recorded in its metrics)."""

    examples: list[Example]
    source: str  # the file, or fixture:<name>
    split: str  # "train" | "dev" | "test" | "all"
    presplit: bool  # the file is already a split (TSV, fixture) or is used whole (split: all)
    conversations: int = 0  # conversations in this selection

    def describe(self) -> dict:
        return {
            "dataset": self.source,
            "split": self.split if not self.presplit else "whole file",
            "examples": len(self.examples),
            "conversations": self.conversations,
        }


def _json_split(path: str, text: str, want: str, dataset) -> list[Example]:
    conversations = parse_esconv_json(text, path)
    ids = [conversation_id(i) for i in range(len(conversations))]
    ratios = dataset.split_ratios
    assignment = split_conversations(ids, ratios.dev, ratios.test, dataset.split_seed)
    if not any(v == want for v in assignment.values()):
        raise DataError(
            f"dataset {path} has {len(ids)} conversations: too few for a {ratios.train:g}/{ratios.dev:g}/{ratios.test:g} "
            f"split (its {want} split would be empty)"
        )
    out: list[Example] = []
    for cid, conv in zip(ids, conversations):
        if assignment[cid] == want:
            out.extend(conversation_examples(conv, cid))
    return out


def load_split(dataset, want: str) -> Selection:
    """The ``want`` split ('train' | 'dev' | 'test') of a ``DatasetSpec``, capped by ``maxExamples``.

    ``dataset.split`` overrides ``want`` ('all' = the whole file); no path
    means the shipped fixture for ``want`` (train fixture for train/dev).
    """
    split = want if dataset.split == "auto" else dataset.split
    if dataset.path is None:
        name = FIXTURE_TEST if split == "test" else FIXTURE_TRAIN
        examples = load_examples(fixture_file(name), "esconv-json")
        source, presplit = "fixture:" + name, True
    else:
        path = dataset.path
        fmt = detect_format(path, dataset.format)
        presplit = fmt == "esconv-tsv" or split == "all"
        if fmt == "esconv-tsv" and dataset.split not in ("auto", "all"):
            raise DataError(
                f"dataset {path} is a TSV file, already one of ESConv's splits: it cannot be split again "
                f"(split: {dataset.split}); use split: auto or all"
            )
        if presplit:
            examples = load_examples(path, fmt)
        else:
            examples = _json_split(path, read_text(path), split, dataset)
        source = path
        if not examples:
            raise DataError(f"dataset {path}: its {split} split holds no usable examples")
    examples = spread(examples, dataset.max_examples, dataset.split_seed)
    conversations = len({e.conversation or e.id for e in examples})
    return Selection(examples, source, "all" if presplit else split, presplit, conversations)


def fixture_file(name: str) -> str:
    from therapy_rlhf.jobs.fixture_files import fixture_path

    return str(fixture_path(name))


def load_fixture_conversations() -> list[Conversation]:
    """The project's own ESConv-format conversations (train and test fixtures)."""
    out = []
    for name in (FIXTURE_TRAIN, FIXTURE_TEST):
        path = fixture_file(name)
        out.extend(parse_esconv_json(Path(path).read_text(encoding="utf-8"), path))
    return out


def load_dataset_spec(dataset, split: str) -> list[Example]:
    """The examples of ``load_split(dataset, split)``."""
    return load_split(dataset, split).examples
