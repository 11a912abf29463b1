"""Import boundaries: the operator and the TUI never pull in torch, the TUI never the
Kubernetes client, the operator never Textual, the jobs never kopf.

Checked twice: statically (the AST of every module, following the project's own
imports transitively, including imports inside functions) and dynamically
(import every module of a package in a fresh interpreter and look at
``sys.modules``). Also: the repository's ``operator/`` folder never shadows the
standard library's ``operator``.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from tests.support.budget import budget

ROOT = Path(__file__).resolve().parents[2]
# import name prefix -> folder, as pyproject's package-dir maps them
PACKAGES = {
    "therapy_rlhf.operator": ROOT / "operator",
    "therapy_rlhf.jobs": ROOT / "jobs",
    "therapy_rlhf.tui": ROOT / "tui",
    "therapy_rlhf": ROOT / "therapy_rlhf",
}
FORBIDDEN = {
    "therapy_rlhf.operator": {"torch", "textual", "transformers", "peft", "trl"},
    "therapy_rlhf.tui": {"torch", "kubernetes", "kopf", "transformers", "peft", "trl"},
    "therapy_rlhf.jobs": {"kopf"},
}


def module_files() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for name, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mod = ".".join([name, *parts])
            out.setdefault(mod, path)  # therapy_rlhf.operator wins over a stray therapy_rlhf/operator
    return out


def imports_of(mod: str, path: Path) -> set[str]:
    """Absolute names of everything a module imports, anywhere in its body."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    package = mod if is_pkg else mod.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # "from pkg import sub" may import a submodule
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def reachable_third_party(start: str, files: dict[str, Path]) -> dict[str, list[str]]:
    """Top-level third-party names reachable from ``start`` -> one import chain to each."""
    chains: dict[str, list[str]] = {}
    seen = {start}
    todo = [(start, [start])]
    while todo:
        mod, chain = todo.pop()
        for name in imports_of(mod, files[mod]):
            if name in files:
                if name not in seen:
                    seen.add(name)
                    todo.append((name, chain + [name]))
            elif not name.startswith("therapy_rlhf"):
                chains.setdefault(name.split(".")[0], chain)
    return chains


FILES = module_files()


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_static_import_boundaries(package):
    modules = [m for m in FILES if m == package or m.startswith(package + ".")]
    assert modules, f"no modules found for {package}"
    problems = []
    for mod in modules:
        for name, chain in reachable_third_party(mod, FILES).items():
            if name in FORBIDDEN[package]:
                problems.append(f"{' -> '.join(chain)} imports {name}")
    assert not problems, "\n".join(sorted(set(problems)))


def test_static_checker_sees_imports(tmp_path):
    """The AST walk finds top-level, function-level and relative imports."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import os\nfrom . import b\ndef f():\n    import torch\n")
    (pkg / "b.py").write_text("from .c import thing\n")
    (pkg / "c.py").write_text("def g():\n    from kopf import on\n")
    files = {"therapy_rlhf.x": pkg / "__init__.py", "therapy_rlhf.x.a": pkg / "a.py",
             "therapy_rlhf.x.b": pkg / "b.py", "therapy_rlhf.x.c": pkg / "c.py"}
    found = reachable_third_party("therapy_rlhf.x.a", files)
    assert {"os", "torch", "kopf"} <= set(found)
    assert found["kopf"] == ["therapy_rlhf.x.a", "therapy_rlhf.x.b", "therapy_rlhf.x.c"]


PROBE = """
import importlib, json, pkgutil, sys
pkg = importlib.import_module(sys.argv[1])
failed = []
for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
    if info.name.endswith("__main__"):
        continue
    try:
        importlib.import_module(info.name)
    except ImportError as err:
        failed.append(f"{info.name}: {err}")
print(json.dumps({"modules": sorted(sys.modules), "failed": failed}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dynamic_import_boundaries(package, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, package], capture_output=True, text=True, cwd=tmp_path, timeout=budget(40)
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["failed"] == []
    loaded = {m.split(".")[0] for m in result["modules"]}
    assert package in result["modules"]
    assert not loaded & FORBIDDEN[package], sorted(loaded & FORBIDDEN[package])


def test_core_contracts_stay_light(tmp_path):
    """The CLI's light commands and the contracts load without torch, kopf or Textual."""
    code = (
        "import sys, therapy_rlhf.cli, therapy_rlhf.contracts.spec, therapy_rlhf.store.backends, therapy_rlhf.feedback.rounds, "
        "therapy_rlhf.planning.planner, therapy_rlhf.planning.observe, therapy_rlhf.store.runs, therapy_rlhf.contracts.crd, therapy_rlhf.contracts.status;"
        "therapy_rlhf.cli.build_parser();"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'kopf', 'textual', 'kubernetes', 'transformers'}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


@pytest.mark.parametrize("where", ["repo", "elsewhere"])
def test_plain_operator_is_the_stdlib(where, tmp_path):
    cwd = ROOT if where == "repo" else tmp_path
    code = (
        "import json, operator, importlib.util as u;"
        "print(json.dumps({'file': operator.__file__, 'itemgetter': hasattr(operator, 'itemgetter'),"
        " 'jobs': u.find_spec('jobs') is not None, 'tui': u.find_spec('tui') is not None}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert Path(info["file"]).resolve().parent == STDLIB and info["itemgetter"]
    if where == "elsewhere":
        # installed, the folders exist only under their therapy_rlhf.* names
        assert not info["jobs"] and not info["tui"]


def test_installed_distribution_has_no_top_level_operator():
    from importlib.metadata import distribution

    dist = distribution("therapy-rlhf")
    top = (dist.read_text("top_level.txt") or "").split()
    assert "operator" not in top and "jobs" not in top and "tui" not in top
    import therapy_rlhf.operator as op_pkg

    assert Path(op_pkg.__file__).resolve().parent == ROOT / "operator"


NO_SIDE_EFFECTS = """
import importlib, json, pkgutil, sys
import kopf

def handlers():
    registry = kopf.get_default_registry()
    names = ("_activities", "_resource_watching", "_resource_spawning", "_resource_changing", "_webhooks")
    return {h.id for n in names if hasattr(registry, n) for h in getattr(registry, n).get_all_handlers()}

before = handlers()  # kopf's own (its default login)
import therapy_rlhf.operator as pkg
for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
    importlib.import_module(info.name)  # __main__ too: it registers only when main() runs
print(json.dumps({"registered": sorted(handlers() - before)}))
"""


def test_importing_the_operator_has_no_side_effect(tmp_path):
    """No handler is registered and the environment is not read at import: a bad setting
    breaks only ``python -m therapy_rlhf.operator``, and the pure builders load without kopf."""
    env = {**os.environ, "THERAPY_RLHF_INTERVAL": "not-a-number", "THERAPY_RLHF_METRICS_PORT": "nope"}
    proc = subprocess.run([sys.executable, "-c", NO_SIDE_EFFECTS], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == {"registered": []}
    code = "import sys, therapy_rlhf.operator.builders; print('kopf' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr[-2000:]
    # the entrypoint is where the environment is read, and a bad value is refused there
    proc = subprocess.run([sys.executable, "-m", "therapy_rlhf.operator", "-n", "x"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=budget(60))
    assert proc.returncode != 0 and "THERAPY_RLHF_INTERVAL" in proc.stderr


# The core's floors, lowest first: a subpackage imports only itself and those below it.
CORE_LAYERS = ["contracts", "store", "feedback", "planning", "execution", "commands"]
UPPER = ("therapy_rlhf.operator", "therapy_rlhf.jobs", "therapy_rlhf.tui")


def core_floor(mod: str) -> int | None:
    """The floor of a core module; the CLI (``cli``, ``commands``) is the top one."""
    if mod.startswith(UPPER) or not mod.startswith("therapy_rlhf."):
        return None
    part = mod.split(".")[1]
    if part == "cli":
        return CORE_LAYERS.index("commands")
    return CORE_LAYERS.index(part) if part in CORE_LAYERS else None


def project_imports(mod: str) -> set[str]:
    """The project modules ``mod`` imports (a ``from pkg import sub`` counts as the submodule)."""
    return {name for name in imports_of(mod, FILES[mod]) if name in FILES and name != mod}


def test_every_core_module_sits_on_a_floor():
    core = [m for m in FILES if m.startswith("therapy_rlhf.") and not m.startswith(UPPER)]
    assert core and [m for m in core if core_floor(m) is None] == []


def test_the_core_imports_nothing_above_it():
    """Nothing in therapy_rlhf imports the operator, the jobs or the TUI (the CLI wires them in lazily
    by module name only where it must: ``commands`` may import them inside functions)."""
    problems = []
    for mod in FILES:
        floor = core_floor(mod)
        if floor is None:
            continue
        for name in imports_of(mod, FILES[mod]):
            if name.startswith(UPPER) and CORE_LAYERS[floor] != "commands":
                problems.append(f"{mod} imports {name}")
    assert not problems, "\n".join(sorted(problems))


def test_each_subpackage_imports_only_those_below_it():
    problems = []
    for mod in FILES:
        floor = core_floor(mod)
        if floor is None:
            continue
        for name in project_imports(mod):
            other = core_floor(name)
            if other is not None and other > floor:
                problems.append(f"{mod} ({CORE_LAYERS[floor]}) imports {name} ({CORE_LAYERS[other]})")
    assert not problems, "\n".join(sorted(problems))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in ``graph`` (module -> modules it imports), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_anywhere():
    """Between any modules of the project, counting imports inside functions too (a package's
    ``__init__`` importing its own modules is not a cycle: it is how a package is loaded)."""
    graph = {m: {n for n in project_imports(m) if not m.startswith(n + ".")} for m in FILES}
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
