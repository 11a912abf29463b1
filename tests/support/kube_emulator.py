"""kmock's Kubernetes emulator set up for the operator, shared by the operator
tests (tests/operator/conftest.py) and the operator benchmark (bench/operator_bench.py).

kmock serves any resource it is told about; this registers what the operator
touches, and fills in what kopf expects of a real API server on create.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import aiohttp.web
import kmock

from therapy_rlhf.contracts.spec import API_GROUP, API_VERSION, KIND, PLURAL


# The token write_kubeconfig gives the operator: requests carrying it are the operator's.
OPERATOR_TOKEN = "emulated"


@dataclass
class Rbac:
    """RBAC as the API server applies it, for the operator's requests only.

    ``rules`` are (namespace or None for cluster-wide, apiGroup, resource, verbs,
    resourceNames) as a rendered Role/ClusterRole says; ``calls`` logs every
    (apiGroup, resource[/subresource], verb) the operator used, ``denied`` the
    ones refused. Discovery (/api, /apis, /version) is allowed to everyone, as
    the system:discovery role does.
    """

    rules: list[tuple[str | None, str, str, frozenset[str], frozenset[str]]] = field(default_factory=list)
    calls: set[tuple[str, str, str]] = field(default_factory=set)
    denied: list[str] = field(default_factory=list)

    @classmethod
    def from_manifests(cls, docs: list[dict]) -> "Rbac":
        rbac = cls()
        for doc in docs:
            if doc.get("kind") not in ("Role", "ClusterRole"):
                continue
            namespace = doc["metadata"].get("namespace") if doc["kind"] == "Role" else None
            for rule in doc.get("rules") or []:
                for group in rule.get("apiGroups") or []:
                    for resource in rule.get("resources") or []:
                        rbac.rules.append((namespace, group, resource, frozenset(rule["verbs"]),
                                           frozenset(rule.get("resourceNames") or [])))
        return rbac

    def granted(self) -> set[tuple[str, str, str]]:
        return {(group, resource, verb) for _ns, group, resource, verbs, _names in self.rules for verb in verbs}

    def allows(self, namespace, group, resource, verb, name) -> bool:
        for ns, g, r, verbs, names in self.rules:
            if (ns is None or ns == namespace) and g == group and r == resource and verb in verbs:
                if not names or (name in names and verb not in ("list", "watch", "create")):
                    return True
        return False


def rbac_verb(request) -> str:
    method = str(request.method.value if hasattr(request.method, "value") else request.method).upper()
    if method == "GET":
        if str(request.params.get("watch", "")).lower() in ("true", "1"):
            return "watch"
        return "get" if request.name else "list"
    return {"POST": "create", "PATCH": "patch", "PUT": "update",
            "DELETE": "delete" if request.name else "deletecollection"}.get(method, method.lower())


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator plus what kopf's Events need (names from ``generateName``) and,
    with ``rbac`` set, the operator's RBAC enforced and its API calls logged."""

    rbac: Rbac | None = None
    # Tests' fault injection: a request for which this returns True gets HTTP 500 and changes
    # nothing (a kmock reaction rule answers 500 only after the emulator has applied the request).
    refuse: Callable[[Any], bool] | None = None

    async def _handle(self, request):
        if self.refuse is not None and self.refuse(request):
            return aiohttp.web.json_response(
                {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500,
                 "message": "emulated fault"}, status=500)
        if self.rbac is not None and request.resource is not None and request.resource.plural:
            token = (request.headers.get("Authorization") or "").removeprefix("Bearer ")
            if token == OPERATOR_TOKEN:
                resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
                verb = rbac_verb(request)
                call = (request.resource.group or "", resource, verb)
                if not self.rbac.allows(request.namespace, call[0], resource, verb, request.name):
                    self.rbac.denied.append(f"{verb} {call[0]}/{resource} in {request.namespace}")
                    return aiohttp.web.json_response(
                        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                         "message": f"{resource} is forbidden: cannot {verb} (emulated RBAC)"}, status=403)
                self.rbac.calls.add(call)
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:10]
            meta.setdefault("uid", str(uuid.uuid4()))
            # Static: kopf's JSON patches test it, and the emulator never changes it.
            meta.setdefault("resourceVersion", "1")
        return await super()._handle(request)


def register_resources(emulator: kmock.KubernetesEmulator) -> None:
    """What the emulator serves; kopf waits silently without namespaces, events and CRDs."""
    verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
    emulator.resources[f"{API_GROUP}/{API_VERSION}/{PLURAL}"] = kmock.ResourceInfo(
        kind=KIND, namespaced=True, verbs=verbs, shortnames={"trr"}, subresources={"status"}, singular="therapyrlhfrun"
    )
    emulator.resources["batch/v1/jobs"] = kmock.ResourceInfo(kind="Job", namespaced=True, verbs=verbs, subresources={"status"})
    emulator.resources["v1/configmaps"] = kmock.ResourceInfo(kind="ConfigMap", namespaced=True, verbs=verbs)
    emulator.resources["v1/pods"] = kmock.ResourceInfo(kind="Pod", namespaced=True, verbs=verbs, subresources={"status"})
    emulator.resources["v1/secrets"] = kmock.ResourceInfo(kind="Secret", namespaced=True, verbs=verbs)
    emulator.resources["v1/events"] = kmock.ResourceInfo(kind="Event", namespaced=True, verbs=verbs)
    emulator.resources["v1/namespaces"] = kmock.ResourceInfo(kind="Namespace", namespaced=False, verbs=verbs)
    emulator.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock.ResourceInfo(
        kind="CustomResourceDefinition", namespaced=False, verbs=verbs
    )


def write_kubeconfig(path: Path, url: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": url}}],
                "users": [{"name": "tester", "user": {"token": OPERATOR_TOKEN}}],
                "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
                "current-context": "emulator",
            }
        )
    )
    return path
