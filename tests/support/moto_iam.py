"""moto's S3 server with IAM enforced, for tests that act with a rater's credential.

    python tests/support/moto_iam.py PORT

moto evaluates IAM identity policies on S3 requests once auth is switched on
(``POST /moto-api/reset-auth`` with ``0``) but ignores Condition blocks (so
the policy's ``s3:prefix`` and ``s3:if-none-match`` conditions are not
checked here; AWS checks them) and turns only ``*`` of a Resource pattern into
a wildcard. This launcher gives ``?`` its IAM meaning too (one character), so
the policy ``therapy-rlhf rater-access`` prints is evaluated as written.
"""

from __future__ import annotations

import re
import sys


def _iam_match(pattern: str, string: str):
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, string)


def main() -> None:
    from moto.iam.access_control import IAMPolicyStatement
    from moto.server import ThreadedMotoServer

    IAMPolicyStatement._match = staticmethod(_iam_match)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
    server.start()
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    server.stop()


if __name__ == "__main__":
    main()
