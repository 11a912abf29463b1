"""ESConv loaders: the official JSON (both speaker spellings), the TSV, fixtures, bad files."""

from __future__ import annotations

import json

import pytest

from therapy_rlhf.jobs import data
from therapy_rlhf.jobs.data import DataError
from therapy_rlhf.contracts.spec import DatasetSpec


def _check_alternating(examples):
    for ex in examples:
        roles = [m["role"] for m in ex.context]
        assert roles[0] == "user" and roles[-1] == "user", ex.id
        assert all(a != b for a, b in zip(roles, roles[1:])), ex.id
        assert ex.response and all(m["content"] for m in ex.context)


def test_json_both_spellings_give_the_same_examples(tmp_path):
    dialog = [
        ("supporter", "Hi, what brings you here?"),
        ("seeker", "I feel low."),
        ("seeker", "Nothing helps."),
        ("supporter", "That sounds hard."),
        ("supporter", "How long has it been like this?"),
        ("seeker", "Months."),
        ("supporter", "Thank you for telling me."),
    ]
    rename = {"seeker": "speaker", "supporter": "listener"}
    docs = {}
    for spelling in ("official", "failed"):
        conv = [
            {"speaker": s if spelling == "official" else rename[s], "annotation": {"strategy": "Question"} if s == "supporter" else {}, "content": c}
            for s, c in dialog
        ]
        path = tmp_path / f"{spelling}.json"
        path.write_text(json.dumps([{"situation": "x", "emotion_type": "sadness", "problem_type": "p", "dialog": conv}]))
        docs[spelling] = data.load_examples(str(path))
    a, b = docs["official"], docs["failed"]
    assert [(e.context, e.response) for e in a] == [(e.context, e.response) for e in b]
    # the greeting before the seeker speaks is no example; consecutive turns are merged
    assert len(a) == 2
    assert a[0].context == [{"role": "user", "content": "I feel low. Nothing helps."}]
    assert a[0].response == "That sounds hard. How long has it been like this?"
    assert a[1].context[-1] == {"role": "user", "content": "Months."}
    assert a[1].context[1]["role"] == "assistant"
    _check_alternating(a)


def test_tsv_line_to_example(tmp_path):
    line = (
        "1.0 0 0 Hello i feel anxious.  EOS 1.0 1 1 [Other] Hello  EOS "
        "1.0 1 2 [Questions] What is making you anxious?"
    )
    path = tmp_path / "x.tsv"
    path.write_text(line + "\n\n" + "0.0 1 1 [Other] Hi there\n")
    examples = data.load_examples(str(path))
    # the second line has no seeker turn before the response: skipped
    assert len(examples) == 1
    ex = examples[0]
    # the supporter's own preceding turn is dropped so the prompt ends on the seeker
    assert ex.context == [{"role": "user", "content": "Hello i feel anxious."}]
    assert ex.response == "What is making you anxious?"
    assert ex.strategy == "Questions"


def test_tsv_lines_are_grouped_into_conversations(tmp_path):
    # Turn indices grow through a conversation; a line whose last index does not starts the next one.
    lines = [
        "1.0 0 0 I feel anxious. EOS 1.0 1 1 [Other] I hear you.",
        "1.0 0 0 I feel anxious. EOS 1.0 1 1 [Other] I hear you. EOS 1.0 0 2 Work. EOS 1.0 1 3 [Questions] What about it?",
        "1.0 0 2 Work. EOS 1.0 1 3 [Questions] What about it? EOS 1.0 0 4 Deadlines. EOS 1.0 1 5 [Other] That is hard.",
        "1.0 0 0 I lost my dog. EOS 1.0 1 1 [Other] I am so sorry.",
        "1.0 0 0 Hi EOS 1.0 1 1 [Other] Hello.",
    ]
    path = tmp_path / "x.tsv"
    path.write_text("\n".join(lines) + "\n")
    examples = data.load_examples(str(path))
    assert [e.conversation for e in examples] == ["c00000"] * 3 + ["c00001", "c00002"]


def test_json_examples_carry_their_conversation():
    examples = data.load_dataset_spec(DatasetSpec(), "train")
    assert all(e.conversation and e.id.startswith(e.conversation + "-t") for e in examples)


@pytest.mark.parametrize(
    "name, text, needle",
    [
        ("bad.tsv", "1.0 0 0 fine EOS oops no fields\n", "line 1, turn 1"),
        ("bad2.tsv", "1.0 0 0 hello\n1.0 1 1 [Other] hi EOS 1.0 0 2 last is seeker\n", "line 1: the last turn must be the supporter"),
        ("bad.json", "[{\"dialog\": [{\"speaker\": \"robot\", \"content\": \"x\"}]}]", "unknown speaker 'robot'"),
        ("trunc.json", "[{\"dialog\": [", "not valid JSON"),
        ("obj.json", "{\"dialog\": []}", "expected a JSON list"),
        ("empty.json", "[]", "no usable examples"),
        ("x.csv", "a,b", "cannot tell the dataset format"),
    ],
)
def test_malformed_files_name_the_problem(tmp_path, name, text, needle):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError) as err:
        data.load_examples(str(path))
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.load_examples(str(tmp_path / "nope.json"))


def test_fixtures_ship_train_and_test_splits():
    train = data.load_dataset_spec(DatasetSpec(), "train")
    test = data.load_dataset_spec(DatasetSpec(), "test")
    assert len(train) >= 30 and len(test) >= 16
    _check_alternating(train + test)
    assert not {e.response for e in train} & {e.response for e in test}
    capped = data.load_dataset_spec(DatasetSpec(max_examples=5), "train")
    # a cap spreads over conversations (see test_splits.py), in file order
    assert len(capped) == 5 and len({e.conversation for e in capped}) == 5
    assert [e.id for e in capped] == sorted(e.id for e in capped)


def test_real_failed_esconv_json(esconv_dir):
    convs = data.parse_esconv_json((esconv_dir / "FailedESConv.json").read_text(), "FailedESConv.json")
    assert len(convs) == 196
    speakers = {t.speaker for c in convs for t in c.turns}
    assert speakers == {"seeker", "supporter"}
    examples = data.load_examples(str(esconv_dir / "FailedESConv.json"))
    assert len(examples) > 500
    _check_alternating(examples)


@pytest.mark.parametrize("name, rows", [("devWithStrategy_short.tsv", 2985), ("testWithStrategy_short.tsv", 2775)])
def test_real_tsv(esconv_dir, name, rows):
    examples = data.load_examples(str(esconv_dir / name))
    assert 0.8 * rows < len(examples) <= rows
    # ESConv's test and dev splits hold about 200 conversations of about 14 supporter replies each.
    assert 150 < len({e.conversation for e in examples}) < 300
    _check_alternating(examples)
    assert all(e.strategy for e in examples)


def test_real_test_tsv_first_example(esconv_dir):
    ex = data.load_examples(str(esconv_dir / "testWithStrategy_short.tsv"), max_examples=2)[1]
    assert ex.context[0] == {"role": "user", "content": "Hello"}
    assert ex.context[-1]["content"].startswith("A bit overwhelmed and depressed.")
    assert ex.response.startswith("I understand. I have been feeling the same way lately")
    assert ex.strategy == "Self-disclosure"
