"""Packaging: pyproject.toml and requirements.txt in step, the clone-neutral `leukolab` launcher, the shared env."""

import importlib.metadata
import os
import re
import runpy
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "bin" / "leukolab"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
BASE_PYTHON = str(Path(sys.base_prefix) / "bin" / "python3")
"""The interpreter this environment was made from, which `make env` makes environments with."""
DEV_TOOLS = {"pytest", "pytest-timeout", "nbval", "selenium", "import-linter", "jupyterlab", "voila", "mkdocs",
             "mkdocs-material"}
UV = Path.home() / ".cache" / "leukolab" / "tools" / "uv-0.13.8" / "bin" / "uv"
"""The uv that `make env` installed (tests pass it to the Makefile, which would otherwise install it)."""


def pins() -> dict[str, str]:
    """requirements.txt as {distribution: version}; every line must be an exact pin."""
    found = {}
    for number, line in enumerate((ROOT / "requirements.txt").read_text().splitlines(), 1):
        line = line.split("#")[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9._-]+)(?:\[[A-Za-z0-9,._-]+\])?==([A-Za-z0-9.+!-]+)", line)
            assert match, f"requirements.txt:{number}: {line!r} is not an exact pin NAME==VERSION"
            found[canonicalize_name(match[1])] = match[2]
    return found


def declared() -> dict[str, Requirement]:
    """pyproject.toml's runtime dependencies and every extra's, by distribution name."""
    lists = [PROJECT["dependencies"], *PROJECT["optional-dependencies"].values()]
    return {canonicalize_name(r.name): r for r in (Requirement(line) for group in lists for line in group)}


def test_pyproject_names_exactly_what_requirements_pins_and_each_pin_fits_its_range():
    assert "dynamic" not in PROJECT, "dependencies are listed in pyproject.toml, not read from requirements.txt"
    locked, wanted = pins(), declared()
    assert not sorted(set(wanted) - set(locked)), f"pin these in requirements.txt: {sorted(set(wanted) - set(locked))}"
    assert not sorted(set(locked) - set(wanted)), f"name these in pyproject.toml: {sorted(set(locked) - set(wanted))}"
    misfits = {name: (locked[name], str(r.specifier)) for name, r in wanted.items() if locked[name] not in r.specifier}
    assert not misfits, f"requirements.txt's pins outside pyproject.toml's ranges: {misfits}"


def locked() -> dict[str, tuple[str, Requirement, list[str]]]:
    """requirements.lock as {distribution: (version, requirement with its marker, hashes)}; of the entries a
    universal lock holds for one name under exclusive markers (Python 3.11 and later ones), the one for this Python."""
    entries, text = {}, (ROOT / "requirements.lock").read_text()
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        head = block.split("\\")[0].strip()
        if not head or head.startswith("#"):
            continue
        requirement = Requirement(head)
        name = canonicalize_name(requirement.name)
        if name in entries and not (requirement.marker is None or requirement.marker.evaluate()):
            continue
        (version,) = [s.version for s in requirement.specifier if s.operator == "=="]
        entries[name] = (version, requirement, re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return entries


def test_the_lock_holds_every_pin_at_its_version_with_hashes_and_environment_yml_installs_it():
    lock, direct = locked(), pins()
    assert len(lock) > len(direct), "the lock holds the transitive distributions too"
    assert not [n for n in direct if n not in lock], "requirements.txt pins missing from the lock: run `make lock`"
    differ = {n: (v, lock[n][0]) for n, v in direct.items() if lock[n][0] != v}
    assert not differ, f"requirements.txt and requirements.lock disagree (pin, lock): {differ}; run `make lock`"
    assert not [n for n, (_, _, hashes) in lock.items() if not hashes], "every lock entry carries its files' hashes"
    conda = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    assert "python=3.11" in conda and SpecifierSet(PROJECT["requires-python"]).contains("3.11")
    assert [d for d in conda if isinstance(d, dict)] == [{"pip": ["-r requirements.lock"]}]
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes --no-deps -r requirements.lock" in makefile and "cat requirements.lock bin/leukolab" in makefile


def test_this_environment_was_built_from_the_lock():
    """Every distribution the lock holds for this platform is installed at the lock's version."""
    if not Path(sys.prefix).name.startswith("venv-py311-"):
        pytest.skip(f"not the Makefile's environment: {sys.prefix}")
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    wrong = {name: (version, installed.get(name)) for name, (version, requirement, _) in locked().items()
             if (requirement.marker is None or requirement.marker.evaluate()) and installed.get(name) != version}
    assert not wrong, f"(lock, installed): {wrong}"


def test_runtime_dependencies_leave_test_and_notebook_server_tools_to_extras():
    runtime = {canonicalize_name(Requirement(line).name) for line in PROJECT["dependencies"]}
    assert not runtime & DEV_TOOLS, sorted(runtime & DEV_TOOLS)
    assert {"test", "lab"} <= set(PROJECT["optional-dependencies"])
    assert {"pydantic", "ipykernel", "papermill"} <= runtime


def test_no_file_writes_a_package_index_address():
    """Package indexes come from pip's configuration or a build argument, never from a file of the project."""
    index_setting = re.compile(r"(index[-_]url|find[-_]links)[\s=:\"']+https?://", re.IGNORECASE)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    hits = [f"{name}:{number}" for name in files if (ROOT / name).is_file()
            for number, line in enumerate((ROOT / name).read_text(errors="replace").splitlines(), 1)
            if index_setting.search(line)]
    assert not hits, f"package index addresses written out: {hits}"

def clone(folder: Path) -> Path:
    """A clone-like folder: a copy of this checkout's library, and a notebooks/ folder to start in."""
    shutil.copytree(ROOT / "lib", folder / "lib", ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "notebooks").mkdir()
    return folder


LAUNCH = """
import runpy, sys
launcher, sys.argv = sys.argv[1], ["leukolab", "--help"]
try:
    runpy.run_path(launcher, run_name="__main__")
except SystemExit as done:
    status = done.code
import os
print(os.environ["PYTHONPATH"].split(os.pathsep)[0])
print(sys.modules["leukolab"].__file__)
sys.exit(status)
"""


def launch(cwd: Path, pythonpath: str | None) -> subprocess.CompletedProcess:
    """`leukolab --help` through the launcher, from ``cwd``; prints the imported leukolab's file last."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-c", LAUNCH, str(LAUNCHER)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_launcher_runs_the_library_of_the_clone_it_starts_in(tmp_path):
    here = clone(tmp_path / "clone")
    result = launch(here / "notebooks", pythonpath=None)
    assert result.returncode == 0 and "usage: leukolab" in result.stdout, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == str(here / "lib" / "leukolab" / "__init__.py")
    assert result.stdout.splitlines()[-2] == str(here / "lib"), "what it starts (kernels, workers) must find it too"


def test_pythonpath_chooses_the_library_before_the_current_folder(tmp_path):
    here, there = clone(tmp_path / "here"), clone(tmp_path / "there")
    result = launch(here / "notebooks", pythonpath=str(there / "lib"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == str(there / "lib" / "leukolab" / "__init__.py")


def test_outside_any_clone_the_launcher_says_what_to_do(tmp_path):
    result = subprocess.run([sys.executable, str(LAUNCHER), "runs", "list"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert result.returncode == 2
    assert "no leukolab library on PYTHONPATH (unset)" in result.stderr and "inside a clone" in result.stderr
    clone_library = runpy.run_path(str(LAUNCHER))["clone_library"]
    with pytest.raises(LookupError, match="no leukolab clone at or above"):
        clone_library(str(tmp_path / "elsewhere"), tmp_path)


def make(folder: Path, venv: Path, *args: str) -> subprocess.CompletedProcess:
    """The Makefile of ``folder`` with VENV=``venv``, offline, outside any make that runs this test."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PYTHONPATH")}
    env |= {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "UV_OFFLINE": "1"}
    return subprocess.run(["make", "--no-print-directory", "-C", str(folder), f"VENV={venv}",
                           f"PYTHON={BASE_PYTHON}", f"UV={UV}", *args], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def checkout_with_small_pins(tmp_path):
    """A clone whose lock names nothing, and an unbuilt venv that sees this environment's packages (ipykernel
    among them), so that building it installs nothing and needs no network."""
    if not UV.is_file():
        pytest.skip(f"{UV} is missing: `make env` installs it")
    folder = clone(tmp_path / "clone")
    shutil.copy(ROOT / "Makefile", folder)
    (folder / "bin").mkdir()
    shutil.copy(LAUNCHER, folder / "bin")
    (folder / "requirements.lock").write_text("# nothing to install: the venv sees this environment's packages\n")
    venv = tmp_path / "venv"
    subprocess.run([BASE_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "shared.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return folder, venv


def test_two_makes_started_together_build_the_shared_env_once_and_name_no_clone(checkout_with_small_pins, tmp_path):
    folder, venv = checkout_with_small_pins
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: make(folder, venv, "env"), range(2)))
    assert all(r.returncode == 0 for r in results), [r.stderr[-2000:] for r in results]
    output = "".join(r.stdout for r in results)
    assert output.count("==> building the environment") == 1, output
    assert (venv / ".built").exists()
    launcher = (venv / "bin" / "leukolab").read_text()
    assert launcher.splitlines()[0] == f"#!{venv}/bin/python"
    assert launcher.split("\n", 1)[1] == LAUNCHER.read_text().split("\n", 1)[1]
    kernel = (venv / "share" / "jupyter" / "kernels" / "leukolab" / "kernel.json").read_text()
    assert f"{venv}/bin/python" in kernel and "Python (leukolab)" in kernel
    assert str(folder) not in launcher + kernel, "the shared environment must not name a clone"
    assert (folder / ".venv").resolve() == venv.resolve() and os.access(folder / ".venv" / "bin" / "leukolab", os.X_OK)

    other = shutil.copytree(folder, tmp_path / "other-clone", symlinks=True)
    plan = make(other, venv, "-n", "run")
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines()[-1] == f"{venv}/bin/leukolab run --profile default"
    assert "install" not in plan.stdout and "venv" not in plan.stdout.split("||")[-1].split()[0], "another clone reinstalls"
