"""The few Kubernetes API calls the operator makes, over the official client.

Objects go in and come out as plain dicts (``_preload_content=False``), the
same shape the builders produce. API errors become four exceptions the
reconciler turns into conditions: NotFound, Conflict, Forbidden, ApiError.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException

from therapy_rlhf.contracts.spec import API_GROUP, API_VERSION, PLURAL

from therapy_rlhf.operator.builders import LABEL_MANAGED_BY, LABEL_RUN, MANAGED_BY


class KubeError(RuntimeError):
    """An API call failed; ``str()`` is one line naming the call and the reason."""


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


class Forbidden(KubeError):
    pass


def load_configuration() -> kubernetes.client.Configuration:
    """In-cluster service account when running in a pod, else $KUBECONFIG / ~/.kube/config."""
    configuration = kubernetes.client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    else:
        kubernetes.config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration
        )
    return configuration


def _wrap(what: str, err: ApiException) -> KubeError:
    try:
        message = json.loads(err.body or "{}").get("message") or err.reason
    except ValueError:
        message = err.reason
    line = f"{what}: HTTP {err.status}: {message}"
    if err.status == 404:
        return NotFound(line)
    if err.status == 409:
        return Conflict(line)
    if err.status in (401, 403):
        return Forbidden(line)
    return KubeError(line)


class KubeApi:
    """Typed wrappers over the calls the reconciler needs."""

    def __init__(self, configuration: kubernetes.client.Configuration):
        self.client = kubernetes.client.ApiClient(configuration)
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.batch = kubernetes.client.BatchV1Api(self.client)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)

    def close(self) -> None:
        self.client.close()

    @staticmethod
    def _call(what: str, fn, *args, **kwargs) -> Any:
        try:
            resp = fn(*args, _preload_content=False, **kwargs)
        except ApiException as err:
            raise _wrap(what, err) from None
        except OSError as err:  # connection refused, DNS, TLS
            raise KubeError(f"{what}: {err}") from None
        try:
            return json.loads(resp.data or b"{}")
        except ValueError:
            raise KubeError(f"{what}: the API server answered with a body that is not JSON") from None

    # -- Jobs --------------------------------------------------------------
    def list_jobs(self, namespace: str, run: str) -> list[dict[str, Any]]:
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_RUN}={run}"
        data = self._call(
            f"listing Jobs of {namespace}/{run}", self.batch.list_namespaced_job, namespace, label_selector=selector
        )
        # Filter again: a selector the server ignored must not leak other runs' Jobs.
        return [
            j for j in data.get("items") or []
            if ((j.get("metadata") or {}).get("labels") or {}).get(LABEL_RUN) == run
        ]

    def create_job(self, job: dict[str, Any]) -> dict[str, Any]:
        meta = job["metadata"]
        return self._call(
            f"creating Job {meta['namespace']}/{meta['name']}", self.batch.create_namespaced_job, meta["namespace"], job
        )

    def list_job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        """The pods a Job made (the Job controller labels them job-name=<job>)."""
        data = self._call(
            f"listing pods of Job {namespace}/{job}",
            self.core.list_namespaced_pod,
            namespace,
            label_selector=f"job-name={job}",
        )
        return [p for p in data.get("items") or [] if ((p.get("metadata") or {}).get("labels") or {}).get("job-name") == job]

    # -- the run's status and Events ---------------------------------------
    def patch_run_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Merge ``status`` into the run's status now (the record of what the operator is about to write)."""
        return self._call(
            f"patching the status of {namespace}/{name}", self.custom.patch_namespaced_custom_object_status,
            API_GROUP, API_VERSION, namespace, PLURAL, name, {"status": status},
        )

    def create_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """Post an Event under its own name: Conflict if one of that name was posted already."""
        meta = event["metadata"]
        return self._call(
            f"posting Event {meta['namespace']}/{meta['name']}", self.core.create_namespaced_event, meta["namespace"], event
        )

    # -- ConfigMaps --------------------------------------------------------
    def read_configmap(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call(f"reading ConfigMap {namespace}/{name}", self.core.read_namespaced_config_map, name, namespace)

    def create_configmap(self, cm: dict[str, Any]) -> dict[str, Any]:
        meta = cm["metadata"]
        return self._call(
            f"creating ConfigMap {meta['namespace']}/{meta['name']}",
            self.core.create_namespaced_config_map,
            meta["namespace"],
            cm,
        )

    def patch_configmap(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(
            f"patching ConfigMap {namespace}/{name}", self.core.patch_namespaced_config_map, name, namespace, body
        )

    # -- Secrets -----------------------------------------------------------
    def read_secret_data(self, namespace: str, name: str) -> tuple[dict[str, str], str, dict[str, Any]]:
        """(decoded data, resourceVersion, {labels, annotations}) of a Secret."""
        data = self._call(f"reading Secret {namespace}/{name}", self.core.read_namespaced_secret, name, namespace)
        decoded = {}
        for key, value in (data.get("data") or {}).items():
            try:
                decoded[key] = base64.b64decode(value).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                raise KubeError(f"Secret {namespace}/{name}: key {key!r} is not base64-encoded UTF-8") from None
        decoded.update(data.get("stringData") or {})
        meta = data.get("metadata") or {}
        version = meta.get("resourceVersion") or json.dumps(decoded, sort_keys=True)
        return decoded, str(version), {"labels": meta.get("labels") or {}, "annotations": meta.get("annotations") or {}}
