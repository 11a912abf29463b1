"""What signed ratings cost: sign and verify per rating, and a whole round's verification beside a gate poll.

    python -m bench.signing_cost [--responses 250] [--raters 4] [--repeat 2000]

* **sign** / **verify**: ``Signer.sign`` and ``Verifier.refusal`` (digest check + Ed25519
  verification of the canonical record) of one realistic rating record (full rubric, a
  300-character comment, two notes), median of ``--repeat`` calls after a warm-up.
* **round**: ``--responses x --raters`` signed ratings stored through ``submit_rating``;
  then the round is read the way a gate poll that sees every rating for the first time does
  (``load_round`` without a previous state: one LIST plus one GET per rating) with the
  roster, and the verification work alone (every rating through ``Verifier.refusal``) is
  timed on the same records. Share = verification / poll. Local directory store and S3
  (moto's server on loopback). A later poll verifies only the ratings it has not seen.

Prints a Markdown table; append it to bench/RESULTS.md by hand with ``uptime``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid

from bench.foundation_store import timed


def _median_seconds(fn, repeat: int) -> float:
    for _ in range(min(50, repeat)):  # warm-up
        fn()
    return timed(fn, repeat)


def _round(store, responses: int, raters: int):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from therapy_rlhf.contracts.layout import RunPaths
    from therapy_rlhf.contracts.records import PendingResponse, Rating, dump_batch
    from therapy_rlhf.contracts.spec import FeedbackSpec
    from therapy_rlhf.feedback.rater_keys import Signer
    from therapy_rlhf.feedback.rounds import load_round
    from therapy_rlhf.feedback.submit import submit_rating

    paths = RunPaths("default", "signing")
    signers = [Signer(f"dr-{r:02d}", Ed25519PrivateKey.generate()) for r in range(raters)]
    feedback = FeedbackSpec.model_validate({"raters": [{"id": s.rater, "publicKey": s.public_key} for s in signers]})
    ids = [f"r0001-p{i:04d}" for i in range(responses)]
    text = "I hear how heavy this feels. " * 12
    store.write_bytes(paths.batch(1), dump_batch([PendingResponse(id=i, round=1, prompt_id="p", prompt="I feel hopeless.",
                                                                  response=f"{i}: {text}") for i in ids]))
    criteria = {c.name: 0.75 for c in feedback.rubric}
    state = load_round(store, paths, 1, feedback=feedback)
    for s in signers:
        for rid in ids:
            submit_rating(store, paths, state, Rating(response_id=rid, rater=s.rater, criteria=criteria, comment="x" * 300),
                          feedback, signer=s)
    return paths, feedback


def measure_round(store, responses: int, raters: int) -> dict:
    from therapy_rlhf.feedback.authenticity import Verifier
    from therapy_rlhf.feedback.rounds import load_round

    paths, feedback = _round(store, responses, raters)
    polls = []
    for _ in range(3):
        t = time.perf_counter()
        state = load_round(store, paths, 1, feedback=feedback)
        polls.append(time.perf_counter() - t)
    assert len(state.ratings) == responses * raters and not state.refused, (len(state.ratings), state.refused[:1])
    digests = {r.id: r for r in state.responses}
    from therapy_rlhf.contracts.signing import text_sha256

    records = [(r, r.model_dump(mode="json"), text_sha256(digests[r.response_id].response)) for r in state.ratings]
    verifier = Verifier(feedback)
    t = time.perf_counter()
    for rating, record, digest in records:
        assert verifier.refusal("x", record, rating, digest) is None
    verify_all = time.perf_counter() - t
    poll = statistics.median(polls)
    return {"ratings": len(records), "poll": poll, "verify": verify_all, "share": verify_all / poll}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--responses", type=int, default=250)
    parser.add_argument("--raters", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from therapy_rlhf.contracts.records import Rating
    from therapy_rlhf.contracts.signing import text_sha256
    from therapy_rlhf.contracts.spec import FeedbackSpec
    from therapy_rlhf.feedback.authenticity import Verifier
    from therapy_rlhf.feedback.rater_keys import Signer
    from therapy_rlhf.store.backends import LocalStore, S3Store

    signer = Signer("dr-lee", Ed25519PrivateKey.generate())
    feedback = FeedbackSpec.model_validate({"raters": [{"id": "dr-lee", "publicKey": signer.public_key}]})
    digest = text_sha256("some response")
    rating = Rating(response_id="r0001-p0000", rater="dr-lee", criteria={c.name: 0.75 for c in feedback.rubric},
                    comment="y" * 300, notes={"empathy": "names the feeling", "guidance": "one small step"},
                    response_sha256=digest, submission_id=uuid.uuid4().hex)
    record = rating.model_dump(mode="json")
    record["signature"] = signer.sign(record)
    signed = Rating.model_validate(record)
    verifier = Verifier(feedback)
    sign_s = _median_seconds(lambda: signer.sign(record), args.repeat)
    verify_s = _median_seconds(lambda: verifier.refusal("x", record, signed, digest), args.repeat)
    print(f"one rating record: {len(json.dumps(record))} bytes of JSON; median of {args.repeat} calls\n")
    print("| operation | per rating (ms) | target |")
    print("|---|---|---|")
    print(f"| sign (canonical serialisation + Ed25519) | {sign_s * 1e3:.3f} | < 1 ms |")
    print(f"| verify (digest check + canonical serialisation + Ed25519) | {verify_s * 1e3:.3f} | < 1 ms |")
    print()

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    import boto3
    from moto.server import ThreadedMotoServer

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(("local directory", measure_round(LocalStore(tmp), args.responses, args.raters)))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        bucket = f"signing-{uuid.uuid4().hex[:10]}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        rows.append(("S3 (moto, loopback)", measure_round(S3Store(bucket, "bench", endpoint_url=endpoint), args.responses, args.raters)))
    finally:
        server.stop()
    print(f"| store | ratings in the round | gate poll, every rating new (s) | verification of them all (s) | share | target |")
    print("|---|---|---|---|---|---|")
    for name, m in rows:
        print(f"| {name} | {m['ratings']} | {m['poll']:.3f} | {m['verify']:.3f} | {m['share']:.1%} | < 5 % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
