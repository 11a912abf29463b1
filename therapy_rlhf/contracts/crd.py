"""Generate the TherapyRLHFRun CustomResourceDefinition from the pydantic models.

``RunSpec`` and ``RunStatus`` are the single source of truth; this module
turns their JSON Schema (pydantic, by alias) into the *structural* OpenAPI v3
schema that ``apiextensions.k8s.io/v1`` demands:

* ``$ref``/``$defs`` are inlined (structural schemas have no references);
* ``anyOf: [X, {type: null}]`` (an optional field) becomes ``X`` + ``nullable``;
  ``anyOf`` of an integer and a string (a count or a share, ``8`` or ``"25%"``)
  becomes ``x-kubernetes-int-or-string`` keeping both branches;
* ``exclusiveMinimum: 0`` (JSON Schema 2020-12) becomes ``minimum: 0`` +
  ``exclusiveMinimum: true`` (OpenAPI 3.0);
* ``title`` and null defaults are dropped; other defaults stay (the API server
  then applies the same defaults as the model);
* ``additionalProperties: false`` is dropped (structural schemas forbid it next
  to ``properties``; unknown fields are pruned, or rejected by kubectl's strict
  field validation), a free-form ``dict[str, Any]`` becomes
  ``x-kubernetes-preserve-unknown-fields``;
* lists of objects keyed by a name (prompts, rubric criteria, external
  responses) become ``x-kubernetes-list-type: map`` so the API server rejects
  duplicate names, as the model does; the model's cross-field checks that a
  schema can express are added as ``oneOf`` and CEL rules.

``therapy-rlhf crd`` writes the result; ``tests/foundation/test_crd.py``
checks the committed ``crds/therapyrlhfrun.yaml`` against it.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from therapy_rlhf.contracts import names
from therapy_rlhf.contracts.spec import API_GROUP, API_VERSION, KIND, PLURAL, SHORT_NAME, RunSpec
from therapy_rlhf.contracts.status import RunStatus

CRD_PATH = "crds/therapyrlhfrun.yaml"
HEADER = (
    "# Generated from therapy_rlhf.contracts.spec.RunSpec and therapy_rlhf.contracts.status.RunStatus\n"
    "# by `therapy-rlhf crd --output crds/therapyrlhfrun.yaml` (make crd). Do not edit.\n"
)

# JSON Schema keywords that carry no meaning (or are illegal) in a structural schema.
_DROP = {"title", "$defs", "additionalProperties", "examples"}

# Lists whose items are keyed by one field (path of the list, as property names).
LIST_MAP_KEYS: dict[tuple[str, ...], str] = {
    ("spec", "ppo", "prompts"): "id",
    ("spec", "feedback", "rubric"): "name",
    ("spec", "evaluation", "externalResponses"): "name",
    ("status", "conditions"): "type",
    ("status", "rounds"): "round",
}
# Lists of scalars that behave as sets.
LIST_SETS: set[tuple[str, ...]] = {
    ("spec", "feedback", "allowedRaters"),
    ("spec", "feedback", "penalizedFlags"),
    ("spec", "evaluation", "metrics"),
    ("spec", "evaluation", "checkpoints"),
}

# Cross-field rules of RunSpec._consistent that cost the API server O(1) to
# check, as CEL. The rest (e.g. 'sft' checkpoint without SFT) are enforced by the
# model, which the operator applies to every spec it reads.
SPEC_RULES = [
    {
        "rule": "!has(self.ppo) || has(self.ppo.promptFile) || (has(self.ppo.builtinSuite) && self.ppo.builtinSuite)"
        " || !has(self.ppo.prompts) || size(self.ppo.prompts) > 0",
        "message": "ppo needs prompts, a promptFile or builtinSuite: true",
    },
]


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline every $ref."""
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return _resolve({**target, **extra}, defs)
    return {k: _resolve(v, defs) for k, v in node.items()}


def _structural(node: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    """Rewrite one (already inlined) JSON Schema node into structural OpenAPI v3."""
    node = dict(node)
    nullable = False
    branches = node.pop("anyOf", None)
    if branches is not None:
        rest = [b for b in branches if b.get("type") != "null"]
        if sorted(b.get("type", "") for b in rest) == ["integer", "string"]:
            # A count or a share ("25%"): Kubernetes' int-or-string, each branch with its own bounds.
            out = {k: v for k, v in node.items() if k not in _DROP}
            out["x-kubernetes-int-or-string"] = True
            out["anyOf"] = [{k: v for k, v in b.items() if k not in _DROP} for b in rest]
            return out
        if len(rest) != 1:
            raise ValueError(f"{'.'.join(path)}: only Optional[X] unions are supported in the CRD")
        nullable = len(rest) < len(branches)
        node = {**rest[0], **{k: v for k, v in node.items()}}
    out: dict[str, Any] = {}
    if "const" in node:  # Literal with one value
        node.setdefault("enum", [node.pop("const")])
    free_form = node.get("additionalProperties") is True or (
        node.get("type") == "object" and "properties" not in node and "additionalProperties" not in node
    )
    for key, value in node.items():
        if key in _DROP or (key == "default" and value is None):
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, path + (name,)) for name, sub in value.items()}
        elif key == "items":
            out[key] = _structural(value, path + ("[]",))
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        else:
            out[key] = value
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        out["additionalProperties"] = _structural(extra, path + ("*",))
    if free_form:
        out["type"] = "object"
        out["x-kubernetes-preserve-unknown-fields"] = True
    if nullable:
        out["nullable"] = True
    if path in LIST_MAP_KEYS:
        out["x-kubernetes-list-type"] = "map"
        out["x-kubernetes-list-map-keys"] = [LIST_MAP_KEYS[path]]
        # map keys must be required (they are in the models) and must not default
        assert LIST_MAP_KEYS[path] in out["items"].get("required", []), path
    elif path in LIST_SETS:
        out["x-kubernetes-list-type"] = "set"
    return _ordered(out)


# Stable, readable key order in the YAML.
_ORDER = ["description", "type", "format", "nullable", "enum", "default", "minimum", "exclusiveMinimum",
          "maximum", "exclusiveMaximum", "minLength", "maxLength", "pattern", "minItems", "maxItems",
          "required", "oneOf", "properties", "additionalProperties", "items"]


# Rules on one node of the spec (path of property names below spec -> CEL rules on that node).
NODE_RULES: dict[tuple[str, ...], list[dict[str, str]]] = {
    # GenerationSpec: PPO rollouts are sampled from the untruncated policy.
    ("ppo", "generation"): [
        {
            "rule": "(!has(self.topP) || double(self.topP) == 1.0) && (!has(self.topK) || self.topK == 0)",
            "message": "PPO rollouts need topP 1.0 and topK 0 (the update scores the untruncated policy)",
        }
    ],
}


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    rank = {k: i for i, k in enumerate(_ORDER)}
    return dict(sorted(node.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def model_schema(model: Any, path: tuple[str, ...]) -> dict[str, Any]:
    """Structural OpenAPI v3 schema of a pydantic model (by alias, validation mode)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _structural(_resolve(raw, defs), path)


def spec_schema() -> dict[str, Any]:
    schema = model_schema(RunSpec, ("spec",))
    storage = schema["properties"]["storage"]
    # StorageSpec._one_backend: exactly one of bucket and localPath.
    storage["oneOf"] = [{"required": ["bucket"]}, {"required": ["localPath"]}]
    schema["properties"]["storage"] = _ordered(storage)
    schema["x-kubernetes-validations"] = copy.deepcopy(SPEC_RULES)
    for path, rules in NODE_RULES.items():
        node = schema
        for name in path:
            node = node["properties"][name]
        node["x-kubernetes-validations"] = copy.deepcopy(rules)
    return _ordered(schema)


def status_schema() -> dict[str, Any]:
    return model_schema(RunStatus, ("status",))


def open_api_schema() -> dict[str, Any]:
    """The whole openAPIV3Schema of the resource."""
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {
                        "type": "string",
                        "maxLength": 40,
                        "pattern": names.RUN_NAME_RE.pattern,
                    }
                },
            },
            "spec": spec_schema(),
            "status": status_schema(),
        },
    }


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Round", "type": "integer", "jsonPath": ".status.round"},
    {"name": "Rated", "type": "string", "jsonPath": ".status.rated",
     "description": "Responses of the current round with enough raters, of all."},
    {"name": "Reward", "type": "number", "jsonPath": ".status.reward",
     "description": "Mean reward of the latest closed gate."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def build_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": [SHORT_NAME],
                "categories": ["therapy-rlhf"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": open_api_schema()},
                }
            ],
        },
    }


def render_crd() -> str:
    """The CRD as YAML text, exactly as committed in crds/therapyrlhfrun.yaml."""
    body = yaml.safe_dump(build_crd(), sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body
