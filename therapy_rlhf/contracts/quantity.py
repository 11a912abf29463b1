"""Kubernetes resource quantities ("80Gi", "16G", "512Mi") as bytes, and bytes as GiB text.

The spec keeps quantities as strings (what users write and Kubernetes reads);
the memory plan needs numbers. Only the suffixes the spec's pattern allows are
accepted.
"""

from __future__ import annotations

import re

GIB = 2**30

_SUFFIX = {
    "": 1,
    "m": 1e-3,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")


def parse_bytes(quantity: str) -> int:
    """'80Gi' -> 85899345920; ValueError naming the text for anything else."""
    match = _QUANTITY.match(str(quantity).strip())
    if not match:
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity such as 80Gi or 40G")
    number, suffix = match.groups()
    return int(float(number) * _SUFFIX[suffix or ""])


def gib(n_bytes: float) -> str:
    """Bytes as GiB with one decimal: '23.9'."""
    return f"{n_bytes / GIB:.1f}"
