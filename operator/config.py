"""Operator settings: everything an installer may tune, read from the environment.

The Helm chart sets these variables on the operator Deployment; tests build an
``OperatorConfig`` directly. Nothing here touches the cluster.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

# How often the timer re-reads each run (Job states, rating coverage). The
# gate closes and the PPO Job starts at most one interval after the last rating.
# 1 s (3 s before issue 22): a third of last rating -> next batch on the emulated
# cluster was this wait (bench/RESULTS.md); an idle waiting run costs one S3 LIST
# per tick, so installations with many runs may raise it.
DEFAULT_INTERVAL_SECONDS = 1.0
DEFAULT_JOB_TTL_SECONDS = 7 * 24 * 3600
DEFAULT_METRICS_PORT = 8080
# Where the frozen run manifest is mounted inside every Job.
RUN_CONFIG_DIR = "/etc/therapy-rlhf"
RUN_CONFIG_FILE = "run.json"
# Scratch volume for downloaded model files (THERAPY_RLHF_CACHE in the Job).
CACHE_DIR = "/var/cache/therapy-rlhf"
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {raw!r}")
    return value


def _env_json(name: str, kind: type) -> Any:
    """A JSON value of an environment variable (the chart renders lists and maps with toJson)."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return kind()
    try:
        value = json.loads(raw)
    except ValueError:
        raise ValueError(f"{name} must be JSON ({kind.__name__}), got {raw[:200]!r}") from None
    if not isinstance(value, kind) or (kind is dict and not all(isinstance(v, str) for v in value.values())) or (
        kind is list and not all(isinstance(v, str) for v in value)
    ):
        raise ValueError(f"{name} must be a JSON {kind.__name__} of strings, got {raw[:200]!r}")
    return value


def _env_int(name: str, default: int | None) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


@dataclass(frozen=True)
class OperatorConfig:
    """Settings of one operator process."""

    interval: float = DEFAULT_INTERVAL_SECONDS
    job_ttl_seconds: int = DEFAULT_JOB_TTL_SECONDS
    # Python launcher inside the job image ("python" or a full path).
    python: str = "python"
    # Port of the Prometheus /metrics endpoint; None serves no metrics.
    metrics_port: int | None = None
    # Extra environment given to every Job (e.g. HF_HUB_OFFLINE=1 on air-gapped clusters).
    job_env: dict[str, str] = field(default_factory=dict)
    # Installation-wide defaults for fields a run leaves out (the chart's values):
    # the job image, and the S3 endpoint, region and credentials Secret.
    default_image: str | None = None
    default_s3_endpoint: str | None = None
    default_s3_region: str | None = None
    default_credentials_secret: str | None = None
    # What a run's author may ask for (see admission.py). Images and service
    # accounts are fnmatch patterns; "*" opens a setting to any value.
    # Images: empty allows only the installation's job image (default_image, or
    # the spec model's default when there is none).
    allowed_images: tuple[str, ...] = ()
    # Service accounts for Jobs: empty allows none (the namespace's default, token never mounted).
    allowed_service_accounts: tuple[str, ...] = ()
    # Secrets a run may name as credentialsSecret: empty requires the Secret to carry the
    # opt-in label; a list allows exactly these names (and the RBAC reads only them).
    allowed_secrets: tuple[str, ...] = ()

    @classmethod
    def from_env(cls) -> "OperatorConfig":
        # JSON, as the chart renders it (toJson | quote): any value survives, commas and quotes included.
        extra = _env_json("THERAPY_RLHF_JOB_ENV", dict)
        bad = [k for k in extra if not ENV_NAME_RE.fullmatch(k)]
        if bad:
            raise ValueError(f"THERAPY_RLHF_JOB_ENV: {bad[0][:200]!r} is not an environment variable name")
        return cls(
            interval=_env_float("THERAPY_RLHF_INTERVAL", DEFAULT_INTERVAL_SECONDS),
            job_ttl_seconds=_env_int("THERAPY_RLHF_JOB_TTL_SECONDS", DEFAULT_JOB_TTL_SECONDS) or 0,
            python=os.environ.get("THERAPY_RLHF_JOB_PYTHON", "python"),
            metrics_port=_env_int("THERAPY_RLHF_METRICS_PORT", None),
            job_env=extra,
            default_image=os.environ.get("THERAPY_RLHF_DEFAULT_IMAGE") or None,
            default_s3_endpoint=os.environ.get("THERAPY_RLHF_DEFAULT_S3_ENDPOINT") or None,
            default_s3_region=os.environ.get("THERAPY_RLHF_DEFAULT_S3_REGION") or None,
            default_credentials_secret=os.environ.get("THERAPY_RLHF_DEFAULT_CREDENTIALS_SECRET") or None,
            allowed_images=tuple(_env_json("THERAPY_RLHF_ALLOWED_IMAGES", list)),
            allowed_service_accounts=tuple(_env_json("THERAPY_RLHF_ALLOWED_SERVICE_ACCOUNTS", list)),
            allowed_secrets=tuple(_env_json("THERAPY_RLHF_ALLOWED_SECRETS", list)),
        )

    def apply_defaults(self, spec: Any) -> Any:
        """A copy of a submitted spec with the installation defaults filled in where absent.

        Applied before validation and freezing, so the frozen spec says exactly
        what the Jobs use. Only S3 runs get storage defaults.
        """
        if not isinstance(spec, dict):
            return spec
        out = copy.deepcopy(spec)
        if self.default_image:
            res = out.setdefault("resources", {})
            if isinstance(res, dict):
                res.setdefault("image", self.default_image)
        storage = out.get("storage")
        if isinstance(storage, dict) and storage.get("bucket"):
            for key, value in (
                ("endpoint", self.default_s3_endpoint),
                ("region", self.default_s3_region),
            ):
                if value:
                    storage.setdefault(key, value)
            if self.default_credentials_secret:
                storage.setdefault("credentialsSecret", {"name": self.default_credentials_secret})
        return out
