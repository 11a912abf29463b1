"""A rater's signing key: kept on the rater's own machine, never in the store.

``therapy-rlhf rater-key init --rater ID`` creates an Ed25519 key in the rater's
user data directory (``$XDG_DATA_HOME/therapy-rlhf/keys/<id>.pem``, by default
``~/.local/share/...``; the file 0600, the folder 0700) and prints its public
key, which the platform team registers for a run (``feedback.raters``). Every
client that stores ratings (the TUI, ``rate --from``, the simulated rater)
signs through a ``Signer`` (``submit_rating(..., signer=)``).

The private key is unencrypted PEM guarded by file permissions, like an SSH key
without a passphrase: whoever can read the rater's home folder can sign as them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, load_pem_private_key

from therapy_rlhf.contracts import names
from therapy_rlhf.contracts.signing import public_key_text, sign_record
from therapy_rlhf.contracts.spec import FeedbackSpec
from therapy_rlhf.feedback.rewards import RatingError


class RaterKeyError(RatingError):
    """No usable key for a rater (one line)."""


def key_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "therapy-rlhf" / "keys"


def key_path(rater: str) -> Path:
    return key_dir() / f"{names.rater_id(rater)}.pem"


def init_key(rater: str) -> str:
    """Create the rater's key (never overwriting one); returns its public key text."""
    path = key_path(rater)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)  # mkdir's mode is masked by the umask, and an existing folder keeps its own
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise RaterKeyError(f"{path} already exists: a rater's key is never replaced (`rater-key show` prints it)") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return public_key_text(key)


def load_key(rater: str) -> Ed25519PrivateKey | None:
    """The rater's key, or None when they have none."""
    path = key_path(rater)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise RaterKeyError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise RaterKeyError(f"{path} is not an Ed25519 key")
    return key


@dataclass(frozen=True)
class Signer:
    """Signs one rater's rating records."""

    rater: str
    key: Ed25519PrivateKey

    @property
    def public_key(self) -> str:
        return public_key_text(self.key)

    def sign(self, record: dict[str, Any]) -> str:
        return sign_record(self.key, record)


def signer_for(rater: str, feedback: FeedbackSpec | None = None, *, create: bool = False) -> Signer | None:
    """The rater's signer (``create``: making the key when there is none, for simulated raters).

    None when the rater has no key and the run registers none (its ratings are
    unauthenticated); a run with a roster needs the key registered for ``rater``.
    """
    key = load_key(rater)
    if key is None and create:
        init_key(rater)
        key = load_key(rater)
    registered = feedback.rater_keys if feedback is not None else {}
    if key is None:
        if registered:
            raise RaterKeyError(
                f"this run accepts only signed ratings and {key_path(rater)} does not exist: "
                f"run `therapy-rlhf rater-key init --rater {rater}` and have the key registered"
            )
        return None
    signer = Signer(rater, key)
    if registered and registered.get(rater) not in (None, signer.public_key):
        raise RaterKeyError(
            f"the key in {key_path(rater)} is not the one this run registers for {rater!r} (feedback.raters)"
        )
    return signer
