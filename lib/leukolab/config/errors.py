"""Configuration errors that name the file, the key and the closest valid keys."""

from __future__ import annotations

import difflib
import types
import typing

from pydantic import BaseModel, ValidationError


MAX_LISTED = 20
"""An unknown key's message lists the valid keys when there are at most this many."""


class ConfigError(ValueError):
    """A parameter file, profile or override that does not fit its schema."""


def close_matches(word: str, choices) -> list[str]:
    """Up to three of ``choices`` that look like ``word`` (a typo's likely meaning)."""
    return difflib.get_close_matches(word, sorted(choices), n=3, cutoff=0.6)


def unknown_key(where: str, key: str, choices, what: str = "key") -> str:
    """``<where>: unknown key `key` (did you mean `x`?); valid keys: ...`` (``what``: key, stage, profile ...)."""
    matches = close_matches(key.split(".")[-1], choices)
    hint = f" (did you mean {' or '.join(f'`{m}`' for m in matches)}?)" if matches else ""
    listing = (", ".join(sorted(choices)) or "none") if len(choices) <= MAX_LISTED else f"{len(choices)} of them"
    return f"{where}: unknown {what} `{key}`{hint}; valid {what}s: {listing}"


def validation_message(where: str, error: ValidationError, model: type[BaseModel]) -> str:
    """Each problem of a pydantic ``error`` on one line, with the dotted key and, for an unknown key, suggestions."""
    lines = []
    for problem in error.errors():
        key = ".".join(str(part) for part in problem["loc"])
        if problem["type"] == "extra_forbidden":
            lines.append(unknown_key(where, key, field_names(model, problem["loc"][:-1])))
        elif not key:  # a check of the whole file
            lines.append(f"{where}: {problem['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{where}: `{key}`: {problem['msg']} (got {problem.get('input')!r})")
    return "\n".join(lines)


def field_names(model: type[BaseModel], path: tuple = ()) -> list[str]:
    """The field names of ``model``, or of the nested model found by following ``path`` (through mappings too:
    ``("stages", "etl")`` in a ``stages: dict[str, StageSpec]``)."""
    annotation = model
    for part in path:
        if typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
            continue
        current = nested_model(annotation)
        field = current.model_fields.get(str(part)) if current else None
        if field is None:
            return []
        annotation = field.annotation
    current = nested_model(annotation)
    return list(current.model_fields) if current else []


def nested_model(annotation) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (``Spec``, ``Spec | None``), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next((m for m in map(nested_model, typing.get_args(annotation)) if m), None)
    return None
