"""A real local store that remembers the order of its writes, and a snapshot of a store (the jobs' tests)."""

from __future__ import annotations

from therapy_rlhf.store.backends import LocalStore


class RecordingStore(LocalStore):
    """A real local store that remembers the order of writes."""

    def __init__(self, root):
        super().__init__(root)
        self.writes: list[str] = []

    def write_bytes(self, key, data):
        self.writes.append(key)
        super().write_bytes(key, data)

    def create_bytes(self, key, data):
        self.writes.append(key)
        super().create_bytes(key, data)


def snapshot(store) -> dict[str, bytes]:
    """Every key of the store and its bytes."""
    return {k: store.read_bytes(k) for k in store.list("")}
