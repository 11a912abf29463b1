"""A rater's least-privilege credential, acting against S3 with IAM enforced (moto).

The policy is exactly what ``therapy-rlhf rater-access`` prints. With it a
psychologist's tools work (find the open round, rate, correct) and every
forgery of the issue fails with AccessDenied, leaving the store as it was:
writing as another rater, creating gate.json or overwriting a closed one,
overwriting a checkpoint or the frozen spec, reading another rater's ratings."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest

from therapy_rlhf.store.access import rater_policy
from therapy_rlhf.cli import main as cli
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.rounds import load_round
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.contracts.records import PendingResponse, Rating, dump_batch
from therapy_rlhf.store.runs import freeze_spec
from therapy_rlhf.contracts.spec import FeedbackSpec
from therapy_rlhf.store.backends import AccessDenied, S3Store

from tests.support.budget import budget
from tests.support.manifests import run_manifest

SUPPORT = Path(__file__).resolve().parents[1] / "support"
PATHS = RunPaths("default", "demo")
PREFIX = "therapy-rlhf"
CRITERIA = {c.name: 0.75 for c in FeedbackSpec().rubric}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def iam_s3():
    """A moto server of our own (IAM enforcement is process-wide), with an executor and two raters."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(SUPPORT / "moto_iam.py"), str(port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        url = f"http://127.0.0.1:{port}"
        admin = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
        bucket = f"rlhf-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", **admin).create_bucket(Bucket=bucket)
        iam = boto3.client("iam", **admin)
        keys = {}
        policies = {
            "executor": {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "s3:*", "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]},
            "dr-lee": rater_policy("dr-lee", bucket, PREFIX),
            "dr-kim": rater_policy("dr-kim", bucket, PREFIX),
        }
        for user, policy in policies.items():
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="therapy-rlhf", PolicyDocument=json.dumps(policy))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        # From now on every request is checked against its user's policy.
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(
            f"{url}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"})).read()

        def store(user: str) -> S3Store:
            key_id, secret = keys[user]
            client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                                  aws_access_key_id=key_id, aws_secret_access_key=secret)
            return S3Store(bucket, PREFIX, client=client)

        yield store
    finally:
        proc.stdin.close()
        proc.wait(timeout=budget(4))


@pytest.fixture(scope="module")
def run(iam_s3):
    executor = iam_s3("executor")
    manifest = run_manifest({"model": {"source": "tiny:mistral"}, "storage": {"bucket": "b-unused", "prefix": PREFIX},
                                   "feedback": {"minRaters": 2}}, "demo")
    freeze_spec(executor, manifest)
    executor.write_bytes(PATHS.batch(1), dump_batch(
        [PendingResponse(id=i, round=1, prompt_id="p", prompt="I feel hopeless.", response="I hear you.")
         for i in ("r0001-a", "r0001-b")]))
    executor.write_json(PATHS.policy_prefix(1) + "/adapter_config.json", {"r": 8})  # a checkpoint
    return manifest


def snapshot(store) -> dict[str, bytes]:
    return {k: store.read_bytes(k) for k in store.list("")}


def test_a_raters_tools_work_with_the_policy(iam_s3, run):
    from therapy_rlhf.tui.catalog import find_work, open_round

    lee, kim = iam_s3("dr-lee"), iam_s3("dr-kim")
    work = find_work(lee, "dr-lee")
    assert [(w.run, w.round, w.responses) for w in work.items] == [("default/demo", 1, 2)] and not work.problems
    session = open_round(lee, "default", "demo", "dr-lee", 1)
    fb = run.spec.feedback
    first = submit_rating(lee, PATHS, session.state, Rating(response_id="r0001-a", rater="dr-lee", criteria=CRITERIA), fb)
    correction = submit_rating(lee, PATHS, session.state,
                               Rating(response_id="r0001-a", rater="dr-lee", criteria={**CRITERIA, "empathy": 1.0}), fb)
    assert (first.version, correction.version) == (1, 2)
    submit_rating(kim, PATHS, load_round(kim, PATHS, 1, feedback=fb), Rating(response_id="r0001-a", rater="dr-kim", criteria=CRITERIA), fb)
    # dr-lee sees only dr-lee's ratings: dr-kim's is unreadable, not garbage, and not counted.
    state = load_round(lee, PATHS, 1, feedback=fb)
    assert {r.rater for r in state.ratings} == {"dr-lee"} and state.garbage == []
    assert len(state.unreadable) == 1 and "dr-kim" in state.unreadable[0]
    # The executor, with its own credential, sees everyone.
    full = load_round(iam_s3("executor"), PATHS, 1, feedback=fb)
    assert {r.rater for r in full.ratings} == {"dr-lee", "dr-kim"}


@pytest.mark.parametrize(
    "forgery",
    [
        "write-as-another-rater",
        "create-gate",
        "overwrite-closed-gate",
        "overwrite-checkpoint",
        "overwrite-spec",
        "read-another-raters-rating",
        "rating-key-inside-a-checkpoint",
        "read-the-models-predictions",  # feedback.selection: nothing from the model anchors a rater
        "read-the-sealed-predictions",  # issue 21: rounds/r/predictions.json, executor-only on S3
        "overwrite-the-selection",
        "overwrite-own-rating",  # a plain PUT, not a create: the s3:if-none-match condition refuses it
        "list-outside-the-store",  # the s3:prefix condition: key names under the store prefix only
        "list-the-whole-bucket",
    ],
)
def test_every_forgery_with_a_raters_credential_is_refused(iam_s3, run, forgery):
    lee, executor = iam_s3("dr-lee"), iam_s3("executor")
    executor.write_json(PATHS.rating(1, "dr-kim", "r0001-b"), Rating(response_id="r0001-b", rater="dr-kim", criteria=CRITERIA).model_dump(mode="json"))
    executor.write_json(PATHS.gate(2), {"round": 2, "mean_reward": 0.1})  # a round the executor closed
    executor.write_json(PATHS.selection(1), {"round": 1, "predictions": {"r0001-a": [0.9, 0.1]}})
    executor.write_json(PATHS.predictions(1), {"round": 1, "predictions": {"r0001-a": [0.9, 0.1]}})
    before = snapshot(executor)
    forged = Rating(response_id="r0001-b", rater="dr-kim", criteria={c: 0.0 for c in CRITERIA}).model_dump(mode="json")
    with pytest.raises(AccessDenied):
        if forgery == "write-as-another-rater":
            lee.create_json(PATHS.rating(1, "dr-kim", "r0001-b", 2), forged)
        elif forgery == "create-gate":
            lee.create_json(PATHS.gate(1), {"round": 1})
        elif forgery == "overwrite-closed-gate":  # a plain PUT over it, forged rewards
            lee.write_json(PATHS.gate(2), {"round": 2, "mean_reward": 1.0})
        elif forgery == "overwrite-checkpoint":
            lee.write_json(PATHS.policy_prefix(1) + "/adapter_config.json", {"r": 64})
        elif forgery == "overwrite-spec":
            lee.write_json(PATHS.spec(), {"forged": True})
        elif forgery == "read-another-raters-rating":
            lee.read_bytes(PATHS.rating(1, "dr-kim", "r0001-b"))
        elif forgery == "read-the-models-predictions":
            lee.read_bytes(PATHS.selection(1))
        elif forgery == "read-the-sealed-predictions":
            lee.read_bytes(PATHS.predictions(1))
        elif forgery == "overwrite-the-selection":
            lee.write_json(PATHS.selection(1), {"round": 1, "selected": []})
        elif forgery == "overwrite-own-rating":
            lee.write_json(PATHS.rating(1, "dr-lee", "r0001-b"), {**forged, "rater": "dr-lee"})
        elif forgery == "list-outside-the-store":
            S3Store(lee.bucket, "elsewhere", client=lee.client).list("")
        elif forgery == "list-the-whole-bucket":
            S3Store(lee.bucket, "", client=lee.client).list("")
        else:  # a key that ends in ratings/dr-lee/ but sits in a checkpoint folder
            lee.create_json(PATHS.policy_prefix(1) + "/ratings/dr-lee/adapter_model.json", {})
    assert snapshot(executor) == before


def test_a_refused_listing_names_the_prefix_it_asked_for(iam_s3, run):
    lee = iam_s3("dr-lee")
    with pytest.raises(AccessDenied) as refused:
        S3Store(lee.bucket, "elsewhere", client=lee.client).list("")
    assert str(refused.value) == f"listing s3://{lee.bucket}/elsewhere/ failed: access denied"
    # The store's own root listing is allowed and is the prefix the policy names: 'therapy-rlhf/'.
    assert lee.list("") and all(not key.startswith("/") for key in lee.list(""))


def test_the_command_prints_both_dialects(capsys):
    assert cli(["rater-access", "--rater", "dr-lee", "--bucket", "rlhf-runs", "--prefix", "p", "--run", "team-a/study-1"]) == 0
    s3 = json.loads(capsys.readouterr().out)
    put = next(st for st in s3["Statement"] if st["Action"] == ["s3:PutObject"])
    assert put["Resource"] == ["arn:aws:s3:::rlhf-runs/p/team-a/study-1/rounds/????/ratings/dr-lee/*"]
    assert put["Condition"] == {"Null": {"s3:if-none-match": "false"}}
    assert cli(["rater-access", "--rater", "dr-lee", "--bucket", "rlhf-runs", "--dialect", "minio"]) == 0
    minio = json.loads(capsys.readouterr().out)
    assert all("Condition" not in st for st in minio["Statement"] if st["Action"] == ["s3:PutObject"])
    assert all("Principal" not in st for st in minio["Statement"])
    assert cli(["rater-access", "--rater", "dr-lee", "--bucket", "b", "--principal", "arn:aws:iam::1:user/lee"]) == 0
    bucket_policy = json.loads(capsys.readouterr().out)
    assert all(st["Principal"] == {"AWS": "arn:aws:iam::1:user/lee"} for st in bucket_policy["Statement"])
    for bad in (["--rater", "Dr Lee"], ["--rater", "x", "--prefix", "a/../b"], ["--rater", "x", "--run", "nope"]):
        assert cli(["rater-access", "--bucket", "b", *bad]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")
