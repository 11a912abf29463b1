"""The package as users install it: the built wheel, not the editable checkout the other tests use.

* Every folder with an ``__init__.py`` is a package that pyproject.toml lists (setuptools'
  discovery cannot follow the package-dir mapping of operator/, jobs/ and tui/).
* ``python -m build`` makes the sdist and, from it, the wheel; both carry every module and
  every data file.
* The wheel, installed (not editable) into a fresh virtual environment, runs the CLI (every
  command's ``--help``, ``validate`` on every example), a job (``generate`` on the tiny model)
  and the TUI's start screen, headless. That environment reuses this one's installed
  dependencies through a path entry, but none of its ``.pth`` hooks, so this checkout's
  editable install is invisible there.
* The psychologist's install (``therapy-rlhf[tui]``, no torch) into a fresh environment with
  its own dependencies (slow: pip installs a dozen packages from its cache or the index).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from tests.support.budget import budget

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_DIR = PROJECT["tool"]["setuptools"]["package-dir"]
CONSTRAINTS = ["-c", str(ROOT / "images" / "ml-stack.txt"), "-c", str(ROOT / "images" / "constraints.txt")]

TUI_START = """
import asyncio, sys
from therapy_rlhf.store.backends import LocalStore
from therapy_rlhf.store.runs import freeze_spec
from therapy_rlhf.contracts.spec import load_run
from therapy_rlhf.tui.app import ScoringApp
from textual.widgets import DataTable

store = LocalStore(sys.argv[1])
freeze_spec(store, load_run(sys.argv[2]))

async def main():
    app = ScoringApp(store, "dr-lee")
    async with app.run_test(size=(80, 24)) as pilot:
        for _ in range(400):
            await pilot.pause(0.05)
            tables = app.screen.query(DataTable)
            if tables and tables.first().row_count:
                break
        table = app.screen.query_one(DataTable)
        print(type(app.screen).__name__, [table.get_row_at(i)[0] for i in range(table.row_count)])

asyncio.run(main())
"""


def source_packages() -> set[str]:
    """Import names of every folder that holds an __init__.py, through the package-dir mapping."""
    found = set()
    for name, folder in PACKAGE_DIR.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            if "__pycache__" not in rel:
                found.add(".".join((name, *rel)))
    return found


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(PROJECT["tool"]["setuptools"]["packages"])
    assert source_packages() - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - source_packages() == set(), "pyproject.toml lists packages that have no folder"


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=budget(90))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return {"wheel": next(out.glob("therapy_rlhf-*.whl")), "sdist": next(out.glob("therapy_rlhf-*.tar.gz"))}


def expected_files() -> set[str]:
    """Every module and data file of the source folders, as paths inside the wheel."""
    data_patterns = PROJECT["tool"]["setuptools"]["package-data"]
    files = set()
    for name, folder in PACKAGE_DIR.items():
        base = ROOT / folder
        target = name.replace(".", "/")
        for path in base.rglob("*.py"):
            if "__pycache__" not in path.parts and (path.parent / "__init__.py").exists():
                files.add(f"{target}/{path.relative_to(base).as_posix()}")
        for pattern in data_patterns.get(name, []):
            files.update(f"{target}/{p.relative_to(base).as_posix()}" for p in base.glob(pattern) if p.is_file())
    return files


def test_the_wheel_built_from_the_sdist_carries_every_module_and_data_file(dist):
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = set(wheel.namelist())
    missing = expected_files() - names
    assert not missing, f"missing from {dist['wheel'].name}: {sorted(missing)[:20]}"
    assert any(n.endswith("scoring.tcss") for n in names) and any("/fixtures/" in n for n in names)


def run_in(env_bin: Path, *args: str, seconds: float, cwd: Path | None = None, extra_env=None) -> str:
    env = {**os.environ, "PATH": f"{env_bin}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
           **(extra_env or {})}
    env.pop("PYTHONPATH", None)
    # Never the checkout as the working directory: its top-level operator/ would shadow the
    # standard library's operator module for `python -c`, as it would for anyone there.
    cwd = cwd or env_bin.parent.parent
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=budget(seconds), env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{args}: rc {proc.returncode}\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def wheel_env(dist, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed, seeing this environment's dependencies but not its editable install."""
    venv = tmp_path_factory.mktemp("wheel-env") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=budget(30))
    python = venv / "bin" / "python"
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    # A plain path line: appended to sys.path, but the .pth files there (the editable finder) never run.
    (site / "zz_shared_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(dist["wheel"])], check=True, timeout=budget(60))
    return venv / "bin"


def test_the_installed_wheel_is_what_runs(wheel_env):
    where = run_in(wheel_env, "python", "-c", "import therapy_rlhf.commands, therapy_rlhf.tui.app as a; print(a.__file__)",
                   seconds=10)
    assert where.startswith(str(wheel_env.parent)) and str(ROOT) not in where


def test_every_command_answers_help_from_the_wheel(wheel_env):
    out = run_in(wheel_env, "therapy-rlhf", "--help", seconds=10)
    commands = json.loads(run_in(wheel_env, "python", "-c",
                                 "import json; from therapy_rlhf.cli import build_parser as b; "
                                 "p = b(); a = [x for x in p._actions if x.choices]; print(json.dumps(sorted(a[0].choices)))",
                                 seconds=10))
    assert len(commands) >= 10 and all(c in out for c in commands)
    for command in commands:
        assert "usage:" in run_in(wheel_env, "therapy-rlhf", command, "--help", seconds=10)


def test_every_example_validates_from_the_wheel(wheel_env, tmp_path):
    for example in sorted((ROOT / "examples").glob("*.yaml")):
        run_in(wheel_env, "therapy-rlhf", "validate", str(example), seconds=15, cwd=tmp_path)
    bad = ROOT / "examples" / "invalid" / "unknown-field.yaml"
    env = {**os.environ, "PATH": f"{wheel_env}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["therapy-rlhf", "validate", str(bad)], capture_output=True, text=True, env=env,
                          timeout=budget(15), stdin=subprocess.DEVNULL)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_job_and_the_tui_run_from_the_wheel(wheel_env, tmp_path):
    doc = yaml.safe_load((ROOT / "examples" / "tiny-local.yaml").read_text())
    doc["spec"].update(sft={"enabled": False}, evaluation={"enabled": False}, storage={"localPath": str(tmp_path / "store")})
    doc["spec"]["ppo"]["rounds"] = 1
    manifest = tmp_path / "run.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    store = tmp_path / "store"
    run_in(wheel_env, "python", "-m", "therapy_rlhf.jobs", "generate", "--run-config", str(manifest), "--round", "1",
           "--store", str(store), seconds=40, extra_env={"THERAPY_RLHF_CACHE": str(tmp_path / "cache")})
    batch = store / "default" / "tiny-local" / "rounds" / "0001" / "batch.jsonl"
    assert len(batch.read_text().splitlines()) == 8
    shown = run_in(wheel_env, "python", "-c", TUI_START, str(store), str(manifest), seconds=20)
    assert shown.strip() == "StartScreen ['default/tiny-local']"


@pytest.mark.slow
def test_the_psychologists_install_has_no_torch_and_rates(dist, tmp_path):
    venv = tmp_path / "bastion"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=budget(60))
    bin_dir = venv / "bin"
    run_in(bin_dir, str(bin_dir / "pip"), "install", "--quiet", *CONSTRAINTS, f"{dist['wheel']}[tui]", seconds=120)
    missing = run_in(bin_dir, "python", "-c",
                     "import importlib.util as u; print([m for m in ('torch', 'transformers', 'kopf', 'kubernetes') if u.find_spec(m)])",
                     seconds=10)
    assert missing.strip() == "[]"
    assert "usage:" in run_in(bin_dir, "therapy-rlhf", "rate", "--help", seconds=10)
    store = tmp_path / "store"
    rounds = store / "default" / "tiny-local" / "rounds" / "0001"
    rounds.mkdir(parents=True)
    (rounds / "batch.jsonl").write_text(json.dumps({"id": "r0001-a", "round": 1, "prompt_id": "p",
                                                    "prompt": "I feel hopeless.", "response": "I hear you."}) + "\n")
    doc = yaml.safe_load((ROOT / "examples" / "tiny-local.yaml").read_text())
    doc["spec"]["storage"] = {"localPath": str(store)}
    manifest = tmp_path / "run.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    shown = run_in(bin_dir, "python", "-c", TUI_START, str(store), str(manifest), seconds=20)
    assert shown.strip() == "StartScreen ['default/tiny-local']"
    size = sum(p.stat().st_size for p in venv.rglob("*") if p.is_file())
    print(f"bastion install: {size / 2**20:.0f} MiB in {venv}")
    assert size < 400 * 2**20  # no ML stack: a few hundred MiB at most (torch alone is ~800 MiB)
