"""Ratings under injected S3 faults: acknowledged, stored, duplicates, lost.

    python -m bench.fault_injection [--responses 250] [--raters 4] [--rate 0.05] [--seeds 1 2 3] [--signed]

moto's S3 server runs here on loopback behind the fault-injecting proxy of
tests/support/fault_proxy.py: ``--rate`` of all requests get one of four
faults (503 or a connection reset before forwarding; a 500 or a reset after
S3 applied the request). ``--raters`` tools each load the round and submit one
first rating for each of ``--responses`` responses with
``ratings.submit_rating`` through the proxy, retrying a failed submission
with the same rating (as the TUI's writer does); the store is then listed
past the proxy. Every submission is a first rating, so any second object for
a (rater, response) is a duplicate, and an acknowledged submission without an
object is lost. With ``--signed`` every rater signs with a key registered in the
run's roster, and the stored ratings are read back as every reader does: the
table adds how many verify and how many are refused.

Prints a Markdown table; append it to bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import uuid

from tests.support.fault_proxy import run_workload


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--responses", type=int, default=250)
    parser.add_argument("--raters", type=int, default=4)
    parser.add_argument("--rate", type=float, default=0.05)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--signed", action="store_true", help="Raters sign; count verified and refused ratings.")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    rows = []
    try:
        for seed in args.seeds:
            bucket = f"faults-{uuid.uuid4().hex[:10]}"
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
            out = run_workload(endpoint, bucket, args.responses, args.raters, args.rate, seed, signed=args.signed)
            rows.append((seed, out))
            print(f"seed {seed}: {out}", file=sys.stderr)
    finally:
        server.stop()
    print(f"{args.responses} responses x {args.raters} raters, {args.rate:.0%} of requests faulted; "
          f"Python {platform.python_version()}, {os.cpu_count()} CPUs\n")
    extra = " verified | refused |" if args.signed else ""
    print("| seed | submitted | acknowledged | stored | duplicates | lost | requests | faults (503/reset before, 500/reset after) "
          f"| client retries | seconds |{extra}")
    print("|---|---|---|---|---|---|---|---|---|---|" + "---|---|" * args.signed)
    for seed, o in rows:
        f = o.faults
        faults = "/".join(str(f.get(k, 0)) for k in ("503-before", "reset-before", "500-after", "reset-after"))
        print(f"| {seed} | {o.submitted} | {o.acknowledged} | {o.stored} | {o.duplicates} | {o.lost} | {o.requests} "
              f"| {faults} | {o.client_retries} | {o.seconds} |" + (f" {o.verified} | {o.refused} |" if args.signed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
