"""Configuration errors that name the file, the key and the closest valid keys."""

from __future__ import annotations

import difflib
import types
import typing

from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A parameter file, profile or override that does not fit its schema."""


def close_matches(word: str, choices) -> list[str]:
    """Up to three of ``choices`` that look like ``word`` (a typo's likely meaning)."""
    return difflib.get_close_matches(word, sorted(choices), n=3, cutoff=0.6)


def unknown_key(where: str, key: str, choices) -> str:
    """``<where>: unknown key `key` (did you mean `x`?); valid keys: ...``."""
    matches = close_matches(key.split(".")[-1], choices)
    hint = f" (did you mean {' or '.join(f'`{m}`' for m in matches)}?)" if matches else ""
    return f"{where}: unknown key `{key}`{hint}; valid keys: {', '.join(sorted(choices))}"


def validation_message(where: str, error: ValidationError, model: type[BaseModel]) -> str:
    """Each problem of a pydantic ``error`` on one line, with the dotted key and, for an unknown key, suggestions."""
    lines = []
    for problem in error.errors():
        key = ".".join(str(part) for part in problem["loc"])
        if problem["type"] == "extra_forbidden":
            lines.append(unknown_key(where, key, field_names(model, problem["loc"][:-1])))
        else:
            lines.append(f"{where}: `{key}`: {problem['msg']} (got {problem.get('input')!r})")
    return "\n".join(lines)


def field_names(model: type[BaseModel], path: tuple = ()) -> list[str]:
    """The field names of ``model``, or of the nested model found by following ``path``."""
    for part in path:
        field = model.model_fields.get(str(part))
        nested = _model_in(field.annotation) if field else None
        if nested is None:
            return []
        model = nested
    return list(model.model_fields)


def _model_in(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next((m for m in map(_model_in, typing.get_args(annotation)) if m), None)
    return None
