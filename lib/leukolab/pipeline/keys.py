"""Stage keys: what a stage's result depends on, hashed, so an unchanged stage need not run again.

A task's key covers its notebook's source cells, its resolved parameters (those its
notebook declares, less the per-run ``run_dir``/``parent_run_id``), the contents of
its ``deps`` (files, or folders by name, size and modification time), every
upstream task's key and output, and the ``leukolab`` library (version and sources).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from leukolab import __version__

LIBRARY_DIR = Path(__file__).resolve().parents[1]
VOLATILE_OUTPUT_KEYS = ("mlflow_run_id",)
"""Output fields that name where a result was logged, not what it is: left out of output digests."""


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


@functools.cache
def library_digest() -> str:
    """The ``leukolab`` version and every source file of the library."""
    files = sorted(LIBRARY_DIR.rglob("*.py"))
    return _digest([__version__, *[(str(f.relative_to(LIBRARY_DIR)), hashlib.sha256(f.read_bytes()).hexdigest()) for f in files]])


def notebook_digest(path: Path) -> str:
    """The notebook's cells, type and source only: outputs, execution counts and metadata do not count."""
    cells = json.loads(Path(path).read_text())["cells"]
    return _digest([(c["cell_type"], "".join(c["source"])) for c in cells])


def path_digest(path: Path) -> str:
    """A file's contents; a folder's file names, sizes and modification times (a raw image folder is not read)."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if path.is_dir():
        return _digest([(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*")) if p.is_file()])
    return "missing"


def output_digest(output: dict | None) -> str:
    """A stage output JSON less its volatile fields (a rerun that produced the same thing has the same digest)."""
    return _digest({k: v for k, v in (output or {}).items() if k not in VOLATILE_OUTPUT_KEYS})


def task_key(notebook: Path, parameters: dict, deps: list[Path], upstream: dict[str, tuple[str, dict | None]]) -> str:
    """The key of one task; ``upstream`` maps each upstream task to its key and output."""
    return _digest({
        "notebook": notebook_digest(notebook),
        "parameters": parameters,
        "deps": {str(p): path_digest(p) for p in deps},
        "upstream": {name: [key, output_digest(output)] for name, (key, output) in sorted(upstream.items())},
        "library": library_digest(),
    })
