"""Model downloads against moto's S3 server over HTTP: ranged GETs, only the files the loader reads,
checksums (simple and multipart ETags), a download resumed after it died, and two ranks downloading once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.budget import budget
from therapy_rlhf.jobs import download, models
from therapy_rlhf.jobs.common import JobError, make_logger

MiB = 2**20


class Cut(RuntimeError):
    """The connection dropped for good (not something the downloader retries)."""


class Requests:
    """What a client sends: (key, Range header) of every GetObject."""

    def __init__(self, client, fail_after: int | None = None, delay: float = 0.0):
        self.gets: list[tuple[str, str | None]] = []
        self.fail_after, self.delay = fail_after, delay
        client.meta.events.register("before-send.s3.GetObject", self._seen)

    def _seen(self, request, **kwargs):
        key = request.url.split("?")[0].rsplit("/", 1)[1]
        self.gets.append((key, request.headers.get("Range")))
        if self.fail_after is not None and len(self.gets) > self.fail_after:
            raise Cut("the network went away")  # not retried: the download dies here
        time.sleep(self.delay)

    def ranged(self, key: str) -> list[str]:
        return [r.decode() if isinstance(r, bytes) else r for k, r in self.gets if k == key and r]


@pytest.fixture
def job_log(capsys):
    """The job log (stdout, as the jobs write it) so far."""
    make_logger()
    return lambda: capsys.readouterr().out


@pytest.fixture
def chunks_of_one_mib(monkeypatch):
    monkeypatch.setenv(download.CHUNK_ENV, "1")


def shard_bytes(n: int, seed: int) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(256)) * (n // 256)


def upload_model(s3_store, prefix="models/m") -> dict[str, bytes]:
    """A model prefix as a hub mirror has it: index + two shards, and copies the loader never reads."""
    files = {
        "config.json": json.dumps({"model_type": "mistral"}).encode(),
        "tokenizer.json": b'{"version": "1.0"}',
        "model.safetensors.index.json": json.dumps(
            {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
        ).encode(),
        "model-00001-of-00002.safetensors": shard_bytes(3 * MiB + 512, 1),
        "model-00002-of-00002.safetensors": shard_bytes(2 * MiB, 2),
        "pytorch_model-00001-of-00002.bin": shard_bytes(MiB, 3),
        "consolidated.00.pt": shard_bytes(MiB, 4),
        "original/params.safetensors": shard_bytes(MiB, 5),
    }
    for name, data in files.items():
        s3_store.write_bytes(f"{prefix}/{name}", data)
    return files


def uri_of(s3_store, prefix="models/m") -> str:
    return f"s3://{s3_store.bucket}/{s3_store.prefix}/{prefix}"


def test_ranged_gets_fetch_only_what_the_loader_reads(s3_store, tmp_path, chunks_of_one_mib, job_log):
    files = upload_model(s3_store)
    client = download.s3_client(4)
    seen = Requests(client)
    local = download.model_dir(uri_of(s3_store), tmp_path / "cache", client=client, workers=4)
    got = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    wanted = {"config.json", "tokenizer.json", "model.safetensors.index.json",
              "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    assert got == wanted | {download.COMPLETE_MARKER, download.VERIFIED}
    for name in wanted:
        assert (local / name).read_bytes() == files[name]
    # 3 MiB + 512 bytes in 1 MiB ranges: four ranged GETs, the last one short
    assert sorted(seen.ranged("model-00001-of-00002.safetensors")) == [
        f"bytes={i * MiB}-{min((i + 1) * MiB, 3 * MiB + 512) - 1}" for i in range(4)]
    assert len(seen.ranged("model-00002-of-00002.safetensors")) == 2
    never = ("pytorch_model-00001-of-00002.bin", "consolidated.00.pt", "params.safetensors")
    assert not [k for k, _ in seen.gets if k in never]
    text = job_log()
    assert "skipping 3 files" in text and "checked (md5)" in text
    # a second call finds the complete copy and sends nothing
    before = len(seen.gets)
    assert download.model_dir(uri_of(s3_store), tmp_path / "cache", client=client) == local
    assert len(seen.gets) == before


def test_a_multipart_object_is_checked_against_its_multipart_etag(s3_store, tmp_path, chunks_of_one_mib, job_log):
    data = shard_bytes(11 * MiB, 7)
    key = f"{s3_store.prefix}/models/mp/model.safetensors"
    client = download.s3_client(4)
    upload = client.create_multipart_upload(Bucket=s3_store.bucket, Key=key)
    parts = []
    for number, start in enumerate(range(0, len(data), 5 * MiB), start=1):
        part = client.upload_part(Bucket=s3_store.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=number,
                                  Body=data[start : start + 5 * MiB])
        parts.append({"PartNumber": number, "ETag": part["ETag"]})
    client.complete_multipart_upload(Bucket=s3_store.bucket, Key=key, UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": parts})
    s3_store.write_bytes("models/mp/config.json", b"{}")
    assert client.head_object(Bucket=s3_store.bucket, Key=key)["ETag"].endswith('-3"')
    local = download.model_dir(uri_of(s3_store, "models/mp"), tmp_path / "cache", client=client)
    assert (local / "model.safetensors").read_bytes() == data
    text = job_log()
    assert "model.safetensors checked (multipart md5)" in text


def test_a_download_that_died_resumes_with_the_chunks_it_lacks(s3_store, tmp_path, chunks_of_one_mib, job_log):
    files = upload_model(s3_store)
    cache, uri = tmp_path / "cache", uri_of(s3_store)
    client = download.s3_client(2)
    dying = Requests(client, fail_after=6)  # 3 small files, then 3 chunks of the weights
    with pytest.raises(Cut):
        download.model_dir(uri, cache, client=client, workers=2)
    partial = next((cache / "s3").glob("*.partial"))
    assert not (partial / download.COMPLETE_MARKER).exists()
    recorded = {p.name: json.loads(p.read_text())["done"] for p in partial.glob("*.part.json")}
    done = sum(len(v) for v in recorded.values())
    assert done >= 1

    client = download.s3_client(2)
    resumed = Requests(client)
    local = download.model_dir(uri, cache, client=client, workers=2)
    weights = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    ranged = sum(len(resumed.ranged(name)) for name in weights)
    assert ranged == 4 + 2 - done  # only the chunks the first try did not finish
    assert not [k for k, _ in resumed.gets if k in ("config.json", "tokenizer.json")]  # verified before
    for name in weights:
        assert (local / name).read_bytes() == files[name]
    text = job_log()
    assert "resuming" in text and len(dying.gets) >= 7


def test_a_corrupt_partial_file_is_caught_and_downloaded_again(s3_store, tmp_path, chunks_of_one_mib, job_log):
    files = upload_model(s3_store)
    cache, uri = tmp_path / "cache", uri_of(s3_store)
    client = download.s3_client(1)
    Requests(client, fail_after=5)
    with pytest.raises(Cut):
        download.model_dir(uri, cache, client=client, workers=1)
    part = next((cache / "s3").glob("*.partial/model-00001-of-00002.safetensors.part"))
    with open(part, "r+b") as fh:  # a chunk recorded as done, damaged on disk
        fh.write(b"\x00" * 64)
    local = download.model_dir(uri, cache, client=download.s3_client(2), workers=2)
    assert (local / "model-00001-of-00002.safetensors").read_bytes() == files["model-00001-of-00002.safetensors"]
    text = job_log()
    assert "does not match the ETag" in text and "downloading it again" in text


def test_what_cannot_be_loaded_is_a_clear_error(s3_store, tmp_path):
    s3_store.write_bytes("models/noweights/config.json", b"{}")
    with pytest.raises(JobError, match=r"no model weights \(model\*.safetensors or pytorch_model\*.bin\) under the prefix"):
        download.model_dir(uri_of(s3_store, "models/noweights"), tmp_path / "c")
    s3_store.write_bytes("models/badindex/model.safetensors.index.json", json.dumps({"weight_map": {"a": "gone.safetensors"}}).encode())
    with pytest.raises(JobError, match="names gone.safetensors, which is not stored under the prefix"):
        download.model_dir(uri_of(s3_store, "models/badindex"), tmp_path / "c")
    s3_store.write_bytes("models/legacy/pytorch_model.bin", b"weights")
    s3_store.write_bytes("models/legacy/config.json", b"{}")
    local = download.model_dir(uri_of(s3_store, "models/legacy"), tmp_path / "c")
    assert (local / "pytorch_model.bin").read_bytes() == b"weights"  # no safetensors: the .bin it is


def test_the_config_is_read_alone(s3_store, tmp_path):
    upload_model(s3_store)
    client = download.s3_client(1)
    seen = Requests(client)
    assert download.read_config(uri_of(s3_store), tmp_path / "c", client=client) == {"model_type": "mistral"}
    assert [k for k, _ in seen.gets] == ["config.json"]
    with pytest.raises(JobError, match="no config.json under the prefix"):
        download.read_config(uri_of(s3_store, "models/none"), tmp_path / "c")


RANK = r"""
import json, os, sys, time
from pathlib import Path
sys.path[:0] = [{root!r}]  # after start-up: the repository's operator/ must not shadow the stdlib's
from tests.jobs.test_download import Requests
from therapy_rlhf.jobs import download
from therapy_rlhf.jobs.common import make_logger
make_logger()
client = download.s3_client(4)
seen = Requests(client, delay=0.05)
Path({ready!r} + os.environ["LOCAL_RANK"]).touch()
while not Path({go!r}).exists():
    time.sleep(0.01)
local = download.model_dir({uri!r}, Path({cache!r}), client=client, workers=4)
print(json.dumps({{"dir": str(local), "gets": len(seen.gets)}}))
"""


def test_two_ranks_on_a_node_download_once(s3_store, tmp_path, chunks_of_one_mib):
    upload_model(s3_store)
    cache = tmp_path / "cache"
    here = Path(__file__).parent
    # the ranks import this module as tests.jobs.test_download
    script = RANK.format(root=str(here.parents[1]), ready=str(tmp_path / "ready-"), go=str(tmp_path / "go"),
                         uri=uri_of(s3_store), cache=str(cache))
    ranks = [
        subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, LOCAL_RANK=str(r), RANK=str(r), WORLD_SIZE="2"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for r in (0, 1)
    ]
    deadline = time.monotonic() + budget(10)
    while not all((tmp_path / f"ready-{r}").exists() for r in (0, 1)):
        crashed = [p for p in ranks if p.poll() is not None]
        assert not crashed, crashed[0].communicate()[1]
        assert time.monotonic() < deadline, "the ranks did not start"
        time.sleep(0.05)
    (tmp_path / "go").touch()  # both ask for the model at the same moment
    results = []
    for proc in ranks:
        out, err = proc.communicate(timeout=budget(20))
        assert proc.returncode == 0, err
        results.append((json.loads(out.splitlines()[-1]), out + err))
    assert results[0][0]["dir"] == results[1][0]["dir"]
    gets = sorted(r[0]["gets"] for r in results)
    assert gets[0] == 0  # one rank sent nothing: it waited and used the copy
    assert gets[1] == 3 + 4 + 2  # three small files and six 1 MiB chunks, once
    waiter = next(log for (r, log) in results if r["gets"] == 0)
    assert "is downloading it; waiting" in waiter


def test_resolve_source_uses_the_downloader(s3_store, tmp_path):
    upload_model(s3_store)
    local = Path(models.resolve_source(uri_of(s3_store), tmp_path / "cache"))
    assert (local / download.COMPLETE_MARKER).is_file() and not (local / "consolidated.00.pt").exists()
