"""Print a constraints file pinning every installed distribution the ML stack file does not pin.

    .pins-venv/bin/python images/pins.py images/ml-stack.txt images/constraints.txt > images/constraints.txt.new

`make pins-refresh` runs it in a fresh, unconstrained install of the project with every extra.
The header (the comment block at the top of the current constraints file) is carried over.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

PROJECT = "therapy-rlhf"
# The installer itself, as pip freeze leaves it out.
INSTALLER = {"pip", "setuptools", "wheel", "distribute"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def stack_names(stack_file: Path) -> set[str]:
    names = set()
    for line in stack_file.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(canonical(line.partition("==")[0]))
    return names


def main(stack_file: str, current: str) -> int:
    skip = stack_names(Path(stack_file)) | {PROJECT} | INSTALLER
    header = [line for line in Path(current).read_text().splitlines() if line.startswith("#")]
    pins = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and canonical(name) not in skip:
            pins[canonical(name)] = f"{name}=={dist.version}"
    print("\n".join(header + sorted(pins.values(), key=str.lower)))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: pins.py ML_STACK_FILE CURRENT_CONSTRAINTS_FILE")
    sys.exit(main(*sys.argv[1:]))
