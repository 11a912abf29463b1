"""The kopf handlers: thin typed wrappers, all registered here and only here.

Every handler hands the run to ``reconcile.reconcile`` and applies its result
to kopf's ``patch``. ``register(registry, config)`` lets tests run the real
operator with their own interval; the entrypoint (``__main__``) registers into
kopf's default registry. Nothing is registered at import.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import kopf

from therapy_rlhf.contracts.spec import API_GROUP, API_VERSION, PLURAL

from therapy_rlhf.operator import kube, metrics
from therapy_rlhf.operator.builders import MAX_EVENT_MESSAGE
from therapy_rlhf.operator.config import OperatorConfig
from therapy_rlhf.operator.reconcile import OperatorState, reconcile

STATE_KEY = "therapy_rlhf_state"


def _apply(result, patch: kopf.Patch, current: dict[str, Any]) -> None:
    """Patch only what changed: an idle run awaiting ratings costs no API write per tick."""
    if result.status is not None:
        for key, value in result.status.items():
            if current.get(key) != value:
                patch.status[key] = value
    for annotation in result.remove_annotations:
        patch.metadata.annotations[annotation] = None


def _run(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger) -> None:
    state: OperatorState = memo[STATE_KEY]
    plain: dict[str, Any] = copy.deepcopy(
        {"metadata": dict(body.metadata), "spec": dict(body.spec), "status": dict(body.status)}
    )

    def emit(event_type: str, reason: str, message: str) -> None:
        kopf.event(body, type=event_type, reason=reason, message=message[:MAX_EVENT_MESSAGE])

    _apply(reconcile(plain, state, emit, logger), patch, plain["status"])
    metrics.RECONCILES.inc()


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> kopf.OperatorRegistry:
    """Register every handler of the operator into ``registry``."""
    resource = (API_GROUP, API_VERSION, PLURAL)

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
        # Progress in annotations: the CRD's status schema would prune kopf's own fields.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=API_GROUP)
        settings.persistence.finalizer = f"{API_GROUP}/finalizer"
        # No namespace or CRD scanning: the namespaces are given (--namespace) or all
        # (--all-namespaces), and the CRD is installed before the operator. Scanning
        # would need cluster-wide list/watch on namespaces and CRDs, and without them
        # kopf retries each 403 for about a minute before it serves any run.
        settings.scanning.disabled = True
        # Events are posted explicitly (one per transition); log lines are not Events.
        settings.posting.level = logging.CRITICAL
        settings.execution.max_workers = 16
        # Never retry a handler in a tight loop; reconcile never raises for bad input anyway.
        settings.batching.error_delays = [1, 5, 15, 60]
        # A run is deleted while its (sync, thread-run) timer is mid-tick now and then;
        # kopf then re-checks whether the tick ended only every cancellation_polling
        # seconds (default 60) before it removes the finalizer. Ticks take well under
        # a second, so look again every second: deletion is not held up for a minute.
        settings.background.cancellation_polling = 1
        memo[STATE_KEY] = OperatorState(kube.KubeApi(kube.load_configuration()), config)
        if config.metrics_port:
            metrics.serve(config.metrics_port)
            logger.info("metrics on :%d/metrics", config.metrics_port)

    @kopf.on.cleanup(registry=registry)
    def cleanup(memo: kopf.Memo, **_: Any) -> None:
        state = memo.get(STATE_KEY)
        if state is not None:
            state.api.close()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        # The same configuration as the client that creates Jobs, so both agree on the cluster.
        c = kube.load_configuration()
        header = c.get_api_key_with_prefix("BearerToken") or c.get_api_key_with_prefix("authorization")
        scheme, _, token = (header or "").rpartition(" ")
        return kopf.ConnectionInfo(
            server=c.host,
            ca_path=c.ssl_ca_cert,
            insecure=not c.verify_ssl,
            username=c.username or None,
            password=c.password or None,
            scheme=scheme or None,
            token=token or None,
            certificate_path=c.cert_file,
            private_key_path=c.key_file,
            default_namespace=None,
        )

    @kopf.on.create(*resource, registry=registry)
    def created(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
        _run(body, patch, memo, logger)

    @kopf.on.resume(*resource, registry=registry)
    def resumed(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
        _run(body, patch, memo, logger)

    # spec.suspend, an edited spec, the close-gate annotation: act now, not at the next tick.
    @kopf.on.update(*resource, registry=registry)
    def updated(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
        _run(body, patch, memo, logger)

    # sharp: ticks on a fixed schedule, however long a reconcile took, so the gate
    # closes at most one interval after the last rating.
    @kopf.timer(*resource, interval=config.interval, sharp=True, registry=registry)
    def tick(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
        _run(body, patch, memo, logger)

    # optional: adds no finalizer, so deleting a run is never blocked by the operator.
    @kopf.on.delete(*resource, registry=registry, optional=True)
    def deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        state: OperatorState | None = memo.get(STATE_KEY)
        if state is not None:
            state.forget(body.metadata.get("uid") or f"{body.metadata.namespace}/{body.metadata.name}")

    return registry
