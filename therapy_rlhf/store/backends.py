"""One object-store interface, two backends with the same keys.

* ``LocalStore``: a directory. Whole-object writes go to a temp file and are
  renamed into place; ``create`` links the temp file to its final name, which
  fails if the name exists, so a create is atomic *and* exclusive.
* ``S3Store``: boto3. Whole-object writes are single PUTs; ``create`` is a PUT
  with ``If-None-Match: *`` so S3 refuses to overwrite an existing key. The
  endpoint comes from ``AWS_ENDPOINT_URL`` (or the spec), credentials from the
  standard AWS chain.

``open_store("s3://bucket/prefix")`` or ``open_store("/some/dir")`` picks one.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterable

_KEY_FORBIDDEN = ("//", "\\", "\x00")


class StoreError(RuntimeError):
    """Base class for store failures."""


class NotFound(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else "not found"


class AlreadyExists(StoreError):
    """A conditional create found the key already taken."""


class StoreUnavailable(StoreError):
    """The store could not be reached or refused the request."""


class NoSuchStore(StoreUnavailable):
    """A local store whose directory does not exist (a typo in --store): named, never searched around."""


class AccessDenied(StoreUnavailable):
    """The credential in use may not do this (S3 403): a rater reading another rater's object."""


class OutsideStore(StoreError, ValueError):
    """A local key that leads out of the store's root through a symbolic link."""


class TooLarge(StoreError):
    """An object larger than the reader's limit (a planted object must not exhaust memory)."""


def check_prefix(prefix: str) -> str:
    """A store prefix (S3 key prefix): '/'-separated names, no '.', '..' or empty parts."""
    stripped = prefix.strip("/")
    if not isinstance(prefix, str) or "\\" in prefix or "\x00" in prefix or (
        stripped and any(part in ("", ".", "..") for part in stripped.split("/"))
    ):
        from therapy_rlhf.contracts.names import quote

        raise ValueError(f"invalid store prefix {quote(prefix)}: parts may not be empty, '.' or '..' (no '//')")
    return stripped


def check_key(key: str) -> str:
    """Reject keys that could leave the store's root or alias another key."""
    if (
        not isinstance(key, str)
        or not key
        or key.startswith("/")
        or any(bad in key for bad in _KEY_FORBIDDEN)
        or any(part in ("", ".", "..") for part in key.split("/"))
    ):
        raise ValueError(f"invalid store key {key!r}")
    return key


class Store(ABC):
    """What every backend offers. Keys are '/'-separated and relative to the root."""

    uri: str

    # -- bytes --------------------------------------------------------------
    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write a whole object (readers see the old or the new one, never a mix)."""

    @abstractmethod
    def create_bytes(self, key: str, data: bytes) -> None:
        """Create an object that must not exist yet; raise AlreadyExists otherwise."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """All keys under a prefix (recursively), sorted."""

    @abstractmethod
    def modified_at(self, key: str) -> float:
        """Last-modified time of a key (seconds since the epoch)."""

    # -- helpers shared by all backends -------------------------------------
    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def read_limited(self, key: str, limit: int) -> bytes:
        """An object's bytes, or TooLarge when it holds more than ``limit`` bytes."""
        data = self.read_bytes(key)
        if len(data) > limit:
            raise TooLarge(f"{self.describe(key)} is larger than {limit} bytes")
        return data

    def read_json(self, key: str, limit: int | None = None) -> Any:
        data = self.read_bytes(key) if limit is None else self.read_limited(key, limit)
        return parse_json(data, self.describe(key))

    def write_json(self, key: str, value: Any) -> None:
        self.write_bytes(key, _dump_json(value))

    def create_json(self, key: str, value: Any) -> None:
        self.create_bytes(key, _dump_json(value))

    def describe(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{key}"

    def put_dir(self, local_dir: str | Path, prefix: str) -> list[str]:
        """Upload every file of a local directory under prefix; returns the keys."""
        local_dir = Path(local_dir)
        keys = []
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            key = f"{prefix.rstrip('/')}/{path.relative_to(local_dir).as_posix()}"
            self.write_bytes(key, path.read_bytes())
            keys.append(key)
        return keys

    def get_dir(self, prefix: str, local_dir: str | Path) -> list[Path]:
        """Download every object under prefix into local_dir; NotFound if there is none.

        Every key is checked before any directory is made: a listed key with a '..' part (S3 stores
        'a/../../x' as written) would otherwise create folders outside local_dir before its read fails."""
        prefix = prefix.rstrip("/") + "/"
        keys = self.list(prefix)
        if not keys:
            raise NotFound(f"nothing stored under {self.describe(prefix)}")
        local_dir = Path(local_dir)
        for key in keys:
            try:
                check_key(key[len(prefix) :]) if key.startswith(prefix) else check_key("")
            except ValueError:
                raise OutsideStore(
                    f"refusing to copy {self.describe(prefix)}: key {key!r} is not a plain path under it; nothing written"
                ) from None
        out = []
        for key in keys:
            dest = local_dir / key[len(prefix) :]
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(self.read_bytes(key))
            os.replace(tmp, dest)
            out.append(dest)
        return out


def parse_json(data: bytes, source: str) -> Any:
    """JSON from the store; StoreError (one line) for anything else, including deep nesting."""
    try:
        return json.loads(data)
    except ValueError as err:
        raise StoreError(f"{source} is not valid JSON: {err}") from None
    except RecursionError:
        raise StoreError(f"{source} is not valid JSON: nested too deeply") from None


def dump_json(value: Any) -> bytes:
    """The exact bytes ``write_json``/``create_json`` store for a value (digests are taken of them)."""
    return _dump_json(value)


def _dump_json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


# ------------------------------------------------------------------- local


class LocalStore(Store):
    """A directory on local disk with the same keys as S3."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        path = self.root / check_key(key)
        # Never follow a symlink out of the root: a link planted inside the store
        # (a ratings folder pointing at ~/.ssh, a key linked to /etc/passwd) must
        # neither be read nor written through.
        if not self._inside(path):
            raise OutsideStore(f"{self.describe(key)} leads outside the store through a symbolic link; not followed")
        return path

    def _inside(self, path: Path) -> bool:
        resolved = path.resolve()
        return resolved == self.root or self.root in resolved.parents

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"{self.describe(key)} does not exist") from None

    def read_limited(self, key: str, limit: int) -> bytes:
        try:
            with open(self._path(key), "rb") as fh:
                data = fh.read(limit + 1)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"{self.describe(key)} does not exist") from None
        if len(data) > limit:
            raise TooLarge(f"{self.describe(key)} is larger than {limit} bytes")
        return data

    def _temp_copy(self, path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return Path(tmp)

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = self._temp_copy(path, data)
        os.replace(tmp, path)

    def create_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = self._temp_copy(path, data)
        try:
            # link() is atomic and fails if the name exists: exclusive create
            # that never exposes a half-written file.
            os.link(tmp, path)
        except FileExistsError:
            raise AlreadyExists(f"{self.describe(key)} already exists") from None
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix.rstrip("/") if prefix.strip("/") else self.root
        if prefix:
            check_key(prefix.rstrip("/") or "x")
        # A partial last part ('ratings/al') is searched for in its folder, never above the root:
        # a store that does not exist yet lists nothing (``--store ~/typo`` once walked the home
        # directory). Commands that read a store refuse a missing one first (``check_exists``).
        search = base if base.is_dir() or base == self.root else base.parent
        if not search.is_dir():
            return []
        keys = []
        for path in search.rglob("*"):
            # Symbolic links are not objects: list only what _path would serve.
            if path.is_file() and not path.is_symlink() and not path.name.endswith(".tmp"):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix) and self._inside(path):
                    keys.append(key)
        return sorted(keys)

    def check_exists(self) -> None:
        """NoSuchStore naming the directory when it does not exist (a typo in --store)."""
        if not self.root.is_dir():
            raise NoSuchStore(f"store {self.uri} does not exist (no such directory; check --store)")

    def modified_at(self, key: str) -> float:
        try:
            return self._path(key).stat().st_mtime
        except FileNotFoundError:
            raise NotFound(f"{self.describe(key)} does not exist") from None


# ---------------------------------------------------------------------- S3


class S3Store(Store):
    """An S3 bucket and prefix, through boto3."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
    ):
        self.bucket = bucket
        self.prefix = check_prefix(prefix)
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = client
        self._endpoint_url = endpoint_url
        self._region = region
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        # Created lazily (and once) so that importing or constructing a store
        # costs nothing until it is used.
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                self._client = boto3.client(
                    "s3",
                    endpoint_url=self._endpoint_url,
                    region_name=self._region,
                    config=Config(
                        retries={"max_attempts": 4, "mode": "standard"},
                        connect_timeout=5,
                        read_timeout=60,
                    ),
                )
            return self._client

    def _key(self, key: str, *, prefix: bool = False) -> str:
        # An object key must be a full key; only a listing prefix may be empty or end in '/'.
        check_key((key.rstrip("/") or "x") if prefix else key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, key: str, fn, *args, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(f"{self.describe(key)} does not exist") from None
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                raise AlreadyExists(f"{self.describe(key)} already exists") from None
            if code in ("AccessDenied", "403", "Forbidden") or status == 403:
                raise AccessDenied(f"{what} {self.describe(key)} failed: access denied") from None
            raise StoreUnavailable(f"{what} {self.describe(key)} failed: {code or status}: {err}") from None
        except BotoCoreError as err:
            raise StoreUnavailable(f"{what} {self.describe(key)} failed: {err}") from None

    def read_bytes(self, key: str) -> bytes:
        resp = self._call("reading", key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return resp["Body"].read()

    def read_limited(self, key: str, limit: int) -> bytes:
        from botocore.exceptions import ClientError

        def get() -> bytes:
            # One byte more than the limit: a larger object is refused without downloading it.
            try:
                resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key), Range=f"bytes=0-{limit}")
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") == "InvalidRange":
                    return b""  # an empty object has no byte 0 to start the range at
                raise
            return resp["Body"].read(limit + 1)

        data = self._call("reading", key, get)
        if len(data) > limit:
            raise TooLarge(f"{self.describe(key)} is larger than {limit} bytes")
        return data

    def write_bytes(self, key: str, data: bytes) -> None:
        self._call("writing", key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    def create_bytes(self, key: str, data: bytes) -> None:
        self._call(
            "creating",
            key,
            self.client.put_object,
            Bucket=self.bucket,
            Key=self._key(key),
            Body=data,
            IfNoneMatch="*",
        )

    def exists(self, key: str) -> bool:
        try:
            self._call("checking", key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        except NotFound:
            return False
        return True

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix, prefix=True) if prefix else (f"{self.prefix}/" if self.prefix else "")
        if prefix.endswith("/") and not full.endswith("/"):
            full += "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        keys: list[str] = []

        def _pages() -> Iterable[dict]:
            yield from paginator.paginate(Bucket=self.bucket, Prefix=full)

        for page in self._call("listing", prefix, lambda: list(_pages())):
            keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def modified_at(self, key: str) -> float:
        resp = self._call("checking", key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        return resp["LastModified"].timestamp()


def open_store(uri: str | os.PathLike[str], *, endpoint_url: str | None = None, region: str | None = None) -> Store:
    """'s3://bucket/prefix' -> S3Store; 'file:///dir' or a path -> LocalStore."""
    text = os.fspath(uri)
    if text.startswith("s3://"):
        rest = text[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ValueError(f"invalid store URI {text!r}: expected s3://BUCKET[/PREFIX]")
        return S3Store(bucket, prefix, endpoint_url=endpoint_url, region=region)
    if text.startswith("file://"):
        text = text[len("file://") :]
    if "://" in text:
        raise ValueError(f"unsupported store URI {text!r}: use s3://BUCKET/PREFIX or a local directory")
    return LocalStore(text)


def store_for_spec(storage: Any, override: str | None = None) -> Store:
    """The store a run's spec names (``spec.storage``), unless an override URI is given."""
    if override:
        return open_store(override)
    return open_store(storage.uri(), endpoint_url=storage.endpoint, region=storage.region)
