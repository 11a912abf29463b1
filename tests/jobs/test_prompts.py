"""Prompt loading: the built-in suite, prompt files (JSONL/YAML), merging and bad files."""

from __future__ import annotations

import json

import pytest

from therapy_rlhf.jobs import prompts
from therapy_rlhf.jobs.common import JobError
from therapy_rlhf.contracts.spec import PAPER_PROMPT, PpoSpec


def test_suite_covers_every_category_and_the_paper_prompt():
    suite = prompts.builtin_suite()
    cats = {p.category for p in suite}
    assert {"depression", "anxiety", "grief", "trauma", "crisis"} <= cats
    assert any(p.text == PAPER_PROMPT and p.category == "depression" for p in suite)
    assert len({p.id for p in suite}) == len(suite)
    assert all(sum(p.category == c for p in suite) >= 2 for c in cats)


def test_spec_file_and_suite_merge_in_order_without_duplicates(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(
        json.dumps({"id": "mine-1", "text": "I feel numb.", "category": "depression"})
        + "\n\n"
        + json.dumps({"id": "paper-depressed-hopeless", "text": PAPER_PROMPT, "category": "depression"})
        + "\n"
    )
    got = prompts.load_prompts(PpoSpec(prompt_file=str(f), builtin_suite=True))
    ids = [p.id for p in got]
    assert ids[:2] == ["paper-depressed-hopeless", "mine-1"]
    assert len(ids) == len(set(ids)) == 1 + len(prompts.builtin_suite())


def test_yaml_prompt_file(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("prompts:\n  - id: g1\n    text: My cat died.\n    category: grief\n")
    got = prompts.load_prompts(PpoSpec(prompts=[], prompt_file=str(f)))
    assert [(p.id, p.category) for p in got] == [("g1", "grief")]


@pytest.mark.parametrize(
    "name, text, needle",
    [
        ("empty.jsonl", "", "is empty"),
        ("blank.yaml", "\n  \n", "is empty"),
        ("bad.jsonl", '{"id": "a", "text": "x"}\n{"id": "b", "text": \n', "line 2: not valid JSON"),
        ("badid.jsonl", '{"id": "Not Valid", "text": "x"}\n', "line 1: id:"),
        ("notlist.yaml", "id: a\n", "expected a non-empty list"),
    ],
)
def test_bad_prompt_files(tmp_path, name, text, needle):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(JobError) as err:
        prompts.load_prompts(PpoSpec(prompts=[], prompt_file=str(f)))
    assert needle in str(err.value) and str(f) in str(err.value)


def test_same_id_two_texts_is_an_error(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": "paper-depressed-hopeless", "text": "something else"}) + "\n")
    with pytest.raises(JobError, match="two different texts"):
        prompts.load_prompts(PpoSpec(prompt_file=str(f)))


def test_missing_prompt_file(tmp_path):
    with pytest.raises(JobError, match="prompt file .* does not exist"):
        prompts.load_prompts(PpoSpec(prompt_file=str(tmp_path / "none.jsonl")))
