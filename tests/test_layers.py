"""The library's architecture: floors (``.importlinter``), no import cycles between modules, short files."""

from pathlib import Path

import grimp
import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "lib" / "leukolab"
MAX_LINES = 300


def test_every_import_runs_down_the_floors(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / ".importlinter"), no_cache=True) == 0


def test_every_top_level_module_is_on_a_floor():
    floors = (ROOT / ".importlinter").read_text().split("layers =")[1]
    named = {name.strip() for line in floors.splitlines() for name in line.split("|") if name.strip()}
    top_level = {f"leukolab.{p.stem if p.is_file() else p.name}" for p in LIBRARY.iterdir()
                 if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert top_level <= named, f"not on any floor of .importlinter: {sorted(top_level - named)}"


def test_no_import_cycle_between_modules():
    graph = grimp.build_graph("leukolab", include_external_packages=False, cache_dir=None)
    cycles = sorted((importer, imported) for importer in graph.modules
                    for imported in graph.find_modules_directly_imported_by(importer)
                    if not imported.startswith(importer + ".") and not importer.startswith(imported + ".")
                    and graph.chain_exists(importer=imported, imported=importer))
    assert not cycles, f"modules that import each other, directly or not: {cycles}"


@pytest.mark.parametrize("path", sorted(LIBRARY.rglob("*.py")), ids=lambda p: str(p.relative_to(LIBRARY)))
def test_library_files_are_short(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines; split it by job (at most {MAX_LINES})"
