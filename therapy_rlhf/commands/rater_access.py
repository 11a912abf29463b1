"""therapy-rlhf rater-access: print the least-privilege store policy for one rater.

    therapy-rlhf rater-access --rater dr-lee --bucket rlhf-runs --prefix therapy-rlhf > dr-lee.json
    aws iam put-user-policy --user-name dr-lee --policy-name therapy-rlhf-rater --policy-document file://dr-lee.json
    # MinIO:
    therapy-rlhf rater-access --rater dr-lee --bucket rlhf-runs --prefix therapy-rlhf --dialect minio > dr-lee.json
    mc admin policy create ALIAS therapy-rlhf-dr-lee dr-lee.json && mc admin policy attach ALIAS therapy-rlhf-dr-lee --user dr-lee

What the policy allows and why: ``therapy_rlhf.store.access`` and docs/scoring.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from therapy_rlhf.commands._target import one_line

NAME = "rater-access"
HELP = "Print the least-privilege S3/MinIO policy for one rater (create own ratings, read batches)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rater", required=True, metavar="ID", help="The rater id the psychologist rates as.")
    parser.add_argument("--bucket", required=True, metavar="B", help="The runs' bucket (spec.storage.bucket).")
    parser.add_argument("--prefix", default="therapy-rlhf", metavar="P", help="The runs' key prefix (spec.storage.prefix).")
    parser.add_argument(
        "--run", action="append", default=[], metavar="NAMESPACE/NAME",
        help="Only these runs (repeatable); default every run under the prefix.",
    )
    parser.add_argument("--dialect", choices=["s3", "minio"], default="s3", help="Policy dialect (default s3).")
    parser.add_argument(
        "--principal", metavar="ARN",
        help="S3 only: print a bucket policy naming this principal instead of an IAM identity policy.",
    )


def run(args: argparse.Namespace) -> int:
    from therapy_rlhf.store.access import rater_policy

    try:
        runs = []
        for item in args.run:
            namespace, sep, name = item.partition("/")
            if not sep:
                raise ValueError(f"--run must be NAMESPACE/NAME, got {item[:200]!r}")
            runs.append((namespace, name))
        policy = rater_policy(args.rater, args.bucket, args.prefix, runs, args.dialect, args.principal)
    except ValueError as err:
        print(one_line(err), file=sys.stderr)
        return 1
    print(json.dumps(policy, indent=2))
    return 0
