"""The CRD is generated from the models, and both accept and reject the same documents.

* the committed ``crds/therapyrlhfrun.yaml`` is exactly what ``therapy-rlhf crd`` writes;
* walking the pydantic models (their annotations and constraints, not their
  JSON Schema) and the CRD's openAPIV3Schema side by side finds the same
  fields, types, enums, bounds, patterns, required sets and defaults;
* every example validates against both, every ``examples/invalid`` file is
  rejected by both. The CRD side is checked the way the API server would:
  OpenAPI 3.0 semantics (``nullable``, boolean ``exclusiveMinimum``), strict
  field validation (kubectl's default), ``x-kubernetes-list-type`` uniqueness
  and the CEL rules (evaluated with cel-python).
"""

from __future__ import annotations

import copy
import subprocess
import sys
import types
import typing
from pathlib import Path

import annotated_types as at
import celpy
import jsonschema
import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from therapy_rlhf.contracts import crd
from therapy_rlhf.contracts.phases import PHASES
from therapy_rlhf.contracts.spec import API_GROUP, RunSpec, SpecError, load_run
from therapy_rlhf.contracts.status import RunStatus

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
INVALID = sorted((ROOT / "examples" / "invalid").glob("*.yaml"))


def committed_crd() -> dict:
    return yaml.safe_load((ROOT / crd.CRD_PATH).read_text(encoding="utf-8"))


def open_api(doc: dict) -> dict:
    return doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


# --------------------------------------------------------------- generation


def test_committed_crd_is_the_generated_one():
    committed = (ROOT / crd.CRD_PATH).read_text(encoding="utf-8")
    assert committed == crd.render_crd(), "crds/therapyrlhfrun.yaml is stale: run `make crd`"


def test_crd_command_writes_and_checks(tmp_path):
    out = tmp_path / "crd.yaml"
    cmd = [sys.executable, "-m", "therapy_rlhf.cli", "crd", "--output", str(out)]
    assert subprocess.run(cmd, capture_output=True, text=True).returncode == 0
    assert out.read_text() == crd.render_crd()
    check = subprocess.run(cmd + ["--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    out.write_text(out.read_text() + "# edited\n")
    stale = subprocess.run(cmd + ["--check"], capture_output=True, text=True)
    assert stale.returncode == 1
    assert stale.stderr.count("\n") == 1 and "out of date" in stale.stderr


def test_crd_identity_and_columns():
    doc = committed_crd()
    assert doc["apiVersion"] == "apiextensions.k8s.io/v1"
    spec = doc["spec"]
    assert spec["group"] == API_GROUP == "rlhf.therapy.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "TherapyRLHFRun"
    assert spec["names"]["plural"] == "therapyrlhfruns"
    assert spec["names"]["shortNames"] == ["trr"]
    assert doc["metadata"]["name"] == "therapyrlhfruns.rlhf.therapy.dev"
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: (c["type"], c["jsonPath"]) for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ("string", ".status.phase"),
        "Round": ("integer", ".status.round"),
        "Rated": ("string", ".status.rated"),
        "Reward": ("number", ".status.reward"),
        "Age": ("date", ".metadata.creationTimestamp"),
    }
    status = open_api(doc)["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == list(PHASES)
    assert status["rated"]["type"] == "string" and status["reward"]["type"] == "number"


STRUCTURAL_FORBIDDEN = {"$ref", "$defs", "anyOf", "title", "const", "allOf"}


def _walk_nodes(node, path="openAPIV3Schema"):
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk_nodes(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk_nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk_nodes(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural():
    """Every node has a type, no references or unions, properties never beside additionalProperties."""
    for path, node in _walk_nodes(open_api(committed_crd())):
        if node.get("x-kubernetes-int-or-string"):
            # A count or a share: Kubernetes' one allowed union, whose branches only add value checks.
            assert "type" not in node and [b["type"] for b in node["anyOf"]] == ["integer", "string"], path
            assert all(set(b) <= {"type", "minimum", "maximum", "pattern"} for b in node["anyOf"]), path
            if "default" in node:
                kube_validator(node).validate(node["default"])
            continue
        assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, path
        assert not STRUCTURAL_FORBIDDEN & set(node), (path, STRUCTURAL_FORBIDDEN & set(node))
        assert not ("properties" in node and "additionalProperties" in node), path
        if node["type"] == "array":
            assert "items" in node, path
        for branch in node.get("oneOf", []):
            # logical junctors may only restate what the structure already has
            assert set(branch) <= {"required"}, path
            assert set(branch["required"]) <= set(node["properties"]), path
        if "default" in node:
            kube_validator(node).validate(node["default"])


# ------------------------------------------------ model <-> CRD, field by field


def _unwrap(tp, metadata):
    """Strip Optional and Annotated; returns (type, constraints, nullable)."""
    nullable = False
    metadata = list(metadata)
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp, *extra = typing.get_args(tp)
            for item in extra:
                metadata.extend(item.metadata if isinstance(item, FieldInfo) else [item])
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            assert len(args) == 1, tp
            nullable = nullable or len(args) < len(typing.get_args(tp))
            tp = args[0]
        else:
            return tp, metadata, nullable


def _constraints(metadata, kind: str) -> dict:
    out: dict = {}
    length = {"string": "Length", "array": "Items"}.get(kind, "")
    for m in metadata:
        if isinstance(m, at.Ge):
            out["minimum"] = m.ge
        elif isinstance(m, at.Gt):
            out["minimum"], out["exclusiveMinimum"] = m.gt, True
        elif isinstance(m, at.Le):
            out["maximum"] = m.le
        elif isinstance(m, at.Lt):
            out["maximum"], out["exclusiveMaximum"] = m.lt, True
        elif isinstance(m, at.MinLen):
            out[f"min{length}"] = m.min_length
        elif isinstance(m, at.MaxLen):
            out[f"max{length}"] = m.max_length
        elif getattr(m, "pattern", None):
            out["pattern"] = m.pattern
    return out


CONSTRAINT_KEYS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
                   "minItems", "maxItems", "pattern"}
SCALARS = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _int_or_string(tp) -> list | None:
    """The branches of a count-or-share union (int | str, each Annotated), else None."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return None
    args = typing.get_args(tp)
    bare = [typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a for a in args]
    return list(args) if bare == [int, str] else None


def _compare_type(tp, metadata, node: dict, path: str, seen: list[str]) -> None:
    branches = _int_or_string(tp)
    if branches is not None:
        seen.append(path)
        assert node.get("x-kubernetes-int-or-string") is True and "type" not in node, f"{path}: int-or-string"
        for branch, sub in zip(branches, node["anyOf"], strict=True):
            inner, meta, _ = _unwrap(branch, [])
            assert sub["type"] == SCALARS[inner], f"{path}: branch type"
            got = {k: v for k, v in sub.items() if k in CONSTRAINT_KEYS}
            assert got == _constraints(meta, sub["type"]), f"{path}: branch constraints {got}"
        return
    tp, metadata, nullable = _unwrap(tp, metadata)
    seen.append(path)
    assert node.get("nullable", False) == nullable, f"{path}: nullable"
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        kind = "string"
        assert node["enum"] == list(typing.get_args(tp)), f"{path}: enum"
    elif tp in SCALARS:
        kind = SCALARS[tp]
        assert "enum" not in node, path
    elif origin is list:
        kind = "array"
        (item,) = typing.get_args(tp)
        _compare_type(item, [], node["items"], f"{path}[]", seen)
    elif origin is dict:
        kind = "object"
        key, value = typing.get_args(tp)
        assert key is str, path
        if value is typing.Any:
            assert node.get("x-kubernetes-preserve-unknown-fields") is True, path
            assert "properties" not in node and "additionalProperties" not in node, path
        else:
            _compare_type(value, [], node["additionalProperties"], f"{path}{{}}", seen)
    elif isinstance(tp, type) and issubclass(tp, BaseModel):
        kind = "object"
        compare_model(tp, node, path, seen)
    else:
        raise AssertionError(f"{path}: the CRD test does not know the type {tp!r}")
    assert node["type"] == kind, f"{path}: type {node['type']} != {kind}"
    expected = _constraints(metadata, kind)
    got = {k: v for k, v in node.items() if k in CONSTRAINT_KEYS}
    assert got == expected, f"{path}: constraints {got} != model's {expected}"


def compare_model(model: type[BaseModel], node: dict, path: str, seen: list[str]) -> None:
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    props = node.get("properties", {})
    assert set(props) == set(fields), f"{path}: CRD {sorted(props)} != model {sorted(fields)}"
    required = {alias for alias, f in fields.items() if f.is_required()}
    assert set(node.get("required", [])) == required, f"{path}: required"
    for alias, field in fields.items():
        sub, where = props[alias], f"{path}.{alias}"
        _compare_type(field.annotation, field.metadata, sub, where, seen)
        if field.default not in (None, PydanticUndefined):
            assert sub.get("default") == field.default, f"{where}: default"
        else:
            assert "default" not in sub, f"{where}: unexpected default"
        if field.description:
            assert sub.get("description") == field.description, f"{where}: description"


@pytest.mark.parametrize("section,model", [("spec", RunSpec), ("status", RunStatus)])
def test_model_and_crd_agree_field_by_field(section, model):
    seen: list[str] = []
    compare_model(model, open_api(committed_crd())["properties"][section], section, seen)
    assert len(seen) > (60 if section == "spec" else 20)  # the walk really covered the tree


def test_field_walk_notices_a_difference():
    node = copy.deepcopy(open_api(committed_crd())["properties"]["spec"])
    node["properties"]["ppo"]["properties"]["clipRange"]["maximum"] = 2
    with pytest.raises(AssertionError, match="clipRange"):
        compare_model(RunSpec, node, "spec", [])
    node = copy.deepcopy(open_api(committed_crd())["properties"]["spec"])
    del node["properties"]["resources"]["properties"]["queueName"]
    with pytest.raises(AssertionError, match="resources"):
        compare_model(RunSpec, node, "spec", [])


# ------------------------------------------------ validation the API server's way


def _kube_to_jsonschema(node: dict, path: str = "") -> dict:
    """OpenAPI 3.0 + Kubernetes extensions -> a Draft 4 schema with custom keywords."""
    out = {k: v for k, v in node.items() if k not in ("nullable", "properties", "items", "additionalProperties", "default")}
    if "properties" in node:
        out["properties"] = {k: _kube_to_jsonschema(v, f"{path}.{k}") for k, v in node["properties"].items()}
        # .metadata is an ObjectMeta (its other fields are the API server's own)
        if not node.get("x-kubernetes-preserve-unknown-fields") and path != ".metadata":
            out["additionalProperties"] = False  # strict field validation (kubectl's default)
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = _kube_to_jsonschema(node["additionalProperties"])
    if "items" in node:
        out["items"] = _kube_to_jsonschema(node["items"])
    if node.get("nullable"):
        out["type"] = [node["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def _list_type(validator, list_type, instance, schema):
    if not isinstance(instance, list):
        return
    if list_type == "set":
        keys = [yaml.safe_dump(v) for v in instance]
    elif list_type == "map":
        keys = [tuple(str(item.get(k)) for k in schema["x-kubernetes-list-map-keys"]) for item in instance]
    else:
        return
    dupes = sorted({str(k) for k in keys if keys.count(k) > 1})
    if dupes:
        yield jsonschema.ValidationError(f"duplicate entries for x-kubernetes-list-type {list_type}: {dupes}")


def _cel_rules(validator, rules, instance, schema):
    env = celpy.Environment()
    for rule in rules:
        program = env.program(env.compile(rule["rule"]))
        if not bool(program.evaluate({"self": celpy.json_to_cel(instance)})):
            yield jsonschema.ValidationError(rule["message"])


KubeValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator,
    {"x-kubernetes-list-type": _list_type, "x-kubernetes-validations": _cel_rules},
)


def kube_validator(node: dict) -> jsonschema.Validator:
    return KubeValidator(_kube_to_jsonschema(node))


def crd_errors(document) -> list[str]:
    validator = kube_validator(open_api(committed_crd()))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates_against_model_and_crd(path):
    load_run(path)
    assert crd_errors(yaml.safe_load(path.read_text())) == []


def test_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {"mistral-7b-s3.yaml", "mixtral-8x7b-qlora.yaml"} <= names
    assert len(INVALID) >= 15


def _header(path: Path, key: str) -> str:
    for line in path.read_text().splitlines():
        if line.startswith(f"# {key}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{path.name} has no '# {key}:' line")


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_example_is_rejected_by_model_and_crd(path):
    with pytest.raises(SpecError) as err:
        load_run(path)
    message = str(err.value)
    assert len(message.splitlines()) == 1, message
    assert _header(path, "expect") in message
    verdict = _header(path, "crd")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        assert verdict.startswith("rejects"), verdict
        return
    errors = crd_errors(document)
    if verdict.startswith("model-only"):
        # documented gap: the operator's model validation is the only guard
        assert errors == [], errors
    else:
        assert verdict == "rejects" and errors, f"the CRD accepts {path.name}"


def test_crd_accepts_a_full_status():
    status = {
        "phase": "AwaitingRatings",
        "round": 3,
        "rated": "18/24",
        "reward": 0.61,
        "observedGeneration": 2,
        "message": "round 3: 18/24 responses have >= 2 raters",
        "conditions": [{"type": "AwaitingRatings", "status": "True", "reason": "WaitingForRatings",
                        "message": "", "lastTransitionTime": "2026-11-25T18:00:00Z", "observedGeneration": 2}],
        "rounds": [{"round": 1, "responses": 24, "rated": 24, "ratings": 48, "raters": ["a", "b"],
                    "meanReward": 0.5, "agreement": 0.71, "gateClosed": True, "updated": True,
                    "waitingSince": "2026-11-25T17:00:00+00:00", "checkpoint": "ns/run/rounds/0001/policy"}],
        "activeJob": {"name": "run-ppo-r3-a1", "kind": "ppo", "round": 3, "attempt": 1},
        "evaluation": {"final": {"bertscore": 0.86, "rouge1": 0.2}},
    }
    RunStatus.model_validate(status)
    doc = yaml.safe_load(EXAMPLES[0].read_text())
    assert crd_errors({**doc, "status": status}) == []
    bad = {**status, "rated": "eighteen", "phase": "Sleeping"}
    assert len(crd_errors({**doc, "status": bad})) == 2
