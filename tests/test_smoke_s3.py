import pytest
from therapy_rlhf.store import AlreadyExists

def test_create_is_exclusive(store):
    store.create_bytes("a/b.json", b"1")
    with pytest.raises(AlreadyExists):
        store.create_bytes("a/b.json", b"2")
    assert store.read_bytes("a/b.json") == b"1"
    assert store.list("a/") == ["a/b.json"]
