"""The store contract, run against both backends (a directory, and S3 over HTTP via moto's server)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.store.backends import AlreadyExists, LocalStore, NotFound, OutsideStore, S3Store, StoreError, StoreUnavailable, check_key, open_store, store_for_spec
from therapy_rlhf.contracts.spec import StorageSpec

PATHS = RunPaths("default", "demo")


def test_write_read_overwrite(store):
    key = "default/demo/spec.json"
    store.write_json(key, {"a": 1})
    assert store.read_json(key) == {"a": 1}
    store.write_bytes(key, b'{"a": 2}')
    assert store.read_json(key) == {"a": 2}
    assert store.exists(key) and not store.exists("default/demo/other.json")
    assert store.modified_at(key) > 0


def test_missing_key_is_not_found(store):
    if isinstance(store, LocalStore):
        store.root.mkdir(parents=True)  # an empty store (a missing directory is an error: test_clear_errors)
    with pytest.raises(NotFound, match="does not exist"):
        store.read_bytes("default/demo/nothing.json")
    with pytest.raises(NotFound):
        store.modified_at("default/demo/nothing.json")
    assert store.list("default/demo/") == []


def test_garbage_json_is_a_store_error(store):
    store.write_bytes("default/demo/bad.json", b"{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        store.read_json("default/demo/bad.json")


def test_create_is_exclusive(store):
    key = PATHS.rating(1, "dr-lee", "r0001-a")
    store.create_json(key, {"v": 1})
    with pytest.raises(AlreadyExists, match="already exists"):
        store.create_json(key, {"v": 2})
    assert store.read_json(key) == {"v": 1}  # the first object is untouched


def test_listing_by_prefix(store):
    keys = [
        "default/demo/spec.json",
        "default/demo/rounds/0001/batch.jsonl",
        "default/demo/rounds/0001/ratings/a/r1.json",
        "default/demo/rounds/0001/ratings/b/r1.json",
        "default/demo/rounds/0002/batch.jsonl",
        "default/demo-2/spec.json",
    ]
    for k in keys:
        store.write_bytes(k, b"x")
    assert store.list("default/demo/rounds/0001/") == sorted(keys[1:4])
    assert store.list("default/demo/") == sorted(keys[:5])  # not demo-2
    assert store.list("") == sorted(keys)
    assert store.list("default/demo/rounds/0003/") == []


def test_listing_has_no_temp_files_after_a_failed_create(store):
    key = "default/demo/rounds/0001/gate.json"
    store.create_json(key, {"n": 1})
    with pytest.raises(AlreadyExists):
        store.create_json(key, {"n": 2})
    assert store.list("default/demo/") == [key]


def test_dirs_round_trip(store, tmp_path):
    src = tmp_path / "adapter"
    (src / "sub").mkdir(parents=True)
    (src / "adapter_config.json").write_text("{}")
    (src / "sub" / "weights.bin").write_bytes(b"\x00\x01")
    keys = store.put_dir(src, PATHS.policy_prefix(1))
    assert keys == [f"{PATHS.policy_prefix(1)}/adapter_config.json", f"{PATHS.policy_prefix(1)}/sub/weights.bin"]
    out = store.get_dir(PATHS.policy_prefix(1), tmp_path / "copy")
    assert sorted(p.relative_to(tmp_path / "copy").as_posix() for p in out) == ["adapter_config.json", "sub/weights.bin"]
    assert (tmp_path / "copy" / "sub" / "weights.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(NotFound):
        store.get_dir(PATHS.policy_prefix(2), tmp_path / "none")


BAD_KEYS = ["", "/abs", "a/", "default/demo/", "a//b", "a/../b", "../x", "a/./b", "a\\b", "a/\x00", "..", "a/.."]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_keys_cannot_escape(store, key):
    with pytest.raises(ValueError):
        store.write_bytes(key, b"x")
    with pytest.raises(ValueError):
        store.create_bytes(key, b"x")
    with pytest.raises(ValueError):
        store.read_bytes(key)


def test_local_store_writes_nothing_outside_its_root(tmp_path):
    store = LocalStore(tmp_path / "root")
    for key in BAD_KEYS:
        with pytest.raises(ValueError):
            store.write_bytes(key, b"x")
    assert [p.name for p in tmp_path.iterdir()] in ([], ["root"])
    assert not (tmp_path / "b").exists() and not (tmp_path / "x").exists()


def test_check_key_accepts_layout_keys():
    for key in (PATHS.spec(), PATHS.batch(3), PATHS.rating(3, "a-b", "r0003-x.y_z", 4), PATHS.eval_results()):
        assert check_key(key) == key


def _race(store, key: str, writers: int) -> list[str]:
    barrier = threading.Barrier(writers)
    outcomes: list[str] = []

    def write(i: int) -> None:
        barrier.wait()
        try:
            store.create_json(key, {"writer": i})
            outcomes.append(f"ok:{i}")
        except AlreadyExists:
            outcomes.append("taken")

    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(write, range(writers)))
    return outcomes


@pytest.mark.parametrize("attempt", range(3))
def test_two_concurrent_writers_of_one_rating_key(store, attempt):
    """Exactly one of two racing writers wins; the winner's object is what is stored."""
    key = PATHS.rating(1, "dr-lee", f"r0001-race{attempt}")
    outcomes = _race(store, key, 2)
    winners = [o for o in outcomes if o.startswith("ok:")]
    assert len(winners) == 1 and outcomes.count("taken") == 1, outcomes
    assert store.read_json(key) == {"writer": int(winners[0].split(":")[1])}


def test_many_concurrent_writers(store):
    key = PATHS.gate(1)
    outcomes = _race(store, key, 8)
    assert sum(o.startswith("ok:") for o in outcomes) == 1, outcomes
    assert store.list(PATHS.round_prefix(1) + "/") == [key]


def test_s3_conditional_write_really_goes_over_http(s3_store):
    """The exclusive create is the server's If-None-Match check, not a client-side exists()."""
    key = "default/demo/x.json"
    s3_store.write_bytes(key, b"1")
    assert s3_store.client.meta.endpoint_url.startswith("http://127.0.0.1:")
    with pytest.raises(AlreadyExists):
        s3_store.create_bytes(key, b"2")
    assert s3_store.read_bytes(key) == b"1"


def test_s3_prefix_isolation(s3_bucket, s3_endpoint):
    a = S3Store(s3_bucket, "team-a", endpoint_url=s3_endpoint)
    b = S3Store(s3_bucket, "team-b", endpoint_url=s3_endpoint)
    a.write_bytes("default/demo/spec.json", b"a")
    assert b.list("") == [] and not b.exists("default/demo/spec.json")
    assert a.list("") == ["default/demo/spec.json"]


def test_s3_endpoint_from_environment(s3_bucket, s3_endpoint):
    # conftest exported AWS_ENDPOINT_URL: the standard variable is enough.
    store = open_store(f"s3://{s3_bucket}/p")
    store.write_bytes("k/v.json", b"{}")
    assert store.exists("k/v.json")


def test_unreachable_s3_is_unavailable(monkeypatch):
    store = S3Store("bucket", "p", endpoint_url="http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    from botocore.config import Config
    import boto3

    store._client = boto3.client(
        "s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=1),
    )
    with pytest.raises(StoreUnavailable, match="failed"):
        store.read_bytes("default/demo/spec.json")


def test_open_store_uris(tmp_path):
    assert isinstance(open_store(tmp_path), LocalStore)
    assert open_store(f"file://{tmp_path}").root == tmp_path.resolve()
    s3 = open_store("s3://bucket/some/prefix")
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix) == ("bucket", "some/prefix")
    for bad in ("s3://", "gs://bucket/x", "http://x"):
        with pytest.raises(ValueError):
            open_store(bad)


def test_store_for_spec(tmp_path):
    local = store_for_spec(StorageSpec(local_path=str(tmp_path)))
    assert isinstance(local, LocalStore)
    s3 = store_for_spec(StorageSpec(bucket="runs-bucket", prefix="x/y", endpoint="http://minio:9000"))
    assert isinstance(s3, S3Store) and s3.uri == "s3://runs-bucket/x/y"
    assert isinstance(store_for_spec(StorageSpec(bucket="runs-bucket"), str(tmp_path)), LocalStore)


def test_readers_never_see_a_partial_object(store):
    """Whole-object writes: while one thread rewrites a key, readers get the old or the new bytes."""
    key = "default/demo/rounds/0001/batch.jsonl"
    versions = [bytes([65 + i]) * 300_000 for i in range(3)]
    store.write_bytes(key, versions[0])
    stop = threading.Event()
    seen: list[bytes] = []

    def writer():
        i = 0
        while not stop.is_set():
            i += 1
            store.write_bytes(key, versions[i % 3])

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(15):
            seen.append(store.read_bytes(key))
    finally:
        stop.set()
        thread.join()
    assert all(data in versions for data in seen)
    assert store.list("default/demo/") == [key]  # no temp files left behind


@pytest.mark.parametrize("planted", ["../../escaped/x.bin", "sub/../../escaped/x.bin", "sub//x.bin", "./x.bin"])
def test_get_dir_checks_every_key_before_making_a_directory(s3_store, tmp_path, planted):
    """S3 keeps a key such as 'policy/0001/../../escaped/x' as written; copying it out must create nothing
    (issue 18: the first key's folders were made before its read refused the key). A local store cannot hold
    such a key (its listing walks real files), so S3 is where this is tested."""
    prefix = PATHS.policy_prefix(1)
    s3_store.write_bytes(f"{prefix}/a/adapter.bin", b"ok")
    s3_store.client.put_object(Bucket=s3_store.bucket, Key=f"{s3_store.prefix}/{prefix}/{planted}", Body=b"evil")
    target = tmp_path / "deep" / "copy"
    with pytest.raises(OutsideStore, match="is not a plain path under it; nothing written"):
        s3_store.get_dir(prefix, target)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == []
