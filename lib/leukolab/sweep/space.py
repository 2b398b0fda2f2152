"""The search space of a sweep: experiment keys (``training.lr``) and the values each may take.

A space file (YAML) maps each key to ``{low, high, log}`` (a number range, log-uniform with ``log: true``) or
``{choices: [...]}``. Keys are checked against the experiment schema, and every bound and choice against the
field's own rules, before anything runs.
"""

from __future__ import annotations

import functools
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from leukolab.config import deep_merge, nested, read_yaml
from leukolab.config.errors import ConfigError, field_names, nested_model, unknown_key
from leukolab.config.experiment import AugmentationSpec, Experiment, parse_experiment

SPEC_KEYS = ("low", "high", "log", "choices")
SCALARS = (bool, int, float, str)


@dataclass(frozen=True)
class Dimension:
    """One searched key: a range ``low``..``high`` (``log``: log-uniform; integers for an int field) or ``choices``."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None
    integer: bool = False

    def distribution(self) -> BaseDistribution:
        if self.choices is not None:
            return CategoricalDistribution(self.choices)
        if self.integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(self.low, self.high, log=self.log)

    def as_dict(self) -> dict:
        """What a space file says for this key."""
        if self.choices is not None:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log}


def default_space(experiment: Experiment) -> dict[str, Dimension]:
    """Around the experiment's own values: learning rate and weight decay log-uniform over a factor of 10 either
    way, batch size half, same or double, and each augmentation strength that is on, from 0 to twice its value."""
    training = experiment.training
    decay = (training.weight_decay / 10, training.weight_decay * 10) if training.weight_decay > 0 else (1e-6, 1e-2)
    space = [Dimension("training.lr", training.lr / 10, training.lr * 10, log=True),
             Dimension("training.weight_decay", *decay, log=True),
             Dimension("training.batch_size", choices=tuple(sorted({max(1, training.batch_size // 2),
                                                                    training.batch_size, training.batch_size * 2})))]
    for name, field in AugmentationSpec.model_fields.items():
        value = getattr(experiment.augmentation, name)
        if field.annotation is float and value > 0:
            space.append(Dimension(f"augmentation.{name}", 0.0, 2 * value))
    return {dimension.key: dimension for dimension in space}


def read_space(path: str | Path) -> dict[str, Dimension]:
    """A space file: each key checked against the experiment schema, each entry's form checked."""
    return parse_space(read_yaml(path), str(path))


def parse_space(entries: dict, where: str) -> dict[str, Dimension]:
    if not entries:
        raise ConfigError(f"{where}: the space is empty; give at least one experiment key, e.g. training.lr: "
                          "{low: 1.0e-4, high: 1.0e-2, log: true}")
    return {key: _dimension(key, spec, where) for key, spec in entries.items()}


def check_values(space: dict[str, Dimension], values: dict, where: str) -> None:
    """Every bound and choice of ``space``, merged into the experiment ``values`` (its YAML as a mapping), is a
    valid experiment (``dropout`` below 1, ``batch_size`` at least 1, ...)."""
    for dimension in space.values():
        tried = dimension.choices if dimension.choices is not None else (dimension.low, dimension.high)
        for value in tried:
            parse_experiment(deep_merge(values, nested(dimension.key.split("."), value)),
                             f"{where}: {dimension.key}={value!r}")


def as_overrides(params: dict) -> dict:
    """A trial's ``{"training.lr": 0.003}`` as the experiment mapping it overrides."""
    return functools.reduce(deep_merge, (nested(key.split("."), value) for key, value in params.items()), {})


def _dimension(key: str, spec, where: str) -> Dimension:
    annotation = _leaf(str(key), where)
    where = f"{where}: {key}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: give {{low, high, log}} or {{choices}}, not {spec!r}")
    for name in spec:
        if name not in SPEC_KEYS:
            raise ConfigError(unknown_key(where, str(name), SPEC_KEYS))
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"}:
            raise ConfigError(f"{where}: either choices or low/high/log, not both")
        if not isinstance(choices, list) or not choices or not all(isinstance(c, SCALARS) for c in choices):
            raise ConfigError(f"{where}: choices must be a non-empty list of numbers, strings or booleans, not {choices!r}")
        return Dimension(key, choices=tuple(choices))
    kind = _number_kind(annotation)
    integer = kind is int
    if kind is None:
        raise ConfigError(f"{where}: not a number, so it takes choices, not low/high")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: a range needs both low and high")
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    allowed = int if integer else (int, float)
    if not all(isinstance(v, allowed) and not isinstance(v, bool) for v in (low, high)):
        raise ConfigError(f"{where}: low and high must be {'integers' if integer else 'numbers'}, got {low!r} and {high!r}")
    if not low < high:
        raise ConfigError(f"{where}: low ({low}) must be below high ({high})")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log is true or false, not {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low above 0, got {low}")
    return Dimension(key, low if integer else float(low), high if integer else float(high), log, integer=integer)


def _leaf(key: str, where: str):
    """The type of the experiment field ``key`` names; an unknown or non-leaf key is an error with suggestions."""
    parts = key.split(".")
    for depth, part in enumerate(parts):
        choices = field_names(Experiment, tuple(parts[:depth]))
        if part not in choices:
            raise ConfigError(unknown_key(where, ".".join(parts[:depth + 1]), choices) + (" (a key of params/experiments/*.yaml, such as "
                                                                   "training.lr)" if depth == 0 else ""))
    annotation = _field(parts).annotation
    if nested_model(annotation) is not None:
        inner = field_names(Experiment, tuple(parts))
        raise ConfigError(f"{where}: `{key}` is a section; search one of its keys: {', '.join(inner)}")
    return annotation


def _field(parts: list[str]):
    model = Experiment
    for part in parts[:-1]:
        model = nested_model(model.model_fields[part].annotation)
    return model.model_fields[parts[-1]]


def _number_kind(annotation) -> type | None:
    """``int`` or ``float`` for a numeric field (``int | None`` too), None otherwise (bool, str, lists)."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    options = typing.get_args(annotation) if union else (annotation,)
    numbers = [option for option in options if option in (int, float)]
    return numbers[0] if numbers else None
