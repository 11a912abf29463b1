"""Patient prompts for PPO rounds: the spec's list, a prompt file, the built-in suite.

``load_prompts(spec.ppo)`` returns the prompts in that order (spec first, then
the file, then the suite), de-duplicated by id (the first wins; a different
text under the same id is an error). A prompt file is JSONL (one
``{"id", "text", "category"}`` object a line) or YAML (a list of them); an
empty file or a bad line is a ``JobError`` naming the file and line.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from therapy_rlhf.jobs.common import JobError
from therapy_rlhf.contracts.spec import PpoSpec, PromptSpec, describe_validation_error

SUITE_FILE = "prompt-suite.yaml"
PROMPT_FILE_LIMIT = 16 * 1024 * 1024  # bytes


def _parse(items: list, source: str, lines: list[int] | None = None) -> list[PromptSpec]:
    out = []
    for i, item in enumerate(items):
        where = f"line {lines[i]}" if lines else f"item {i}"
        if not isinstance(item, dict):
            raise JobError(f"prompt file {source}, {where}: expected an object with id and text")
        try:
            out.append(PromptSpec.model_validate(item))
        except ValidationError as err:
            raise JobError(f"prompt file {source}, {where}: " + "; ".join(describe_validation_error(err))) from None
    return out


def parse_prompt_file(text: str, source: str) -> list[PromptSpec]:
    """JSONL (by extension .jsonl/.ndjson) or YAML/JSON list of prompts."""
    if not text.strip():
        raise JobError(f"prompt file {source} is empty")
    if source.endswith((".jsonl", ".ndjson")):
        items, lines = [], []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except ValueError as err:
                raise JobError(f"prompt file {source}, line {lineno}: not valid JSON ({err.args[0]})") from None
            lines.append(lineno)
        return _parse(items, source, lines)
    from therapy_rlhf.contracts.safe_yaml import DocumentError, load_documents

    try:
        # No aliases, duplicate keys or deep nesting (see safe_yaml); prompt files may be large.
        docs = load_documents(text, limit=PROMPT_FILE_LIMIT)
    except DocumentError as err:
        raise JobError(f"prompt file {source}: {err}") from None
    doc = docs[0] if len(docs) == 1 else docs
    if isinstance(doc, dict) and "prompts" in doc:
        doc = doc["prompts"]
    if not isinstance(doc, list) or not doc:
        raise JobError(f"prompt file {source}: expected a non-empty list of prompts")
    return _parse(doc, source)


def read_prompt_file(path: str) -> list[PromptSpec]:
    from therapy_rlhf.jobs.data import DataError, read_text

    try:
        text = read_text(path)
    except DataError as err:
        raise JobError(str(err).replace("dataset", "prompt file", 1)) from None
    return parse_prompt_file(text, path)


def builtin_suite() -> list[PromptSpec]:
    """The project's prompt suite: depression (with the paper's prompt), anxiety, grief, trauma, crisis."""
    from therapy_rlhf.jobs.fixture_files import fixture_path

    path = fixture_path(SUITE_FILE)
    return parse_prompt_file(path.read_text(encoding="utf-8"), str(path))


def load_prompts(ppo: PpoSpec) -> list[PromptSpec]:
    """All prompts a round samples from, in a stable order."""
    sources = list(ppo.prompts)
    if ppo.prompt_file:
        sources += read_prompt_file(ppo.prompt_file)
    if ppo.builtin_suite:
        sources += builtin_suite()
    seen: dict[str, PromptSpec] = {}
    for p in sources:
        if p.id in seen:
            if seen[p.id].text != p.text:
                raise JobError(f"prompt id {p.id!r} is used for two different texts")
            continue
        seen[p.id] = p
    if not seen:
        raise JobError("no prompts: set ppo.prompts, ppo.promptFile or ppo.builtinSuite")
    return list(seen.values())


