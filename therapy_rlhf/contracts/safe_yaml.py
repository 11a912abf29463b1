"""Reading untrusted YAML/JSON documents (run manifests, prompt files) safely.

A manifest comes from whoever may create a run; the jobs read the same text
from their run-config file. ``load_documents`` therefore refuses, each with one
line naming the place:

* documents larger than ``MAX_DOCUMENT_BYTES``;
* bytes that are not UTF-8;
* YAML aliases (``*name``): with anchors they expand exponentially (the
  "billion laughs"), and a manifest never needs them;
* duplicate keys in one mapping (YAML keeps the last one silently, so what a
  reviewer read need not be what runs);
* nesting deeper than ``MAX_DEPTH`` (PyYAML composes recursively: a deep
  document would otherwise end in a RecursionError traceback).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode

MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_DEPTH = 64


class DocumentError(ValueError):
    """One line saying what is wrong with a document and where."""


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases, duplicate keys or unbounded nesting."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise DocumentError(f"{_where(event.start_mark)}YAML aliases (*{event.anchor}) are not allowed")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise DocumentError(f"{_where(self.peek_event().start_mark)}nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        if isinstance(node, MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: SafeLoader reports it below
                    continue
                if duplicate:
                    from therapy_rlhf.contracts.names import quote

                    raise DocumentError(f"{_where(key_node.start_mark)}duplicate key {quote(key)}")
        return super().construct_mapping(node, deep=deep)


def decode(data: bytes, limit: int = MAX_DOCUMENT_BYTES) -> str:
    """The document's text, or DocumentError (too large, not UTF-8)."""
    if len(data) > limit:
        raise DocumentError(f"larger than {limit // 1024} KiB ({len(data)} bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DocumentError(
            f"not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start} cannot be decoded)"
        ) from None


def load_documents(data: bytes | str, limit: int = MAX_DOCUMENT_BYTES) -> list[Any]:
    """Every non-empty document in a YAML (or JSON) text; DocumentError on any problem above."""
    text = decode(data, limit) if isinstance(data, bytes) else data
    if isinstance(data, str) and len(text.encode("utf-8", errors="replace")) > limit:
        raise DocumentError(f"larger than {limit // 1024} KiB")
    loader = None
    try:
        loader = _StrictLoader(text)  # the reader checks the characters here already
        docs = []
        while loader.check_data():
            doc = loader.get_data()
            if doc is not None:
                docs.append(doc)
        return docs
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or (str(err).splitlines() or ["invalid YAML"])[0]
        if isinstance(err, yaml.reader.ReaderError):
            problem = f"character #x{err.character:04x} at position {err.position} is not allowed"
        raise DocumentError(f"malformed YAML: {_where(mark)}{problem}") from None
    except RecursionError:  # belt and braces: the depth limit should come first
        raise DocumentError(f"nested deeper than {MAX_DEPTH} levels") from None
    finally:
        if loader is not None:
            loader.dispose()
