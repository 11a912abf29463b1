"""A fault-injecting HTTP proxy in front of an S3 endpoint (moto's server), and the
rating workload run through it. Shared by tests/foundation/test_exactly_once.py and
bench/fault_injection.py.

The proxy forwards every request to the upstream endpoint and, for a chosen share
of requests, injects one of four faults:

* ``503-before``: answer 503 without forwarding (the store never saw the request);
* ``reset-before``: reset the connection without forwarding;
* ``500-after``: forward (the store applied the request), then answer 500;
* ``reset-after``: forward, then reset the connection instead of answering.

The two "after" faults are the ambiguous ones: a PUT that succeeded but whose
answer was lost. botocore retries all four (5xx and connection errors); a
retried conditional PUT then meets its own object and S3 answers 412.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULT_KINDS = ("503-before", "reset-before", "500-after", "reset-after")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te", "trailer"}


class FaultProxy:
    """``with FaultProxy(upstream, rate=0.05, seed=1) as proxy: proxy.url``"""

    def __init__(self, upstream: str, rate: float = 0.05, seed: int = 0, kinds: tuple[str, ...] = FAULT_KINDS):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rate = rate
        self.kinds = kinds
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.requests = 0
        self.faults: Counter[str] = Counter()
        # A hook for deterministic tests: called with (method, path, headers); a fault kind or None.
        self.choose = None
        self._server: ThreadingHTTPServer | None = None

    # -- decisions --------------------------------------------------------------
    def _decide(self, method: str, path: str, headers) -> str | None:
        with self._lock:
            self.requests += 1
            if self.choose is not None:
                kind = self.choose(method, path, headers)
            elif self._random.random() < self.rate:
                kind = self._random.choice(self.kinds)
            else:
                kind = None
            if kind:
                self.faults[kind] += 1
            return kind

    # -- server -----------------------------------------------------------------
    def __enter__(self) -> "FaultProxy":
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reset(self) -> None:
                # SO_LINGER 0: close() sends a TCP RST, as a dropped connection would.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            def _handle(self) -> None:
                body = self._body()
                fault = proxy._decide(self.command, self.path, self.headers)
                if fault == "503-before":
                    return self._answer(503, {"Content-Type": "application/xml"},
                                        b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>")
                if fault == "reset-before":
                    return self._reset()
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST") else None,
                             headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if fault == "reset-after":
                    return self._reset()
                if fault == "500-after":
                    return self._answer(500, {"Content-Type": "application/xml"},
                                        b"<Error><Code>InternalError</Code><Message>injected</Message></Error>")
                out = {k: v for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP | {"content-length"}}
                self._answer(resp.status, out, data, head=self.command == "HEAD")

            def _answer(self, status: int, headers: dict, data: bytes, head: bool = False) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", headers.get("Content-Length", str(len(data))) if head else str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except (ConnectionError, OSError):
                    self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"


# ------------------------------------------------------------------ workload


@dataclass
class Outcome:
    """What a fault-injection run did to the ratings."""

    submitted: int = 0
    acknowledged: int = 0
    stored: int = 0  # rating objects in the store afterwards
    duplicates: int = 0  # objects beyond the first per (rater, response): every submission is a first rating
    lost: int = 0  # acknowledged submissions with no object in the store
    client_retries: int = 0  # StoreUnavailable seen by the client, which then retried (as the TUI's writer does)
    requests: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    verified: int | None = None  # signed runs: stored ratings a reader counts (signature valid)
    refused: int | None = None  # signed runs: stored ratings a reader refuses


def run_workload(endpoint: str, bucket: str, responses: int = 250, raters: int = 4, rate: float = 0.05,
                 seed: int = 1, prefix: str = "faults", signed: bool = False) -> Outcome:
    """Submit ``responses x raters`` first ratings through the proxy; count what is stored (read past it).

    ``signed``: each rater signs with a key registered in the run's roster (kept in memory, never on disk),
    and the stored ratings are then read back as every reader does, counting verified and refused ones."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from therapy_rlhf.feedback.rater_keys import Signer
    from therapy_rlhf.contracts.layout import RunPaths, parse_rating_key
    from therapy_rlhf.feedback.rounds import load_round
    from therapy_rlhf.feedback.submit import submit_rating
    from therapy_rlhf.contracts.records import PendingResponse, Rating, dump_batch
    from therapy_rlhf.contracts.spec import FeedbackSpec
    from therapy_rlhf.store.backends import S3Store, StoreUnavailable

    paths = RunPaths("default", "faults")
    signers = {f"dr-{r:02d}": Signer(f"dr-{r:02d}", Ed25519PrivateKey.generate()) for r in range(raters)} if signed else {}
    feedback = FeedbackSpec.model_validate({"raters": [{"id": s.rater, "publicKey": s.public_key} for s in signers.values()]})
    direct = S3Store(bucket, prefix, endpoint_url=endpoint)
    ids = [f"r0001-p{i:04d}" for i in range(responses)]
    direct.write_bytes(paths.batch(1), dump_batch(
        [PendingResponse(id=i, round=1, prompt_id="p", prompt="I feel hopeless.", response="I hear you.") for i in ids]))
    criteria = {c.name: 0.5 for c in feedback.rubric}
    out = Outcome()
    acked: set[tuple[str, str]] = set()
    started = time.monotonic()
    with FaultProxy(endpoint, rate=rate, seed=seed) as proxy:
        store = S3Store(bucket, prefix, endpoint_url=proxy.url)
        for r in range(raters):
            rater = f"dr-{r:02d}"
            while True:  # the tool's first load, retried like everything else
                try:
                    state = load_round(store, paths, 1, feedback=feedback)
                    break
                except StoreUnavailable:
                    out.client_retries += 1
            for rid in ids:
                rating = Rating(response_id=rid, rater=rater, criteria=criteria, client="fault-injection")
                out.submitted += 1
                while True:
                    try:
                        submit_rating(store, paths, state, rating, feedback, signer=signers.get(rater))
                        break
                    except StoreUnavailable:
                        out.client_retries += 1  # the same Rating object: the same submission
                out.acknowledged += 1
                acked.add((rater, rid))
        out.requests, out.faults = proxy.requests, dict(proxy.faults)
    out.seconds = round(time.monotonic() - started, 1)
    prefix_key = paths.ratings_prefix(1)
    per_pair: Counter[tuple[str, str]] = Counter()
    for key in direct.list(prefix_key):
        parsed = parse_rating_key(key[len(prefix_key):])
        if parsed:
            per_pair[(parsed[0], parsed[1])] += 1
    out.stored = sum(per_pair.values())
    out.duplicates = sum(n - 1 for n in per_pair.values() if n > 1)
    out.lost = sum(1 for pair in acked if per_pair[pair] == 0)
    if signed:
        read = load_round(direct, paths, 1, feedback=feedback)
        out.verified, out.refused = len(read.ratings), len(read.refused)
    return out
