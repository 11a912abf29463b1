"""Pure builders: a run and a planner step in, a Kubernetes manifest (a dict) out.

Nothing here talks to a cluster, so every field of every Job can be checked by
unit tests. Names are deterministic -- (run, kind, round, attempt) -- so an
operator restarted mid-run finds the Job it already created (a create that
answers 409 is adopted) instead of starting a duplicate.
"""

from __future__ import annotations

from typing import Any

from therapy_rlhf.contracts import jobkinds
from therapy_rlhf.contracts.spec import API_GROUP, API_VERSION, KIND, RunManifest

from therapy_rlhf.operator import config as cfg

MANAGED_BY = "therapy-rlhf-operator"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_RUN = f"{API_GROUP}/run"
LABEL_KIND = f"{API_GROUP}/job-kind"
LABEL_ROUND = f"{API_GROUP}/round"
LABEL_ATTEMPT = f"{API_GROUP}/attempt"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
ANNOTATION_CLOSE_GATE = f"{API_GROUP}/close-gate"

NON_ROOT_UID = 1000
# Where a container's termination message is read from (the Kubernetes default, set explicitly).
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
# Kubernetes caps an Event's message at 1 KiB.
MAX_EVENT_MESSAGE = 1000


def job_name(run: str, kind: str, round_no: int, attempt: int) -> str:
    """'{run}-{kind}-r{round}-a{attempt}': run names are capped at 40 chars, so this fits 63
    (the longest, ppo-generate of round 9999 at attempt 21, is exactly 63)."""
    return f"{run}-{kind}-r{round_no}-a{attempt}"


def configmap_name(run: str) -> str:
    return f"{run}-run-config"


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    """The run as the controlling owner: deleting it garbage-collects its children."""
    meta = owner.get("metadata", {})
    if not meta.get("uid"):
        raise ValueError(f"run {meta.get('name')!r} has no metadata.uid; cannot own children")
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def run_labels(run: str) -> dict[str, str]:
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_RUN: run}


def job_labels(run: str, kind: str, round_no: int, attempt: int) -> dict[str, str]:
    return {
        **run_labels(run),
        LABEL_KIND: kind,
        LABEL_ROUND: str(round_no),
        LABEL_ATTEMPT: str(attempt),
    }


def manifest_json(manifest: RunManifest) -> str:
    """The frozen manifest as the Jobs read it (same canonical form as the store's spec.json)."""
    from therapy_rlhf.store.runs import dump_manifest

    return dump_manifest(manifest)


def build_configmap(manifest: RunManifest, owner: dict[str, Any]) -> dict[str, Any]:
    """The frozen run manifest, mounted into every Job as its --run-config file."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(manifest.name),
            "namespace": manifest.namespace,
            "labels": run_labels(manifest.name),
            "ownerReferences": [owner_reference(owner)],
        },
        "data": {cfg.RUN_CONFIG_FILE: manifest_json(manifest)},
    }


def job_command(
    manifest: RunManifest, kind: str, round_no: int, config: cfg.OperatorConfig, expect: list[str] | None = None
) -> list[str]:
    """The job entrypoint, under `accelerate launch` with one process per GPU when asked.

    ``expect`` is ``integrity.expect_args(...)``: the digests the operator recorded
    for the Job's inputs. The Job reports its own outputs' digests in its
    termination message, which the operator reads back (``digests.py``).
    """
    args = [
        kind,
        "--run-config", f"{cfg.RUN_CONFIG_DIR}/{cfg.RUN_CONFIG_FILE}",
        "--round", str(round_no),
        "--store", manifest.spec.storage.uri(),
        *(expect or []),
        "--outputs-file", TERMINATION_MESSAGE_PATH,
    ]
    gpus = gpus_for(manifest, kind)
    if gpus > 1:
        # One process per GPU on this one node; each gets LOCAL_RANK and pins cuda:LOCAL_RANK
        # (jobs/distributed.py). Mixed precision is the job's own (Trainer/ppo flags), not the launcher's.
        return [
            "accelerate", "launch", "--multi_gpu", "--num_machines", "1", "--num_processes", str(gpus),
            "--mixed_precision", "no", "--dynamo_backend", "no", "--module", "therapy_rlhf.jobs", *args,
        ]
    return [config.python, "-m", "therapy_rlhf.jobs", *args]


def _env(manifest: RunManifest, config: cfg.OperatorConfig) -> list[dict[str, Any]]:
    storage = manifest.spec.storage
    env: list[dict[str, Any]] = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "THERAPY_RLHF_CACHE", "value": cfg.CACHE_DIR},
        {"name": "HF_HOME", "value": f"{cfg.CACHE_DIR}/huggingface"},
        {"name": "TMPDIR", "value": "/tmp"},
        # The root filesystem is read-only and uid 1000 has no home: libraries that
        # write caches under $HOME (matplotlib, triton) get the writable /tmp.
        {"name": "HOME", "value": "/tmp"},
    ]
    if storage.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": storage.endpoint})
    if storage.region:
        env.append({"name": "AWS_DEFAULT_REGION", "value": storage.region})
    secret = storage.credentials_secret
    if secret is not None:
        # Credentials never appear in the Job manifest: the kubelet resolves them.
        for var, key in (
            ("AWS_ACCESS_KEY_ID", secret.access_key_id_key),
            ("AWS_SECRET_ACCESS_KEY", secret.secret_access_key_key),
        ):
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": key}}})
    env.extend({"name": k, "value": v} for k, v in sorted(config.job_env.items()))
    return env


def _cache_volume(res) -> dict[str, Any]:
    """Model files: a shared claim when the run names one, else scratch for this Job alone."""
    if res.cache_claim:
        return {"name": "cache", "persistentVolumeClaim": {"claimName": res.cache_claim}}
    return {"name": "cache", "emptyDir": {"sizeLimit": res.cache_size}}


def gpus_for(manifest: RunManifest, kind: str) -> int:
    """GPUs a Job of this kind uses: all of `resources.gpus` for a kind that trains data parallel
    under `accelerate launch` (ppo-generate: the update, then rank 0 samples the next batch); one
    for generate and evaluate whatever `resources.gpus` says (more would sit idle, held)."""
    gpus = manifest.spec.resources.gpus
    return gpus if jobkinds.kind(kind).distributed else min(gpus, 1)


def _resources(manifest: RunManifest, kind: str) -> dict[str, Any]:
    res = manifest.spec.resources
    amounts = {"cpu": res.cpu, "memory": res.memory}
    limits: dict[str, Any] = {"memory": res.memory}
    gpus = gpus_for(manifest, kind)
    if gpus > 0:
        # Extended resources must be equal in requests and limits.
        amounts[res.gpu_resource_name] = str(gpus)
        limits[res.gpu_resource_name] = str(gpus)
    return {"requests": amounts, "limits": limits}


def _container(manifest: RunManifest, kind: str, round_no: int, config: cfg.OperatorConfig, expect: list[str] | None) -> dict[str, Any]:
    """The Job's one container: the job's command, its environment, resources, mounts, a locked-down context."""
    res = manifest.spec.resources
    return {
        "name": kind,
        "image": res.image,
        "imagePullPolicy": res.image_pull_policy,
        "command": job_command(manifest, kind, round_no, config, expect),
        "env": _env(manifest, config),
        "resources": _resources(manifest, kind),
        # A succeeded job's termination message is its outputs' digests (written to this
        # file); a failed job writes none, so its log's tail -- the one-line "error: ..." -- is.
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "run-config", "mountPath": cfg.RUN_CONFIG_DIR, "readOnly": True},
            {"name": "cache", "mountPath": cfg.CACHE_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def _pod_spec(manifest: RunManifest, container: dict[str, Any]) -> dict[str, Any]:
    """The pod: non-root, no API token, the run config, cache, scratch and shared-memory volumes, placement."""
    res = manifest.spec.resources
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # Jobs talk to the object store only, never to the Kubernetes API.
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": NON_ROOT_UID,
            "runAsGroup": NON_ROOT_UID,
            "fsGroup": NON_ROOT_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {
                "name": "run-config",
                "configMap": {
                    "name": configmap_name(manifest.name),
                    "items": [{"key": cfg.RUN_CONFIG_FILE, "path": cfg.RUN_CONFIG_FILE}],
                },
            },
            _cache_volume(res),
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
            # The container runtime's /dev/shm is 64 MiB; NCCL's shared-memory transport between
            # the GPUs of one pod needs far more. Memory-backed: it counts against resources.memory.
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": res.shm_size}},
        ],
    }
    if res.node_selector:
        pod_spec["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        pod_spec["tolerations"] = [t.to_json_dict() for t in res.tolerations]
    if res.priority_class_name:
        pod_spec["priorityClassName"] = res.priority_class_name
    if res.service_account_name:
        pod_spec["serviceAccountName"] = res.service_account_name
    return pod_spec


def build_job(
    manifest: RunManifest,
    kind: str,
    round_no: int,
    attempt: int,
    owner: dict[str, Any],
    config: cfg.OperatorConfig | None = None,
    expect: list[str] | None = None,
) -> dict[str, Any]:
    """The Job for one attempt of one planner step (``expect``: see ``job_command``)."""
    config = config or cfg.OperatorConfig()
    res = manifest.spec.resources
    name = job_name(manifest.name, kind, round_no, attempt)
    labels = job_labels(manifest.name, kind, round_no, attempt)
    job_meta_labels = dict(labels)
    if res.queue_name:
        job_meta_labels[LABEL_QUEUE] = res.queue_name
    pod_spec = _pod_spec(manifest, _container(manifest, kind, round_no, config, expect))
    job_spec: dict[str, Any] = {
        # Retries are the operator's: each attempt is a new Job (a new name), counted
        # against spec.backoffLimit, so a pod failure must end this Job at once.
        "backoffLimit": 0,
        "completions": 1,
        "parallelism": 1,
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if config.job_ttl_seconds > 0:
        job_spec["ttlSecondsAfterFinished"] = config.job_ttl_seconds
    if res.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = res.active_deadline_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": manifest.namespace,
            "labels": job_meta_labels,
            "annotations": {f"{API_GROUP}/spec-sha256": _digest(manifest)},
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": job_spec,
    }


def _digest(manifest: RunManifest) -> str:
    return run_config_sha256(manifest)


def run_config_sha256(manifest: RunManifest) -> str:
    """The digest of the run config the Jobs mount (the ConfigMap's run.json); passed as --expect run-config."""
    import hashlib

    return hashlib.sha256(manifest_json(manifest).encode("utf-8")).hexdigest()


def build_event(run_meta: dict[str, Any], key: str, event_type: str, reason: str, message: str, when: str) -> dict[str, Any]:
    """An Event about a run, named after what it announces (``key``: one gate, one Job).

    The name makes it exactly-once: an operator restarted after a crash posts it
    again when it cannot tell whether its predecessor did, and the API server
    answers 409 if it did.
    """
    uid = str(run_meta.get("uid") or "")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": ".".join(filter(None, (run_meta["name"], uid[:8], key))), "namespace": run_meta["namespace"]},
        "involvedObject": {
            "apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "name": run_meta["name"],
            "namespace": run_meta["namespace"], "uid": uid,
        },
        "type": event_type,
        "reason": reason,
        "message": message[:MAX_EVENT_MESSAGE],
        "source": {"component": MANAGED_BY},
        "reportingComponent": MANAGED_BY,
        "firstTimestamp": when,
        "lastTimestamp": when,
        "count": 1,
    }


def describe(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata", {})
    return f"{obj.get('kind', 'object')} {meta.get('namespace')}/{meta.get('name')}"


__all__ = [
    "ANNOTATION_CLOSE_GATE",
    "LABEL_ATTEMPT",
    "LABEL_KIND",
    "LABEL_MANAGED_BY",
    "LABEL_ROUND",
    "LABEL_RUN",
    "MANAGED_BY",
    "build_configmap",
    "build_event",
    "build_job",
    "configmap_name",
    "job_command",
    "job_name",
    "owner_reference",
]
