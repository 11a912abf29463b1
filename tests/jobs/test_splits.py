"""ESConv split by conversation: no conversation in two splits, SFT on train/dev, evaluation on test, spread caps."""

from __future__ import annotations

import json

import pytest

from therapy_rlhf.jobs import data, evaluate, sft
from therapy_rlhf.jobs.data import DataError
from therapy_rlhf.contracts.spec import DatasetSpec, EvaluationSpec, SftSpec


def write_conversations(path, n, replies=3):
    """An ESConv-format JSON file of ``n`` conversations whose text names the conversation."""
    convs = []
    for c in range(n):
        dialog = []
        for t in range(replies):
            dialog.append({"speaker": "seeker", "annotation": {}, "content": f"seeker {c} turn {t}"})
            dialog.append({"speaker": "supporter", "annotation": {"strategy": "Question"}, "content": f"supporter {c} turn {t}"})
        convs.append({"situation": f"s{c}", "emotion_type": "sadness", "problem_type": "p", "dialog": dialog})
    path.write_text(json.dumps(convs))
    return str(path)


def conversations_of(examples):
    return {e.conversation for e in examples}


def three_splits(spec: DatasetSpec):
    return {s: data.load_split(spec.model_copy(update={"split": s}), s) for s in data.SPLITS}


def check_partition(path, n_conversations, spec: DatasetSpec):
    parts = three_splits(spec)
    ids = {s: conversations_of(sel.examples) for s, sel in parts.items()}
    assert not ids["train"] & ids["dev"] and not ids["train"] & ids["test"] and not ids["dev"] & ids["test"]
    # every conversation with an example is somewhere
    assert set().union(*ids.values()) == conversations_of(data.load_examples(path))
    # and by content: no conversation's text (its last example's context and reply) is in two splits
    # (single examples may coincide: two conversations can open with the same "Hi" / "Hello, how are you?")
    text = {s: {json.dumps(whole_conversations(sel.examples)[c]) for c in ids[s]} for s, sel in parts.items()}
    assert not text["train"] & text["test"] and not text["dev"] & text["test"] and not text["train"] & text["dev"]
    return ids


def whole_conversations(examples):
    out = {}
    for e in examples:  # file order: the last example of a conversation holds all of it
        out[e.conversation] = e.context + [{"role": "assistant", "content": e.response}]
    return out


def test_a_whole_file_splits_70_15_15_by_conversation(tmp_path):
    path = write_conversations(tmp_path / "esconv.json", 40)
    ids = check_partition(path, 40, DatasetSpec(path=path))
    assert {k: len(v) for k, v in ids.items()} == {"train": 28, "dev": 6, "test": 6}  # int(0.15 * 40) = 6


def test_the_split_is_fixed_by_the_seed(tmp_path):
    path = write_conversations(tmp_path / "esconv.json", 40)
    default = three_splits(DatasetSpec(path=path))
    again = three_splits(DatasetSpec(path=path, split_seed=13))
    other = three_splits(DatasetSpec(path=path, split_seed=14))
    assert [e.id for e in default["test"].examples] == [e.id for e in again["test"].examples]
    assert conversations_of(default["test"].examples) != conversations_of(other["test"].examples)
    check_partition(path, 40, DatasetSpec(path=path, split_seed=14))


def test_real_failed_esconv_split_has_no_conversation_in_two_splits(esconv_dir):
    path = str(esconv_dir / "FailedESConv.json")
    ids = check_partition(path, 196, DatasetSpec(path=path))
    assert {k: len(v) for k, v in ids.items()} == {"train": 138, "dev": 29, "test": 29}


def test_sft_trains_on_train_and_validates_on_dev_never_on_test(tmp_path):
    path = write_conversations(tmp_path / "esconv.json", 40)
    spec = SftSpec(dataset=DatasetSpec(path=path))
    train, val = sft.select_examples(spec)
    test = evaluate.select_examples(EvaluationSpec(dataset=DatasetSpec(path=path), max_examples=1000))
    assert (train.split, val.split, test.split) == ("train", "dev", "test")
    assert conversations_of(train.examples) == conversations_of(data.load_split(DatasetSpec(path=path), "train").examples)
    assert conversations_of(val.examples) == conversations_of(data.load_split(DatasetSpec(path=path), "dev").examples)
    assert not conversations_of(train.examples + val.examples) & conversations_of(test.examples)
    assert len(test.examples) == 6 * 3


def test_a_file_that_is_already_a_split_is_used_whole(tmp_path):
    path = write_conversations(tmp_path / "esconv.json", 40)
    whole = data.load_split(DatasetSpec(path=path, split="all"), "test")
    assert whole.presplit and len(whole.examples) == 40 * 3
    # SFT on a pre-split file holds out validationFraction of its conversations
    train, val = sft.select_examples(SftSpec(dataset=DatasetSpec(path=path, split="all"), validation_fraction=0.25))
    assert not conversations_of(train.examples) & conversations_of(val.examples)
    assert len(val.examples) == 30 and len(train.examples) == 90


def test_a_tsv_cannot_be_split_again(tmp_path):
    tsv = tmp_path / "test.tsv"
    tsv.write_text("1.0 0 0 I feel anxious. EOS 1.0 1 1 [Other] I hear you.\n")
    assert data.load_split(DatasetSpec(path=str(tsv)), "test").presplit
    with pytest.raises(DataError, match=r"is a TSV file, already one of ESConv's splits: it cannot be split again \(split: train\)"):
        data.load_split(DatasetSpec(path=str(tsv), split="train"), "train")


def test_too_few_conversations_for_a_split(tmp_path):
    path = write_conversations(tmp_path / "tiny.json", 5)
    with pytest.raises(DataError, match="has 5 conversations: too few for a 0.7/0.15/0.15 split"):
        data.load_split(DatasetSpec(path=path), "test")


def test_a_cap_spreads_across_conversations(tmp_path):
    path = write_conversations(tmp_path / "esconv.json", 40, replies=5)
    capped = data.load_split(DatasetSpec(path=path, split="all", max_examples=30), "test").examples
    assert len(capped) == 30 and len(conversations_of(capped)) == 30
    assert capped == data.load_split(DatasetSpec(path=path, split="all", max_examples=30), "test").examples
    more = data.load_split(DatasetSpec(path=path, split="all", max_examples=60), "test").examples
    assert len(conversations_of(more)) == 40  # every conversation once, then a second pass


def test_evaluation_examples_spread_over_the_real_test_split(esconv_dir):
    ev = EvaluationSpec(dataset=DatasetSpec(path=str(esconv_dir / "testWithStrategy_short.tsv")), max_examples=100)
    chosen = evaluate.select_examples(ev)
    assert len(chosen.examples) == 100 and chosen.conversations == 100
    first_rows = data.load_examples(str(esconv_dir / "testWithStrategy_short.tsv"), max_examples=100)
    assert len(conversations_of(first_rows)) < 15  # what "the first N rows" would have given
