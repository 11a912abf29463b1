"""moto's S3 server with IAM enforced as AWS enforces it, for tests that act with a rater's credential.

    python tests/support/moto_iam.py PORT

moto evaluates IAM identity policies on S3 requests once auth is switched on
(``POST /moto-api/reset-auth`` with ``0``), but not as AWS does in three ways,
and this launcher puts each right so the policy ``therapy-rlhf rater-access``
prints is evaluated as written:

* **Actions.** AWS authorizes an S3 request under its IAM action, which is not
  always the API operation's name: ``ListObjectsV2`` needs ``s3:ListBucket``,
  ``HeadObject`` needs ``s3:GetObject``. moto 5.2.6 checks the operation name
  (``s3:ListObjectsV2``), so a correct policy is refused there; 5.2.5 used its
  own table. Both are mapped here to the IAM action (``IAM_ACTIONS``).
* **Conditions.** moto evaluates only ``StringEquals`` on ``sts:ExternalId`` and
  ignores every other condition; a failed condition then counts as an explicit
  Deny. Here the request's S3 condition keys (``s3:prefix`` of a listing,
  ``s3:if-none-match`` of a write) are taken from the request, the operators the
  rater policy uses are evaluated (``StringEquals``, ``StringLike``, ``Null``;
  any other fails closed), and an Allow statement whose condition fails simply
  does not apply, as in AWS.
* **Wildcards.** moto turns only ``*`` of a Resource pattern into a wildcard;
  ``?`` gets its IAM meaning here too (one character).

The moto release is pinned (images/constraints.txt); this launcher is what keeps
a policy test meaningful across releases.
"""

from __future__ import annotations

import fnmatch
import re
import sys
import threading

# S3 API operation (as moto names the request) -> the IAM action AWS checks for it.
# From AWS's "Actions, resources, and condition keys for Amazon S3" / "Required
# permissions for S3 API operations". Operations not listed keep their own name.
IAM_ACTIONS = {
    "ListObjects": "ListBucket",
    "ListObjectsV2": "ListBucket",
    "HeadBucket": "ListBucket",
    "HeadObject": "GetObject",
    "ListObjectVersions": "ListBucketVersions",
    "ListBucketVersions": "ListBucketVersions",
    "DeleteObjects": "DeleteObject",
    "CreateMultipartUpload": "PutObject",
    "UploadPart": "PutObject",
    "CompleteMultipartUpload": "PutObject",
    "ListParts": "ListMultipartUploadParts",
}

_request = threading.local()


def _iam_match(pattern: str, string: str):
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, string)


def _values(expected) -> list[str]:
    return [expected] if isinstance(expected, str) else list(expected)


def _condition_holds(operator: str, key: str, expected, context: dict[str, str]) -> bool:
    actual = context.get(key)
    if operator == "Null":
        # {"Null": {key: "false"}}: the key must be present; "true": absent.
        return (actual is None) == (str(_values(expected)[0]).lower() == "true")
    if actual is None:
        return False  # a String* condition on a key the request lacks does not hold (no ...IfExists here)
    if operator == "StringEquals":
        return actual in _values(expected)
    if operator == "StringLike":
        # IAM's StringLike: '*' any run of characters, '?' one character.
        return any(fnmatch.fnmatchcase(actual, pattern.replace("[", "[[]")) for pattern in _values(expected))
    return False  # an operator this harness does not evaluate never grants access


def _request_context(iam_request) -> dict[str, str]:
    context: dict[str, str] = {}
    prefix = iam_request._data.get("prefix")
    if prefix is not None:
        context["s3:prefix"] = prefix[0] if isinstance(prefix, list) else prefix
    for name, value in dict(iam_request._headers).items():
        if name.lower() == "if-none-match":
            context["s3:if-none-match"] = value
    return context


def install() -> None:
    """Patch moto's IAM checks in this process (the server runs in it)."""
    from moto.iam import access_control as ac

    ac.IAMPolicyStatement._match = staticmethod(_iam_match)
    checked = ac.IAMRequestBase.check_action_permitted

    def check_action_permitted(self, resource: str) -> None:
        service, _, operation = self._action.partition(":")
        if service == "s3":
            self._action = f"s3:{IAM_ACTIONS.get(operation, operation)}"
            _request.context = _request_context(self)
        try:
            checked(self, resource)
        finally:
            _request.context = None

    def statement_permits(self, action, resource="*", principal=None, incoming_condition_values=None):
        statement = self._statement
        if "NotAction" in statement:
            concerned = not self._check_element_matches("NotAction", action)
        else:
            concerned = self._check_element_matches("Action", action)
        if not concerned or self.is_unknown_principal(statement.get("Principal")):
            return ac.PermissionResult.NEUTRAL
        if principal and not self._check_principal(principal):
            return ac.PermissionResult.DENIED
        context = getattr(_request, "context", None) or dict(incoming_condition_values or {})
        conditions = statement.get("Condition") or {}
        if not all(_condition_holds(op, key, expected, context)
                   for op, pairs in conditions.items() for key, expected in pairs.items()):
            return ac.PermissionResult.NEUTRAL  # a statement whose condition fails does not apply
        if statement.get("Resource") and not self._check_element_matches("Resource", resource):
            return ac.PermissionResult.NEUTRAL
        return ac.PermissionResult.PERMITTED if statement["Effect"] == "Allow" else ac.PermissionResult.DENIED

    ac.IAMRequestBase.check_action_permitted = check_action_permitted
    ac.IAMPolicyStatement.is_action_permitted = statement_permits


def main() -> None:
    from moto.server import ThreadedMotoServer

    install()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
    server.start()
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    server.stop()


if __name__ == "__main__":
    main()
