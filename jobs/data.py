"""ESConv-format data: the official JSON and the context/response TSV.

* JSON (``ESConv.json``, ``FailedESConv.json``): a list of conversations
  ``{situation, emotion_type, problem_type, dialog: [{speaker, annotation,
  content}]}``. Speakers are spelled "seeker"/"supporter" in the full release
  and "speaker"/"listener" in FailedESConv; both are accepted.
* TSV (``devWithStrategy_short.tsv``): one example a line, turns joined by
  `` EOS ``, each turn ``<weight> <speaker 0|1> <index> [<Strategy>] text``;
  the last turn is the supporter's reference response.

Both become ``Example(context, response)``: ``context`` is a list of chat
messages (seeker = "user", supporter = "assistant") that starts and ends with
the seeker, consecutive turns of one speaker merged (chat templates such as
Mistral's require strict alternation); ``response`` is the supporter's next
turn(s). Malformed files raise ``DataError`` naming the file and the line or
conversation.
"""

from __future__ import annotations

import json
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
        from therapy_rlhf.store import StoreError, open_store

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


def load_examples(path: str, fmt: str = "auto", max_examples: int | None = None) -> list[Example]:
    """Examples from an ESConv JSON or TSV file (first ``max_examples`` in file order)."""
    fmt = detect_format(path, fmt)
    text = read_text(path)
    if fmt == "esconv-json":
        examples = []
        for i, conv in enumerate(parse_esconv_json(text, path)):
            examples.extend(conversation_examples(conv, f"c{i:04d}"))
    else:
        examples = parse_esconv_tsv(text, path)
    if not examples:
        raise DataError(f"dataset {path} holds no usable examples")
    return examples[:max_examples] if max_examples else examples


def fixture_file(name: str) -> str:
    from therapy_rlhf.jobs.tiny import fixture_path

    return str(fixture_path(name))


def load_fixture_conversations() -> list[Conversation]:
    """The project's own ESConv-format conversations (train and test fixtures)."""
    out = []
    for name in (FIXTURE_TRAIN, FIXTURE_TEST):
        path = fixture_file(name)
        out.extend(parse_esconv_json(Path(path).read_text(encoding="utf-8"), path))
    return out


def load_dataset_spec(dataset, split: str) -> list[Example]:
    """Examples for a ``DatasetSpec``; no path -> the shipped fixture for ``split`` (train|test)."""
    path = dataset.path or fixture_file(FIXTURE_TRAIN if split == "train" else FIXTURE_TEST)
    return load_examples(path, dataset.format if dataset.path else "esconv-json", dataset.max_examples)
