"""The least-privilege store access of a rater: the policy ``therapy-rlhf rater-access`` prints.

A psychologist's credential needs, and gets, exactly this:

* list the store's keys under the prefix (key names only: the TUI finds runs and
  rounds, and its own rating versions, by listing);
* read each run's frozen spec (rubric, guidelines), its batches (the responses to
  rate) and its gates (whether a round is closed);
* read and create its own rating objects, under ``rounds/NNNN/ratings/<rater>/``,
  and on S3 only with ``If-None-Match: *`` (a create; no overwrite).

Nothing else: not another rater's ratings, not gate.json, not a checkpoint, not
the spec. Two dialects: ``s3`` (an IAM identity policy for the rater's user or
role, or with ``principal`` a bucket-policy statement naming it) and ``minio``
(a MinIO user policy for ``mc admin policy create``; MinIO does not document the
``s3:if-none-match`` condition key, so there the create-only rule rests on the
tools' conditional writes and the executor's digests, not on the policy).

Whatever the policy, integrity does not depend on it (``therapy_rlhf.store.integrity``).
"""

from __future__ import annotations

from typing import Any

from therapy_rlhf.contracts import names
from therapy_rlhf.store.backends import check_prefix

DIALECTS = ("s3", "minio")


def _run_roots(prefix: str, runs: list[tuple[str, str]]) -> list[str]:
    base = f"{prefix}/" if prefix else ""
    if not runs:
        # Any namespace and run: in IAM patterns '*' also matches '/', so this is
        # broader than one level (see docs/scoring.md); --run names them exactly.
        return [f"{base}*/*"]
    return [f"{base}{ns}/{run}" for ns, run in runs]


def rater_policy(
    rater: str,
    bucket: str,
    prefix: str = "",
    runs: list[tuple[str, str]] | None = None,
    dialect: str = "s3",
    principal: str | None = None,
) -> dict[str, Any]:
    """The policy document (a dict ready for ``json.dumps``)."""
    names.rater_id(rater)
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, got {names.quote(dialect)}")
    if principal is not None and dialect != "s3":
        raise ValueError("--principal (a bucket policy) is for the s3 dialect; MinIO attaches user policies")
    prefix = check_prefix(prefix)
    runs = [(names.namespace(ns), names.run_name(run)) for ns, run in (runs or [])]
    roots = _run_roots(prefix, runs)
    arn = f"arn:aws:s3:::{bucket}"
    # Four digits: a round folder, never a path that merely ends in 'ratings/<rater>/'.
    rounds = [f"{root}/rounds/????" for root in roots]
    listing = [f"{prefix}/", f"{prefix}/*"] if prefix else ["", "*"]
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ListKeyNamesOnly",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": [arn],
            "Condition": {"StringLike": {"s3:prefix": listing}},
        },
        {
            "Sid": "ReadSpecsBatchesGatesAndOwnRatings",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": [f"{arn}/{root}/spec.json" for root in roots]
            + [f"{arn}/{r}/batch.jsonl" for r in rounds]
            + [f"{arn}/{r}/gate.json" for r in rounds]
            + [f"{arn}/{r}/ratings/{rater}/*" for r in rounds],
        },
        {
            "Sid": "CreateOwnRatingsOnly",
            "Effect": "Allow",
            "Action": ["s3:PutObject"],
            "Resource": [f"{arn}/{r}/ratings/{rater}/*" for r in rounds],
        },
    ]
    if dialect == "s3":
        # S3 refuses a PutObject without If-None-Match: every write is a create.
        statements[2]["Condition"] = {"Null": {"s3:if-none-match": "false"}}
    if principal:
        for statement in statements:
            statement["Principal"] = {"AWS": principal}
    return {"Version": "2012-10-17", "Statement": statements}
