"""Model files from S3 into the cache: only what the loader needs, parallel ranged GETs, resumable, checked, once.

``model_dir(uri, cache_root)`` returns ``{cache}/s3/{sha256(uri)[:16]}``, a
directory transformers loads, downloading it first if it is not complete
(``.complete`` marks a finished copy):

* **Once per node (and per shared claim).** The first process to take the
  lock ``{cache}/locks/{hash}.lock`` (``flock``) downloads; every other one
  (the other ranks of an ``accelerate launch``, another Job on the same cache
  claim) waits on the lock and then uses the finished copy.
* **Only what the loader needs.** Small files (config, tokenizer, index;
  anything under 64 MiB that is not a weight file) and one set of weights:
  the shards ``model.safetensors.index.json`` names, or ``model.safetensors``;
  ``pytorch_model*.bin`` only where there are no safetensors. Duplicate
  copies (``consolidated.*``, ``*.bin`` beside safetensors, ``*.pt``) are
  skipped.
* **Parallel ranged GETs.** Every file is cut into chunks
  (``$THERAPY_RLHF_DOWNLOAD_CHUNK_MB``, default 64) fetched by a pool of
  ``$THERAPY_RLHF_DOWNLOAD_WORKERS`` (default 16) threads with
  ``Range: bytes=a-b`` and ``If-Match: <etag>`` (an object replaced mid-way
  fails instead of mixing versions), each written in place with ``pwrite``;
  nothing is held in memory beyond the chunks in flight.
* **Resume.** Chunks land in ``{hash}.partial/NAME.part``; each finished
  chunk is recorded in ``NAME.part.json`` (with the object's ETag and size),
  so a download that died continues with the chunks it lacks.
* **Checksum.** A finished file is read back and checked against its ETag:
  the MD5 of the object, or for a multipart upload the MD5 of its parts'
  MD5s (part size from ``HeadObject PartNumber=1``). Where the ETag is not an
  MD5 (SSE-KMS, SSE-C) only the size is checked, and the log says so. A file
  that fails is downloaded once more, then the job fails.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from therapy_rlhf.jobs.common import LOGGER_NAME, JobError

COMPLETE_MARKER = ".complete"
VERIFIED = ".verified.json"  # name -> ETag of each finished, checked file of a partial download
WORKERS_ENV = "THERAPY_RLHF_DOWNLOAD_WORKERS"
CHUNK_ENV = "THERAPY_RLHF_DOWNLOAD_CHUNK_MB"
DEFAULT_WORKERS = 16
DEFAULT_CHUNK_MB = 64
SMALL_FILE_LIMIT = 64 * 2**20
CHUNK_ATTEMPTS = 5
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".npz", ".ot")
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART_ETAG = re.compile(r"^([0-9a-f]{32})-([0-9]+)$")

log = logging.getLogger(LOGGER_NAME)


@dataclass(frozen=True)
class RemoteFile:
    name: str  # path relative to the model prefix
    key: str
    size: int
    etag: str


def split_uri(uri: str) -> tuple[str, str]:
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not uri.startswith("s3://") or not bucket or not prefix.strip("/"):
        raise JobError(f"model source {uri!r}: expected s3://BUCKET/PREFIX")
    return bucket, prefix.strip("/")


def s3_client(workers: int | None = None) -> Any:
    """A boto3 client with a connection per worker; endpoint and credentials from the standard chain."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        config=Config(
            max_pool_connections=max(workers or download_workers(), 10),
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=10,
            read_timeout=120,
        ),
    )


def download_workers() -> int:
    raw = os.environ.get(WORKERS_ENV, "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_WORKERS


def chunk_bytes() -> int:
    raw = os.environ.get(CHUNK_ENV, "")
    return (int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_CHUNK_MB) * 2**20


def _client_call(what: str, uri: str, fn: Callable, **kwargs) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(**kwargs)
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            raise FileNotFoundError(uri) from None
        raise JobError(f"model source {uri}: {what} failed: {code}: {err}") from None
    except BotoCoreError as err:
        raise JobError(f"model source {uri}: {what} failed: {err}") from None


def list_files(client: Any, bucket: str, prefix: str) -> list[RemoteFile]:
    uri = f"s3://{bucket}/{prefix}"
    out: list[RemoteFile] = []
    pages = _client_call("listing", uri, lambda: list(client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")))
    for page in pages:
        for obj in page.get("Contents", []):
            name = obj["Key"][len(prefix) + 1 :]
            if name and not name.endswith("/"):
                out.append(RemoteFile(name, obj["Key"], int(obj["Size"]), obj.get("ETag", "").strip('"')))
    return out


def fetch_json(client: Any, bucket: str, key: str) -> Any:
    """One small JSON object (a model's config.json), read alone."""
    uri = f"s3://{bucket}/{key}"
    body = _client_call("reading", uri, client.get_object, Bucket=bucket, Key=key)["Body"].read()
    try:
        return json.loads(body)
    except ValueError as err:
        raise JobError(f"{uri} is not JSON: {err}") from None


# ------------------------------------------------------------------ selection


def is_weight_file(name: str) -> bool:
    return name.lower().endswith(WEIGHT_SUFFIXES)


def weights_to_fetch(files: dict[str, RemoteFile], small_dir: Path, uri: str) -> list[str]:
    """Names of the one set of weights the loader reads (after the small files are local)."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"), ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = small_dir / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise JobError(f"{uri}/{index_name} is not a weight index (no weight_map)") from None
            missing = [s for s in shards if s not in files]
            if missing:
                raise JobError(f"{uri}/{index_name} names {missing[0]}, which is not stored under the prefix")
            return shards
        if single in files:
            return [single]
    raise JobError(f"model source {uri}: no model weights (model*.safetensors or pytorch_model*.bin) under the prefix")


# ------------------------------------------------------------------- download


class _FileDownload:
    """One file's chunks, their record on disk, and its checksum."""

    def __init__(self, remote: RemoteFile, partial: Path, chunk: int):
        self.remote = remote
        self.path = partial / (remote.name + ".part")
        self.state_path = partial / (remote.name + ".part.json")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.chunk = chunk
        self.lock = threading.Lock()
        self.done: set[int] = set()
        state = self._read_state()
        same = bool(state) and [state.get(k) for k in ("etag", "size", "chunk")] == [remote.etag, remote.size, chunk]
        if same and self.path.is_file() and self.path.stat().st_size == remote.size:
            self.done = set(state.get("done", []))  # resume: these chunks are on disk
        else:
            with open(self.path, "wb") as fh:
                fh.truncate(remote.size)  # sparse until the chunks arrive
        self.fd = os.open(self.path, os.O_WRONLY)

    @property
    def chunks(self) -> int:
        return max(1, -(-self.remote.size // self.chunk))

    def todo(self) -> list[int]:
        return [i for i in range(self.chunks) if i not in self.done]

    def _read_state(self) -> dict | None:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None

    def write_chunk(self, index: int, data: bytes) -> None:
        os.pwrite(self.fd, data, index * self.chunk)
        with self.lock:
            self.done.add(index)
            doc = {"etag": self.remote.etag, "size": self.remote.size, "chunk": self.chunk, "done": sorted(self.done)}
            tmp = self.state_path.with_name(self.state_path.name + ".tmp")
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self.state_path)

    def finish(self, final: Path) -> None:
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, final)
        self.state_path.unlink(missing_ok=True)

    def discard(self) -> None:
        os.close(self.fd)
        self.fd = -1
        self.path.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)


def _md5_of(path: Path, start: int, length: int) -> bytes:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        fh.seek(start)
        left = length
        while left > 0:
            block = fh.read(min(left, 8 * 2**20))
            if not block:
                break
            digest.update(block)
            left -= len(block)
    return digest.digest()


def verify(client: Any, bucket: str, remote: RemoteFile, path: Path) -> str:
    """'md5' or 'multipart md5' when the file matches its ETag, 'size only' where the ETag is no MD5;
    ValueError on a mismatch."""
    size = path.stat().st_size
    if size != remote.size:
        raise ValueError(f"{remote.name}: {size} bytes on disk, {remote.size} stored")
    etag = remote.etag.lower()
    if _MD5_ETAG.match(etag):
        got = _md5_of(path, 0, size).hex()
        if got == etag:
            return "md5"
        head = client.head_object(Bucket=bucket, Key=remote.key)
        if head.get("ServerSideEncryption") == "aws:kms" or head.get("SSECustomerAlgorithm"):
            return "size only (encrypted object: its ETag is not an MD5)"
        raise ValueError(f"{remote.name}: MD5 {got} does not match the ETag {etag}")
    match = _MULTIPART_ETAG.match(etag)
    if not match:
        return "size only (the ETag is not an MD5)"
    parts = int(match.group(2))
    part_size = int(client.head_object(Bucket=bucket, Key=remote.key, PartNumber=1)["ContentLength"])
    digests = b"".join(_md5_of(path, i * part_size, part_size) for i in range(parts))
    got = f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{parts}"
    if got != etag:
        raise ValueError(f"{remote.name}: multipart MD5 {got} does not match the ETag {etag}")
    return "multipart md5"


class _Progress:
    def __init__(self, total: int, uri: str):
        self.total, self.uri, self.got = total, uri, 0
        self.started = self.last = time.monotonic()
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.got += n
            now = time.monotonic()
            if now - self.last >= 10 or self.got == self.total:
                self.last = now
                rate = self.got / max(now - self.started, 1e-6)
                log.info("download %s: %.2f/%.2f GB (%d%%) at %.0f MB/s", self.uri, self.got / 1e9,
                         self.total / 1e9, 100 * self.got // max(self.total, 1), rate / 1e6)


def _fetch_chunk(client: Any, bucket: str, job: _FileDownload, index: int, progress: _Progress) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    start = index * job.chunk
    end = min(start + job.chunk, job.remote.size) - 1
    for attempt in range(1, CHUNK_ATTEMPTS + 1):
        try:
            kwargs: dict[str, Any] = {"Bucket": bucket, "Key": job.remote.key}
            if job.remote.size:
                kwargs["Range"] = f"bytes={start}-{end}"
            if job.remote.etag:
                kwargs["IfMatch"] = f'"{job.remote.etag}"'
            data = client.get_object(**kwargs)["Body"].read()
            if len(data) != end - start + 1 and job.remote.size:
                raise ValueError(f"got {len(data)} bytes for a {end - start + 1}-byte range")
            job.write_chunk(index, data)
            progress.add(len(data))
            return
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "412"):
                raise JobError(f"{job.remote.key} changed while it was downloaded (ETag no longer {job.remote.etag}); retry the job") from None
            if attempt == CHUNK_ATTEMPTS:
                raise JobError(f"downloading {job.remote.key} bytes {start}-{end} failed: {code}: {err}") from None
        except (BotoCoreError, OSError, ValueError) as err:
            if attempt == CHUNK_ATTEMPTS:
                raise JobError(f"downloading {job.remote.key} bytes {start}-{end} failed: {err}") from None
        time.sleep(min(2**attempt * 0.1, 5))


def fetch_files(client: Any, bucket: str, remotes: list[RemoteFile], partial: Path, uri: str, workers: int) -> None:
    """Download these files into ``partial`` (resuming what is there), each verified."""
    size = chunk_bytes()
    verified_path = partial / VERIFIED
    try:
        verified = json.loads(verified_path.read_text())
    except (OSError, ValueError):
        verified = {}
    todo = [r for r in remotes if verified.get(r.name) != r.etag or not (partial / r.name).is_file()]
    if not todo:
        return
    jobs = [_FileDownload(r, partial, size) for r in todo]
    resumed = sum(len(j.done) * j.chunk for j in jobs)
    progress = _Progress(sum(r.size for r in todo), uri)
    progress.got = min(resumed, progress.total)
    if resumed:
        log.info("download %s: resuming, %.2f GB already here", uri, resumed / 1e9)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="download")
    try:
        futures = [pool.submit(_fetch_chunk, client, bucket, j, i, progress) for j in jobs for i in j.todo()]
        for future in as_completed(futures):
            future.result()  # the first failure stops the rest; the chunks done so far stay recorded
        checks = [pool.submit(verify, client, bucket, j.remote, j.path) for j in jobs]
        for job, check in zip(jobs, checks):
            try:
                how = check.result()
            except ValueError as err:
                job.discard()
                raise ChecksumMismatch(str(err)) from None
            job.finish(partial / job.remote.name)
            verified[job.remote.name] = job.remote.etag
            tmp = verified_path.with_name(VERIFIED + ".tmp")
            tmp.write_text(json.dumps(verified, indent=1, sort_keys=True))
            os.replace(tmp, verified_path)
            log.info("download %s: %s checked (%s)", uri, job.remote.name, how)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        for job in jobs:
            if job.fd >= 0:
                os.close(job.fd)
                job.fd = -1
        raise
    pool.shutdown(wait=True)


class ChecksumMismatch(ValueError):
    """A downloaded file whose bytes do not match the object's checksum."""


def download(uri: str, dest: Path, client: Any = None, workers: int | None = None) -> Path:
    """Everything the loader needs under ``uri`` into ``dest`` (resumable through ``dest.partial``)."""
    bucket, prefix = split_uri(uri)
    workers = workers or download_workers()
    client = client or s3_client(workers)
    files = {f.name: f for f in list_files(client, bucket, prefix)}
    if not files:
        raise JobError(f"model source {uri!r}: nothing stored under that prefix")
    partial = dest.with_name(dest.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    small = [f for f in files.values() if not is_weight_file(f.name) and f.size <= SMALL_FILE_LIMIT]
    for attempt in (1, 2):
        try:
            fetch_files(client, bucket, small, partial, uri, workers)
            weights = [files[n] for n in weights_to_fetch(files, partial, uri)]
            skipped = [f for f in files.values() if f not in small and f not in weights]
            log.info("download %s: %d files, %.2f GB (skipping %d files, %.2f GB, the loader does not read)", uri,
                     len(small) + len(weights), sum(f.size for f in small + weights) / 1e9, len(skipped),
                     sum(f.size for f in skipped) / 1e9)
            fetch_files(client, bucket, weights, partial, uri, workers)
            break
        except ChecksumMismatch as err:
            if attempt == 2:
                raise JobError(f"model source {uri}: {err}, twice") from None
            log.warning("download %s: %s; downloading it again", uri, err)
    (partial / COMPLETE_MARKER).write_text(uri + "\n")
    if dest.exists():
        shutil.rmtree(dest)  # an incomplete copy (no marker) left by an older layout
    os.rename(partial, dest)
    return dest


def model_dir(uri: str, cache_root: Path, client: Any = None, workers: int | None = None) -> Path:
    """The model under ``uri`` in the cache, downloaded by one process while the others wait."""
    split_uri(uri)
    name = hashlib.sha256(uri.encode()).hexdigest()[:16]
    dest = Path(cache_root) / "s3" / name
    if (dest / COMPLETE_MARKER).is_file():
        return dest
    locks = Path(cache_root) / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{name}.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            log.info("download %s: another process (%s) is downloading it; waiting", uri, lock.read().strip() or "?")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (dest / COMPLETE_MARKER).is_file():
                return dest  # it finished while we waited
            lock.seek(0)
            lock.truncate()
            lock.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
            lock.flush()
            return download(uri, dest, client, workers)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_config(uri: str, cache_root: Path, client: Any = None) -> dict:
    """The model's config.json: the cached copy, or the one object fetched alone (before any weights)."""
    bucket, prefix = split_uri(uri)
    cached = Path(cache_root) / "s3" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if (cached / COMPLETE_MARKER).is_file() and (cached / "config.json").is_file():
        return json.loads((cached / "config.json").read_text())
    try:
        config = fetch_json(client or s3_client(1), bucket, f"{prefix}/config.json")
    except FileNotFoundError:
        raise JobError(f"model source {uri}: no config.json under the prefix") from None
    if not isinstance(config, dict):
        raise JobError(f"{uri}/config.json is not a JSON object")
    return config


