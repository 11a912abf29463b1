"""Names and inputs: whole-string name checks, hostile manifests, non-finite floats,
bounded seeds and rounds, store prefixes and symlinks. Every rejection is one line,
quotes at most ~200 characters of what it was given, and leaves the store as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from therapy_rlhf.contracts import names
from therapy_rlhf.contracts.layout import RunPaths, parse_rating_key
from therapy_rlhf.contracts.records import PendingResponse, Rating
from therapy_rlhf.contracts.spec import MAX_SEED, RunSpec, SpecError, load_run, parse_run
from therapy_rlhf.store.backends import LocalStore, OutsideStore, S3Store, open_store

from tests.support.budget import budget
from tests.support.manifests import run_doc

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = {"model": {"source": "tiny:mistral"}, "storage": {"localPath": "/tmp/store"}}


def manifest(spec: dict, name: str = "demo") -> dict:
    return run_doc(spec, name)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} if root.exists() else {}


# ------------------------------------------------------------------ names


@pytest.mark.parametrize(
    "check, value",
    [
        (names.rater_id, "alice\n"),
        (names.run_name, "demo\n"),
        (names.namespace, "default\n"),
        (names.item_id, "r0001-a\n"),
    ],
)
def test_names_are_matched_whole_so_a_trailing_newline_is_refused(check, value):
    with pytest.raises(names.InvalidName):
        check(value)
    check(value.rstrip("\n"))  # the same name without it is fine


def test_records_refuse_a_rater_or_response_id_with_a_trailing_newline():
    with pytest.raises(ValueError):
        Rating(response_id="r0001-a", rater="alice\n")
    with pytest.raises(ValueError):
        PendingResponse(id="r0001-a\n", round=1, prompt_id="p", prompt="x", response="y")
    assert parse_rating_key("alice/r0001-a.json\n") is None
    assert parse_rating_key("alice/r0001-a.json") == ("alice", "r0001-a", 1)


def test_a_name_error_quotes_at_most_about_200_characters():
    with pytest.raises(names.InvalidName) as err:
        names.rater_id("x" * 100_000)
    assert len(str(err.value)) < 400 and "100002 characters" in str(err.value)


# -------------------------------------------------------------- manifests


def write(tmp_path: Path, text: str | bytes, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


BASE_YAML = """apiVersion: rlhf.therapy.dev/v1alpha1
kind: TherapyRLHFRun
metadata:
  name: demo
spec:
  model: {source: "tiny:mistral"}
  storage: {localPath: STORE}
"""


def one_problem(path: Path) -> str:
    with pytest.raises(SpecError) as err:
        load_run(path)
    assert len(err.value.problems) == 1, err.value.problems
    line = str(err.value)
    assert "\n" not in line and len(line) < 400 + len(str(path)), line
    return line


def test_yaml_aliases_are_refused_so_no_billion_laughs(tmp_path):
    laughs = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        laughs.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}"] * 9) + "]")
    text = BASE_YAML + "  ppo:\n    prompts: []\n" + "\n".join(laughs) + "\n"
    assert "aliases (*a) are not allowed" in one_problem(write(tmp_path, text))


def test_duplicate_keys_are_refused_with_their_place(tmp_path):
    text = BASE_YAML + "  backoffLimit: 1\n  backoffLimit: 5\n"
    line = one_problem(write(tmp_path, text))
    assert "duplicate key 'backoffLimit'" in line and "line 9" in line


def test_non_utf8_is_one_line(tmp_path):
    line = one_problem(write(tmp_path, BASE_YAML.encode() + b"  x: \xff\xfe\n"))
    assert "not UTF-8 text" in line and "0xff" in line


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_deep_nesting_is_one_line_not_a_recursion_error(tmp_path, suffix):
    deep = "[" * 5000 + "]" * 5000
    text = BASE_YAML + f"  x: {deep}\n" if suffix == "yaml" else '{"spec": ' + deep + "}"
    assert "nested deeper than 64 levels" in one_problem(write(tmp_path, text, f"run.{suffix}"))


def test_a_manifest_larger_than_the_limit_is_refused_without_parsing(tmp_path):
    text = BASE_YAML + "# " + "x" * (2 * 1024 * 1024) + "\n"
    assert "larger than 1024 KiB" in one_problem(write(tmp_path, text))


def test_error_messages_quote_at_most_about_200_characters_of_the_input(tmp_path):
    text = BASE_YAML.replace("name: demo", "name: " + "Q" * 50_000)
    line = one_problem(write(tmp_path, text))
    assert "metadata.name" in line and "characters)" in line
    # (YAML caps plain keys at 1024 characters; a parsed document can hold any key)
    with pytest.raises(SpecError) as err:
        parse_run(manifest({**MINIMAL, "k" * 50_000 + "!": 1}))
    assert "unknown field" in str(err.value) and len(str(err.value)) < 300


def test_rejected_manifests_leave_the_store_untouched(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "keep.txt").write_text("kept")
    before = snapshot(store)
    for i, text in enumerate([
        BASE_YAML + "  backoffLimit: 1\n  backoffLimit: 5\n",
        BASE_YAML + "  ppo: {seed: 99999999999}\n",
        BASE_YAML + "  ppo: {rounds: 10000}\n",
        BASE_YAML + "  ppo: {learningRate: .nan}\n",
        BASE_YAML + "  ppo: {kl: {target: .inf}}\n",
        BASE_YAML + "x: &a [1]\ny: *a\n",
        BASE_YAML.replace("name: demo", 'name: "demo\\n"'),  # a trailing newline in a name
        BASE_YAML + "  x: " + "[" * 5000 + "]" * 5000 + "\n",
        BASE_YAML.encode() + b"  x: \xff\n",
        BASE_YAML + "# " + "x" * (2 * 1024 * 1024) + "\n",
    ]):
        if isinstance(text, str):
            text = text.encode()
        path = write(tmp_path, text.replace(b"STORE", str(store).encode()), f"bad{i}.yaml")
        proc = subprocess.run(
            [sys.executable, "-m", "therapy_rlhf.cli", "run", str(path)], capture_output=True, text=True, timeout=budget(15)
        )
        assert proc.returncode != 0
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert snapshot(store) == before


# ---------------------------------------------------------------- floats


def _float_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Alias paths of every float field reachable in a model (through nested models and lists)."""
    out = []
    for name, info in model.model_fields.items():
        alias = info.alias or name
        ann = info.annotation
        union = typing.get_origin(ann) in (typing.Union, getattr(__import__("types"), "UnionType"))
        args = [a for a in typing.get_args(ann) if a is not type(None)] if union else [ann]
        for arg in args:
            base = typing.get_origin(arg) or arg
            if base is typing.Annotated:
                base = typing.get_args(arg)[0]
            if base is float:
                out.append(prefix + (alias,))
            elif isinstance(base, type) and issubclass(base, BaseModel):
                out.extend(_float_paths(base, prefix + (alias,)))
            elif base is list:
                (item,) = typing.get_args(arg)
                if isinstance(item, type) and issubclass(item, BaseModel):
                    out.extend(_float_paths(item, prefix + (alias, "0")))
    return out


FLOAT_PATHS = _float_paths(RunSpec)


def _with(value: float, path: tuple[str, ...]) -> dict:
    spec = json.loads(json.dumps(MINIMAL))
    node = spec
    for part in path[:-1]:
        if part == "0":
            continue
        nxt = path[path.index(part) + 1] if path.index(part) + 1 < len(path) else None
        if nxt == "0":
            node = node.setdefault(part, [{"name": "c1"} if part == "rubric" else {"id": "p1", "text": "t"}])[0]
        else:
            node = node.setdefault(part, {})
    node[path[-1]] = value
    return spec


def test_every_float_field_is_found():
    assert len(FLOAT_PATHS) >= 17
    assert ("ppo", "kl", "target") in FLOAT_PATHS and ("feedback", "rubric", "0", "weight") in FLOAT_PATHS


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("path", FLOAT_PATHS, ids=lambda p: ".".join(p))
def test_inf_and_nan_are_refused_for_every_float_field(path, value):
    with pytest.raises(SpecError) as err:
        parse_run(manifest(_with(value, path)))
    assert ".".join(p for p in path if p != "0") in str(err.value).replace("[0]", "")


def test_records_refuse_non_finite_numbers():
    with pytest.raises(ValueError):
        Rating.model_validate_json('{"response_id": "r1", "rater": "a", "seconds_spent": Infinity}')
    with pytest.raises(ValueError):
        Rating.model_validate({"response_id": "r1", "rater": "a", "criteria": {"empathy": float("nan")}})


# ----------------------------------------------------------- seeds, rounds


@pytest.mark.parametrize("where", [("ppo", "seed"), ("sft", "seed"), ("ppo", "generation", "seed"),
                                   ("sft", "dataset", "splitSeed"), ("evaluation", "dataset", "splitSeed")])
def test_seeds_are_bounded_to_what_the_samplers_accept(where):
    def spec_with(value):
        spec = json.loads(json.dumps(MINIMAL))
        node = spec
        for part in where[:-1]:
            node = node.setdefault(part, {})
        node[where[-1]] = value
        return manifest(spec)

    parse_run(spec_with(MAX_SEED))
    with pytest.raises(SpecError, match="less than or equal to 2147483647"):
        parse_run(spec_with(MAX_SEED + 1))
    # the largest seed plus the largest round still seeds numpy (the strictest sampler)
    import numpy as np

    np.random.seed(MAX_SEED + 9999)


def test_rounds_are_bounded_by_the_store_layout():
    parse_run(manifest({**MINIMAL, "ppo": {"rounds": 9999}}))
    with pytest.raises(SpecError, match="ppo.rounds"):
        parse_run(manifest({**MINIMAL, "ppo": {"rounds": 10000}}))
    with pytest.raises(ValueError):
        RunPaths("default", "demo").batch(10000)
    with pytest.raises(ValueError):
        PendingResponse(id="r1", round=10000, prompt_id="p", prompt="x", response="y")


def test_a_job_refuses_a_round_the_layout_cannot_hold(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "therapy_rlhf.jobs", "ppo", "--run-config", str(ROOT / "examples" / "tiny-local.yaml"),
         "--round", "10000", "--store", str(tmp_path / "store")],
        capture_output=True, text=True, timeout=budget(15),
    )
    assert proc.returncode == 64 and proc.stderr.strip() == "error: --round must be at most 9999 (got 10000)"
    assert not (tmp_path / "store").exists()


# ----------------------------------------------------------- store paths


@pytest.mark.parametrize("prefix", ["a/../b", "a//b", "..", "a/./b"])
def test_store_prefixes_with_dot_dot_or_double_slash_are_refused(prefix):
    with pytest.raises(ValueError, match="invalid store prefix"):
        open_store(f"s3://bucket/{prefix}")
    with pytest.raises(ValueError):
        S3Store("bucket", prefix)
    with pytest.raises(SpecError, match="storage.prefix"):
        parse_run(manifest({**MINIMAL, "storage": {"bucket": "bucket", "prefix": prefix}}))


def test_the_local_store_never_follows_a_symlink_out_of_its_root(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text('{"secret": true}')
    root = tmp_path / "store"
    ratings = root / "default" / "demo" / "rounds" / "0001" / "ratings"
    ratings.mkdir(parents=True)
    os.symlink(outside, ratings / "mallory")  # a folder that leads out
    os.symlink(outside / "secret.json", ratings / "alice.json")  # a file that leads out
    store = LocalStore(root)
    before = snapshot(outside)
    prefix = "default/demo/rounds/0001/ratings/"
    assert store.list(prefix) == [] and store.list("") == []
    for key in (prefix + "mallory/secret.json", prefix + "alice.json"):
        with pytest.raises(OutsideStore):
            store.read_bytes(key)
    with pytest.raises(OutsideStore):
        store.write_bytes(prefix + "mallory/planted.json", b"{}")
    with pytest.raises(OutsideStore):
        store.create_bytes(prefix + "mallory/new.json", b"{}")
    assert snapshot(outside) == before
    # A symlink that stays inside the root is harmless and still refused nothing.
    (root / "default" / "demo" / "real").mkdir()
    (root / "default" / "demo" / "real" / "x.json").write_text("{}")
    os.symlink(root / "default" / "demo" / "real", root / "default" / "demo" / "alias")
    assert store.read_bytes("default/demo/alias/x.json") == b"{}"
