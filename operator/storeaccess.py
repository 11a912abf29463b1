"""The operator's own handle on a run's store, with the credentials from its Secret.

The operator reads the store to see progress markers and rating coverage, and
writes only the frozen spec and gate.json. It uses the same Secret the Jobs
get, read through the API, and keeps one client per (storage, Secret version).
A Secret is used only once it opted in (``admission.check_secret``).
"""

from __future__ import annotations

import json
import threading
import time

from therapy_rlhf.contracts.spec import RunManifest
from therapy_rlhf.store.backends import S3Store, Store

from therapy_rlhf.operator.admission import check_secret
from therapy_rlhf.operator.config import OperatorConfig
from therapy_rlhf.operator.kube import KubeApi


class StoreConfigError(ValueError):
    """The run's storage cannot be used from a cluster (one line)."""


# Seconds a Secret read stays fresh: rotated credentials are picked up within this,
# and 100 runs polling every few seconds do not read their Secret on every tick.
SECRET_TTL_SECONDS = 60.0


class StoreCache:
    def __init__(self, secret_ttl: float = SECRET_TTL_SECONDS) -> None:
        self._lock = threading.Lock()
        self._stores: dict[str, Store] = {}
        self._secrets: dict[tuple[str, str], tuple[float, dict[str, str], str, dict]] = {}
        self._secret_ttl = secret_ttl

    def _secret(self, api: KubeApi, namespace: str, name: str) -> tuple[dict[str, str], str, dict]:
        now = time.monotonic()
        with self._lock:
            cached = self._secrets.get((namespace, name))
        if cached is not None and now - cached[0] < self._secret_ttl:
            return cached[1], cached[2], cached[3]
        data, version, meta = api.read_secret_data(namespace, name)  # NotFound is never cached
        with self._lock:
            self._secrets[(namespace, name)] = (now, data, version, meta)
        return data, version, meta

    def store_for(self, manifest: RunManifest, api: KubeApi, config: OperatorConfig | None = None) -> Store:
        """An S3 store for the run; kube.NotFound if its credentials Secret is missing,
        admission.NotAllowed if the Secret did not opt in to being used by runs."""
        storage = manifest.spec.storage
        if storage.bucket is None:
            raise StoreConfigError(
                "spec.storage.localPath is for the local runner; a run on a cluster needs spec.storage.bucket"
            )
        credentials: dict[str, str] = {}
        version = "pod-identity"
        secret = storage.credentials_secret
        if secret is not None:
            data, version, meta = self._secret(api, manifest.namespace, secret.name)
            try:
                # Before a key is read: a Secret that did not opt in is never sent anywhere.
                check_secret(manifest, config or OperatorConfig(), meta)
                for field, key in (
                    ("aws_access_key_id", secret.access_key_id_key),
                    ("aws_secret_access_key", secret.secret_access_key_key),
                ):
                    if key not in data:
                        raise StoreConfigError(
                            f"Secret {manifest.namespace}/{secret.name} has no key {key!r} "
                            f"(spec.storage.credentialsSecret)"
                        )
                    credentials[field] = data[key]
            except ValueError:  # NotAllowed, StoreConfigError
                # A refused Secret is read again next tick: labelling or fixing it lifts the refusal then.
                with self._lock:
                    self._secrets.pop((manifest.namespace, secret.name), None)
                raise
        cache_key = json.dumps([storage.to_json_dict(), manifest.namespace, version], sort_keys=True)
        with self._lock:
            store = self._stores.get(cache_key)
            if store is None:
                store = S3Store(storage.bucket, storage.prefix, client=_client(storage, credentials))
                self._stores[cache_key] = store
            return store


def _client(storage, credentials: dict[str, str]):
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=storage.endpoint,
        region_name=storage.region,
        config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=3, read_timeout=20),
        **credentials,
    )
