"""The run's ConfigMap (``<run>-run-config``): the frozen manifest every Job mounts as run.json.

Created once; compared with the frozen spec before every Job is created and
while one runs, and patched back (with a Warning Event) if someone edited it.
The Jobs also check run.json against the frozen spec's digest (``--expect
run-config=...``), so an edit that lands between the check and the Job's start
fails the Job instead of changing what it trains with.
"""

from __future__ import annotations

from typing import Any, Callable

from therapy_rlhf.contracts import phases
from therapy_rlhf.contracts.spec import RunManifest

from therapy_rlhf.operator import builders, kube

EmitFn = Callable[[str, str, str], None]


def ensure(api: kube.KubeApi, manifest: RunManifest, owner: dict[str, Any]) -> None:
    """Create the ConfigMap, or put the frozen manifest back into an existing one."""
    try:
        api.create_configmap(builders.build_configmap(manifest, owner))
    except kube.Conflict:
        check(api, manifest, owner, None)


def check(api: kube.KubeApi, manifest: RunManifest, owner: dict[str, Any], emit: EmitFn | None) -> None:
    """Restore the frozen manifest if someone edited the ConfigMap (re-create it if deleted)."""
    cm = builders.build_configmap(manifest, owner)
    name = cm["metadata"]["name"]
    try:
        existing = api.read_configmap(manifest.namespace, name)
    except kube.NotFound:
        api.create_configmap(cm)
        return
    if (existing.get("data") or {}) != cm["data"]:
        api.patch_configmap(manifest.namespace, name, {"data": cm["data"]})
        if emit is not None:
            emit("Warning", phases.R_RUN_CONFIG_RESTORED,
                 f"ConfigMap {manifest.namespace}/{name} differed from the frozen spec; restored it")
