"""Typed mappings: build a dataclass from a parsed YAML/JSON mapping, checking keys and types.

Unknown keys and wrong types raise a one-line :class:`~condensa.errors.ConfigError` naming the
key path and what is allowed; nested dataclasses and ``X | None`` fields are followed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from .errors import ConfigError


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true/false",
                "dict": "a mapping", "list": "a list"}.get(tp.__name__, tp.__name__)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    text = " or ".join(_type_name(a) for a in args)
    return text + (" or null" if type(None) in typing.get_args(tp) else "")


def _check_value(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _check_value(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp in (str, dict, list):
        if not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys and types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in data if key not in names]
    if unknown:
        raise ConfigError(f"{where + '.' if where else ''}{unknown[0]}: unknown key; allowed: {', '.join(names)}")
    values = {key: _check_value(value, hints[key], f"{where + '.' if where else ''}{key}") for key, value in data.items()}
    return cls(**values)


__all__ = ["from_dict"]
