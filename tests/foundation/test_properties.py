"""Property tests (hypothesis): the spec validator and the store key builders.

* Any value at any field of a run document either validates or gives a
  SpecError whose every line names a field path; nothing else is ever raised.
* Arbitrary YAML text never crashes ``load_run``.
* No name that passes validation produces a key outside its run's prefix or
  containing '..'; every name that does not is refused.
"""

from __future__ import annotations

import copy
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from therapy_rlhf.contracts import names
from therapy_rlhf.contracts.layout import RunPaths, parse_rating_key
from therapy_rlhf.contracts.spec import RunManifest, SpecError, load_run, parse_run
from therapy_rlhf.store.backends import check_key
from tests.support.manifests import run_doc

BASE = RunManifest.model_validate(
    run_doc({
            "model": {"source": "tiny:mistral"},
            "storage": {"localPath": "/tmp/store"},
            "resources": {"tolerations": [{"key": "gpu", "operator": "Exists"}], "nodeSelector": {"a": "b"}},
            "evaluation": {"externalResponses": [{"name": "gpt", "path": "/x.jsonl"}]},
        }, "demo")
).model_dump(mode="json", by_alias=True)


def _paths(node, prefix=()):
    """Every path (tuple of keys / indexes) inside the base document."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


FIELD_PATHS = [p for p in _paths(BASE) if p]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True)
    | st.text(max_size=30) | st.sampled_from(["..", "a/b", "UPPER", "", "-1", "1e309", "Fail", "4bit"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)

LINE = re.compile(r"""^run\.yaml: (\(document\)|[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_-]+|\[[0-9]+\]|\[(".*"|'.*')\])*): \S.*$""")


def _set(doc, path, value):
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(FIELD_PATHS), value=json_values, extra=st.booleans())
def test_any_value_anywhere_validates_or_names_its_field(path, value, extra):
    doc = copy.deepcopy(BASE)
    _set(doc, path, value)
    if extra and isinstance(value, dict):
        doc["spec"]["unknownThing"] = value
    try:
        parse_run(doc, "run.yaml")
    except SpecError as err:
        lines = str(err).splitlines()
        assert lines and len(lines) == len(err.problems)
        for line in lines:
            assert LINE.match(line), line
        # the error names the changed field (or one of its ancestors / children)
        top = path[0]
        named = [line for line in lines if f": {top}" in line or "(document)" in line]
        if extra and isinstance(value, dict):
            assert any("run.yaml: spec.unknownThing: unknown field" == line for line in lines), lines
        else:
            assert named, (path, lines)


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=200))
def test_arbitrary_yaml_text_never_crashes(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("y") / "run.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError) as err:
        load_run(path)
    for line in str(err.value).splitlines():
        assert line.startswith(f"{path}: ")


# -------------------------------------------------------------- key builders

any_text = st.text(max_size=50) | st.sampled_from(["..", "a/..", "../x", "a/b", "a..b", ".", "x" * 90, "A", ""])


def _inside(key: str, paths: RunPaths) -> None:
    assert key.startswith(paths.root + "/")
    assert ".." not in key.split("/") and "//" not in key
    assert check_key(key) == key


@settings(max_examples=400, deadline=None)
@given(ns=any_text, run=any_text, rater=any_text, response=any_text, round_no=st.integers(-5, 10050), version=st.integers(-2, 50))
def test_no_input_escapes_its_run_prefix(ns, run, rater, response, round_no, version):
    try:
        paths = RunPaths(ns, run)
    except names.InvalidName:
        assert not (names.NAMESPACE_RE.match(ns) and names.RUN_NAME_RE.match(run) and ".." not in ns + run)
        return
    for key in (paths.spec(), paths.sft_metrics(), paths.eval_results()):
        _inside(key, paths)
    try:
        key = paths.rating(round_no, rater, response, version)
    except (names.InvalidName, ValueError):
        return
    _inside(key, paths)
    assert ".." not in key
    assert key.startswith(paths.ratings_prefix(round_no))
    assert parse_rating_key(key[len(paths.ratings_prefix(round_no)):]) == (rater, response, version)
    for other in (paths.batch(round_no), paths.gate(round_no), paths.policy_metrics(round_no)):
        _inside(other, paths)


valid_run = st.from_regex(names.RUN_NAME_RE, fullmatch=True).filter(lambda s: ".." not in s)
valid_rater = st.from_regex(names.RATER_ID_RE, fullmatch=True)
valid_item = st.from_regex(names.ITEM_ID_RE, fullmatch=True).filter(lambda s: ".." not in s)


@settings(max_examples=300, deadline=None)
@given(run=valid_run, rater=valid_rater, response=valid_item, round_no=st.integers(1, 9999), version=st.integers(1, 999))
def test_every_valid_name_builds_a_key_that_parses_back(run, rater, response, round_no, version):
    paths = RunPaths("default", run)
    key = paths.rating(round_no, rater, response, version)
    _inside(key, paths)
    assert parse_rating_key(key[len(paths.ratings_prefix(round_no)):]) == (rater, response, version)


@given(bad=st.sampled_from(["dr/lee", "..", "../etc", "a/../b", "Dr-Lee", "", "x" * 41, "dr lee", "dr.lee"]))
def test_hostile_rater_ids_are_refused(bad):
    with pytest.raises(names.InvalidName):
        RunPaths("default", "demo").rating(1, bad, "r0001-a")
