"""Typed parameter files: a YAML file validated against its schema, with errors that name the file and the key."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from leukolab.config import read_yaml
from leukolab.config.errors import ConfigError, validation_message

Schema = TypeVar("Schema", bound=BaseModel)


def load_typed(schema: type[Schema], path: str | Path) -> Schema:
    """``path`` read as YAML and validated as ``schema``; a ``ConfigError`` names the file and each bad key."""
    return parse_typed(schema, read_yaml(path), str(path))


def parse_typed(schema: type[Schema], values: dict, where: str) -> Schema:
    """``values`` validated as ``schema``; a ``ConfigError`` names ``where`` and each bad key."""
    try:
        return schema.model_validate(values)
    except ValidationError as error:
        raise ConfigError(validation_message(where, error, schema)) from None


def from_parameters(schema: type[Schema], values: dict, where: str) -> Schema:
    """``schema`` from the ``values`` that name its fields; ``None`` takes the field's default (a notebook's
    ``parameters`` cell says ``None`` for "the library's default")."""
    return parse_typed(schema, {k: v for k, v in values.items() if k in schema.model_fields and v is not None}, where)
