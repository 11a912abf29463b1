"""What a run's author may ask the operator for (pure checks; the reconciler applies them).

Whoever can create a TherapyRLHFRun gets Jobs made for them by the operator's
ServiceAccount, so the operator -- not the API server's RBAC -- decides what
those Jobs may be:

* images: only the installation's job image unless the platform team allows
  more (``security.allowedImages``, fnmatch patterns, ``"*"`` for any);
* service accounts: none (the namespace's default, with no token mounted)
  unless allowed (``security.allowedServiceAccounts``);
* credentials: a Secret named by ``spec.storage.credentialsSecret`` must opt
  in, either by the label ``rlhf.therapy.dev/credentials: "true"`` or by being
  on the chart's allow-list (``security.credentialsSecrets``; with a list, only
  those names, and the operator's RBAC can read no other Secret). A Secret may
  also pin where its keys may be sent: the annotation
  ``rlhf.therapy.dev/s3-endpoints`` lists the endpoints allowed (comma-separated).

A refusal blocks the run (condition Ready=False, reason NotAllowed, a Warning
Event) until the spec or the installation changes; nothing is created.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Mapping

from therapy_rlhf.contracts.spec import API_GROUP, ResourcesSpec, RunManifest

from therapy_rlhf.operator.config import OperatorConfig

LABEL_CREDENTIALS = f"{API_GROUP}/credentials"
ANNOTATION_ENDPOINTS = f"{API_GROUP}/s3-endpoints"
SPEC_DEFAULT_IMAGE = ResourcesSpec.model_fields["image"].default


class NotAllowed(ValueError):
    """The run asks for something this installation does not allow (one line)."""


def allowed_images(config: OperatorConfig) -> tuple[str, ...]:
    return config.allowed_images or (config.default_image or SPEC_DEFAULT_IMAGE,)


def check_run(manifest: RunManifest, config: OperatorConfig) -> None:
    """Image and service account of the run's Jobs (NotAllowed naming the field)."""
    res = manifest.spec.resources
    images = allowed_images(config)
    if not any(fnmatch.fnmatchcase(res.image, pattern) for pattern in images):
        raise NotAllowed(
            f"spec.resources.image {res.image!r} is not allowed on this installation (allowed: {', '.join(images)}); "
            "ask the platform team to add it to security.allowedImages"
        )
    sa = res.service_account_name
    if sa is not None and not any(fnmatch.fnmatchcase(sa, p) for p in config.allowed_service_accounts):
        allowed = ", ".join(config.allowed_service_accounts) or "none"
        raise NotAllowed(
            f"spec.resources.serviceAccountName {sa!r} is not allowed on this installation (allowed: {allowed}); "
            "ask the platform team to add it to security.allowedServiceAccounts"
        )


def check_secret(manifest: RunManifest, config: OperatorConfig, secret_meta: Mapping[str, Any]) -> None:
    """The run's credentials Secret opted in, and the run's endpoint is one the Secret allows."""
    storage = manifest.spec.storage
    name = storage.credentials_secret.name if storage.credentials_secret else None
    if name is None:
        return
    where = f"Secret {manifest.namespace}/{name} (spec.storage.credentialsSecret)"
    own = name == config.default_credentials_secret  # the installation's own default
    if config.allowed_secrets:
        if name not in config.allowed_secrets and not own:
            raise NotAllowed(f"{where} is not in this installation's security.credentialsSecrets")
    elif not own and ((secret_meta.get("labels") or {}).get(LABEL_CREDENTIALS) != "true"):
        raise NotAllowed(f'{where} has not opted in: label it {LABEL_CREDENTIALS}="true" to let runs use it')
    pinned = (secret_meta.get("annotations") or {}).get(ANNOTATION_ENDPOINTS)
    if pinned is not None:
        endpoints = [e.strip().rstrip("/") for e in pinned.split(",") if e.strip()]
        if (storage.endpoint or "").rstrip("/") not in endpoints:
            raise NotAllowed(
                f"{where} may only be sent to {', '.join(endpoints) or 'no endpoint'} "
                f"(annotation {ANNOTATION_ENDPOINTS}), not to {storage.endpoint or 'AWS'!r}"
            )
