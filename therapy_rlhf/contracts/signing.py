"""Rating signatures: Ed25519 over a canonical serialisation of the whole rating record.

A rater id is a self-declared string; a signature binds a rating to the person
holding the key registered for that id in the run's spec (``feedback.raters``).
What is signed is the record exactly as stored, minus its ``signature`` field,
serialised with sorted keys and no whitespace, behind a fixed domain prefix (so
a rating signature can never be replayed as a signature of anything else). The
record carries the SHA-256 of the response text it judges (``response_sha256``),
so a signature cannot be moved to another response, nor to the same response id
in another round or run whose text differs.

Keys and signatures are written ``ed25519:<base64>``: short enough to paste into
a spec, and saying which algorithm they are for.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ALGORITHM = "ed25519"
# Changing what is signed means a new prefix: old signatures then fail loudly instead of meaning something else.
DOMAIN = b"therapy-rlhf rating v1\n"
SIGNATURE_FIELD = "signature"

# Why a rating is refused (RoundState.refused, status, the operator's Warning Event): one name per reason.
UNSIGNED = "unsigned"
UNKNOWN_RATER = "unknown-rater"
BAD_SIGNATURE = "bad-signature"
RESPONSE_DIGEST_MISMATCH = "response-digest-mismatch"
REFUSAL_REASONS = (UNSIGNED, UNKNOWN_RATER, BAD_SIGNATURE, RESPONSE_DIGEST_MISMATCH)


class KeyFormatError(ValueError):
    """A public key or signature text that does not parse (one line)."""


def text_sha256(text: str) -> str:
    """The digest a rating records of the response text it judges."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_bytes(record: dict[str, Any]) -> bytes:
    """What is signed: the record minus its signature, sorted keys, no whitespace, behind the domain prefix."""
    body = {k: v for k, v in record.items() if k != SIGNATURE_FIELD}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return DOMAIN + text.encode("utf-8")


def _decode(text: str, what: str, size: int) -> bytes:
    prefix = f"{ALGORITHM}:"
    if not isinstance(text, str) or not text.startswith(prefix):
        raise KeyFormatError(f"{what} must look like '{prefix}<base64>'")
    try:
        raw = base64.b64decode(text[len(prefix) :], validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError(f"{what} is not valid base64 after '{prefix}'") from None
    if len(raw) != size:
        raise KeyFormatError(f"{what} must be {size} bytes, got {len(raw)}")
    return raw


def _encode(raw: bytes) -> str:
    return f"{ALGORITHM}:{base64.b64encode(raw).decode('ascii')}"


def parse_public_key(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(_decode(text, "public key", 32))


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return _encode(public.public_bytes(Encoding.Raw, PublicFormat.Raw))


def sign_record(key: Ed25519PrivateKey, record: dict[str, Any]) -> str:
    """The signature text of a record (its own signature field, if any, is not signed)."""
    return _encode(key.sign(canonical_bytes(record)))


def verify_record(public: Ed25519PublicKey, record: dict[str, Any]) -> bool:
    """Whether the record's signature is ``public``'s signature of the rest of it."""
    try:
        signature = _decode(record.get(SIGNATURE_FIELD), "signature", 64)  # type: ignore[arg-type]
        public.verify(signature, canonical_bytes(record))
    except (KeyFormatError, InvalidSignature, TypeError, ValueError):
        return False
    return True
