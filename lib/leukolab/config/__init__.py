"""Where things live and how parameters are read: the one config loader.

The *project* holds code and parameters (``notebooks/``, ``params/``); the
*workspace* holds generated state (``data/``, ``runs/``, the MLflow store).
They are the same folder unless ``LEUKOLAB_WORKSPACE`` points elsewhere, which
is how tests run the pipeline in a temporary folder.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from leukolab.config.errors import ConfigError, unknown_key

PROJECT_ROOT = Path(__file__).resolve().parents[3]
PARAMS_DIR = PROJECT_ROOT / "params"
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"


def workspace() -> Path:
    """The folder that holds ``data/``, ``runs/`` and the MLflow store."""
    return Path(os.environ.get("LEUKOLAB_WORKSPACE", PROJECT_ROOT)).resolve()


def workspace_path(path: str | os.PathLike) -> Path:
    """Resolve ``path`` against the workspace unless it is absolute."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else workspace() / path


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping; a missing or non-mapping file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"parameter file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a YAML mapping, not {type(data).__name__}")
    return data


def deep_merge(base: dict, override: dict) -> dict:
    """Return ``base`` updated by ``override``, merging nested mappings; ``None`` values do not override."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            continue
        if isinstance(value, dict):
            merged[key] = deep_merge(merged[key] if isinstance(merged.get(key), dict) else {}, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def nested(path: list[str] | tuple[str, ...], value: Any) -> dict:
    """``{"a": {"b": value}}`` for the path ``("a", "b")``: a dotted key as the mapping it overrides."""
    for key in reversed(path):
        value = {key: value}
    return value


def available(kind: str) -> list[str]:
    """Names of the YAML files in ``params/<kind>/`` (``experiments`` or ``profiles``)."""
    return sorted(p.stem for p in (PARAMS_DIR / kind).glob("*.yaml"))


def load_named(kind: str, name: str) -> dict[str, Any]:
    """Load ``params/<kind>/<name>.yaml``, naming the choices when it does not exist."""
    path = PARAMS_DIR / kind / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(unknown_key(f"params/{kind}", name, available(kind), what=kind[:-1]))
    return read_yaml(path)


def parse_value(text: str) -> Any:
    """Parse a ``--param`` value as YAML (numbers, booleans, lists), falling back to the string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text
