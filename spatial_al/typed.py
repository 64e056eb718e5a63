"""Values checked against their type annotations: configuration files and component options.

:func:`build` makes a dataclass from a mapping (every key and every value's type checked, nested dataclasses
included); :func:`convert` checks one value. Errors are :class:`ConfigError` naming the key, the expected type and
what was given, and for an unknown key the closest valid one.
"""

from __future__ import annotations

import difflib
import numbers
import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from typing import Any


class ConfigError(ValueError):
    """A configuration value or key that cannot be used; the message names it and the fix."""


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    if is_dataclass(annotation):
        return "a mapping"
    if origin is not None:
        return {list: "a list", dict: "a mapping", tuple: "a list"}.get(origin, str(annotation))
    return getattr(annotation, "__name__", str(annotation))


def convert(value: Any, annotation: Any, where: str) -> Any:
    """``value`` checked against ``annotation`` (built into a dataclass where one is declared).

    Raises:
        ConfigError: the value has the wrong type; the message names the key and the expected type.
    """
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = [option for option in typing.get_args(annotation) if option is not type(None)]
        if value is None and len(options) < len(typing.get_args(annotation)):
            return None
        if len(options) == 1:  # an optional value: the inner error says what is wrong
            return convert(value, options[0], where)
        for option in options:
            try:
                return convert(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where} must be {_type_name(annotation)}, got {value!r}.")
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where} must be null, got {value!r}.")
    if is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}.")
        return build(annotation, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}.")
        (item,) = typing.get_args(annotation)[:1] or (Any,)
        return [convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}.")
        _, item = typing.get_args(annotation)
        return {str(k): convert(v, item, f"{where}.{k}") for k, v in value.items()}
    if annotation is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
    elif annotation is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
    elif annotation in (str, bool):
        if isinstance(value, annotation):
            return value
    else:
        raise TypeError(f"unsupported configuration type {annotation!r} at {where}")
    raise ConfigError(f"{where} must be {_type_name(annotation)}, got {value!r} ({type(value).__name__}).")


def build(cls: type, values: dict[str, Any], where: str = ""):
    """An instance of the dataclass ``cls`` from ``values``, every key and type checked.

    Raises:
        ConfigError: an unknown key (with the closest valid one), a missing required key or a wrongly typed value.
    """
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    prefix = f"{where}." if where else ""
    for key in values:
        if key not in known:
            closest = difflib.get_close_matches(key, known, n=1, cutoff=0.0)
            raise ConfigError(
                f"Unknown configuration key {prefix}{key}. Did you mean {prefix}{closest[0]}? "
                f"Keys here: {', '.join(known)}."
            )
    arguments = {}
    for f in fields(cls):
        if f.name in values:
            arguments[f.name] = convert(values[f.name], hints[f.name], f"{prefix}{f.name}")
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"Configuration key {prefix}{f.name} is required.")
    return cls(**arguments)
