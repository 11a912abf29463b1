"""kmock's Kubernetes emulator set up for the operator, shared by the operator
tests (tests/operator/conftest.py) and the operator benchmark (bench/operator_bench.py).

kmock serves any resource it is told about; this registers what the operator
touches, and fills in what kopf expects of a real API server on create.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import kmock

from therapy_rlhf.spec import API_GROUP, API_VERSION, KIND, PLURAL


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator plus what kopf's Events need: names from ``generateName``."""

    async def _handle(self, request):
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
                "users": [{"name": "tester", "user": {"token": "emulated"}}],
                "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
                "current-context": "emulator",
            }
        )
    )
    return path
