"""Shared fixtures: a real S3 endpoint over HTTP (moto's server) and stores.

Every test that touches the store can take ``store`` (parametrised over the
local directory backend and S3 through moto's HTTP server) or pick one
backend with ``local_store`` / ``s3_store``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from therapy_rlhf.store.backends import LocalStore, S3Store

ESCONV_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "esconv"

# tests/support is a package of helpers shared by test folders and benchmarks
# (``from tests.support.budget import budget``); pytest puts the repository root
# on the path (pyproject: pythonpath), benchmarks run as ``python -m bench.NAME``.


@pytest.fixture(scope="session")
def s3_endpoint():
    """Start moto's S3 server on a free loopback port for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(
        AWS_ENDPOINT_URL=url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield url
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh, empty bucket on the moto server."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_store(s3_bucket, s3_endpoint) -> S3Store:
    return S3Store(s3_bucket, "therapy-rlhf", endpoint_url=s3_endpoint)


@pytest.fixture
def local_store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture(params=["local", "s3"])
def store(request):
    """The same test against both backends."""
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture
def esconv_dir() -> Path:
    if not ESCONV_DIR.is_dir():
        pytest.skip(f"real ESConv data not found at {ESCONV_DIR}")
    return ESCONV_DIR


@pytest.fixture(scope="session", autouse=True)
def rater_key_folder(tmp_path_factory):
    """Rater signing keys (the simulated raters' too) go to a folder of this session, never the user's own;
    child processes inherit it."""
    saved = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
    yield Path(os.environ["XDG_DATA_HOME"])
    if saved is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = saved
