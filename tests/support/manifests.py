"""The one way tests and benchmarks write a run manifest: the envelope around a spec.

    run_doc({"model": {"source": "tiny:mistral"}}, "demo")        # the manifest as a dict (YAML/JSON body)
    run_manifest({"model": {"source": "tiny:mistral"}}, "demo")   # parsed: a RunManifest
"""

from __future__ import annotations

from typing import Any

from therapy_rlhf.contracts.spec import API_GROUP, API_VERSION, KIND, RunManifest, parse_run


def run_doc(spec: dict[str, Any], name: str = "demo", namespace: str | None = None, **metadata: Any) -> dict[str, Any]:
    """A TherapyRLHFRun manifest; ``metadata`` adds fields a cluster sets (uid, generation, ...)."""
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta.update(metadata)
    return {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "metadata": meta, "spec": spec}


def run_manifest(spec: dict[str, Any], name: str = "demo", namespace: str | None = None) -> RunManifest:
    """The parsed manifest (what load_run gives for the same document)."""
    return parse_run(run_doc(spec, name, namespace))
