"""Foundation benchmark: what a gate poll and a rating cost on each store backend.

    python bench/foundation_store.py [--responses 256] [--raters 3] [--rounds 50]

Measures, on a local directory and on S3 through moto's HTTP server (started
here, loopback only): creating one rating (the conditional write), loading a
round with all its ratings, aggregating it into rewards and agreement, and one
``observe_store`` poll of a run that has ``--rounds`` finished rounds and one
round awaiting ratings (what the operator's timer and the local runner do at a
gate), and the same poll after one new rating when the last poll's state is
passed along (``previous=``: only the new object is read). Prints a Markdown
table; append it to bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
import uuid

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.planning.observe import observe_store
from therapy_rlhf.feedback.gate import agreement, aggregate
from therapy_rlhf.feedback.rounds import load_round
from therapy_rlhf.contracts.records import PendingResponse, Rating, dump_batch
from therapy_rlhf.contracts.spec import RunSpec
from therapy_rlhf.store.backends import LocalStore, S3Store

logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request log lines

PATHS = RunPaths("default", "bench")


def timed(fn, repeat: int) -> float:
    """Median seconds of ``repeat`` calls."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def seed(store, spec: RunSpec, responses: int, raters: int, rounds: int) -> int:
    """Finished rounds 1..rounds, and round rounds+1 with a batch and every rating."""
    for r in range(1, rounds + 1):
        store.write_bytes(PATHS.batch(r), b"")
        store.write_json(PATHS.gate(r), {})
        store.write_json(PATHS.policy_metrics(r), {})
    store.write_json(PATHS.sft_metrics(), {})
    open_round = rounds + 1
    batch = [
        PendingResponse(id=f"r{open_round:04d}-{i:05d}", round=open_round, prompt_id="p", prompt="I feel low.", response="I hear you.")
        for i in range(responses)
    ]
    store.write_bytes(PATHS.batch(open_round), dump_batch(batch))
    names = [c.name for c in spec.feedback.rubric]
    for k in range(raters):
        for i, resp in enumerate(batch):
            score = ((i * 7 + k * 3) % 5) / 4
            rating = Rating(response_id=resp.id, rater=f"rater-{k}", criteria={n: score for n in names})
            store.create_json(PATHS.rating(open_round, rating.rater, resp.id), rating.model_dump(mode="json"))
    return open_round


def incremental_poll(store, spec: RunSpec, open_round: int, state, repeat: int = 5) -> float:
    """Median seconds of observe_store(previous=state) right after one more rating arrives."""
    samples = []
    for i in range(repeat):
        response = state.responses[i % len(state.responses)]
        rating = Rating(response_id=response.id, rater=f"late-{i}", criteria={c.name: 0.5 for c in spec.feedback.rubric})
        store.create_json(PATHS.rating(open_round, rating.rater, response.id), rating.model_dump(mode="json"))
        start = time.perf_counter()
        _, state = observe_store(store, PATHS, spec, previous=state)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure(name: str, store, args) -> dict[str, float | str]:
    spec = RunSpec.model_validate(
        {"model": {"source": "tiny:mistral"}, "storage": {"localPath": "/x"}, "ppo": {"rounds": args.rounds + 1}}
    )
    open_round = seed(store, spec, args.responses, args.raters, args.rounds)
    create = timed(lambda: store.create_json(PATHS.rating(open_round, "extra", f"x{uuid.uuid4().hex[:12]}"), {"a": 1}), 20)
    state = load_round(store, PATHS, open_round)
    return {
        "backend": name,
        "create rating": create,
        "load round": timed(lambda: load_round(store, PATHS, open_round), 3),
        "aggregate + alpha": timed(lambda: (aggregate(state, spec.feedback), agreement(state, spec.feedback)), 3),
        "observe poll": timed(lambda: observe_store(store, PATHS, spec), 3),
        "poll after 1 new rating (incremental)": incremental_poll(store, spec, open_round, state),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--responses", type=int, default=256)
    parser.add_argument("--raters", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(measure("local", LocalStore(tmp), args))

    from moto.server import ThreadedMotoServer
    import boto3

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="bench")
        rows.append(measure("s3 (moto, loopback HTTP)", S3Store("bench", "p", endpoint_url=url), args))
    finally:
        server.stop()

    print(f"{args.responses} responses x {args.raters} raters in the open round, {args.rounds} finished rounds; "
          f"median seconds; python {platform.python_version()}, {os.cpu_count()} CPUs")
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(v if isinstance(v, str) else f"{v:.4f}" for v in row.values()) + " |")


if __name__ == "__main__":
    main()
