"""Build strategies from configs: a scheme by name or path, or an explicit list of operators."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import condensa.schemes as schemes_package

from .errors import CondensaError, ConfigError
from .loading import is_file_spec, load_callable
from .operators import OPERATORS, Compose, Strategy
from .operators.base import parse_arg


def available_schemes() -> list[str]:
    return sorted(p.stem for p in Path(schemes_package.__file__).parent.glob("*.py") if not p.stem.startswith("_"))


def _scheme_function(spec: str):
    if is_file_spec(spec):
        return load_callable(spec, "strategy.scheme", default_attr="strategy")
    if spec not in available_schemes():
        raise ConfigError(f"strategy.scheme: unknown scheme '{spec}'; available: {available_schemes()} or a path to a .py file")
    return load_callable(f"condensa.schemes.{spec}:strategy", "strategy.scheme", builtin=True)


def load_scheme(spec: str, args: dict[str, Any] | None = None) -> Strategy:
    """Call the scheme's ``strategy(**args)``; YAML ranges (``{low, high}``) become knobs."""
    function = _scheme_function(spec)
    args = {key: parse_arg(value, f"strategy.args.{key}") for key, value in (args or {}).items()}
    allowed = list(inspect.signature(function).parameters)
    unknown = [key for key in args if key not in allowed]
    if unknown:
        raise ConfigError(f"strategy.args: unknown argument(s) {unknown} for scheme '{spec}'; allowed: {allowed}")
    try:
        strategy = function(**args)
    except CondensaError as error:  # an operator refused an argument, e.g. a density choice outside (0, 1]
        raise type(error)(f"strategy.args: {error}") from None
    except Exception as error:  # noqa: BLE001 - a scheme is user code and may raise anything; one line
        raise ConfigError(f"strategy.scheme: '{spec}' raised {type(error).__name__}: {error}") from error
    if not isinstance(strategy, Strategy):
        raise ConfigError(f"strategy.scheme: '{spec}' returned {type(strategy).__name__}, not a condensa strategy")
    return strategy


def build_operator(entry: Any, where: str) -> Strategy:
    if not isinstance(entry, dict) or len(entry) != 1:
        raise ConfigError(f"{where}: each operator is a mapping {{Name: {{args}}}}; operators: {sorted(OPERATORS)}")
    (name, args), = entry.items()
    if name not in OPERATORS:
        raise ConfigError(f"{where}: unknown operator '{name}'; allowed: {sorted(OPERATORS)}")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ConfigError(f"{where}.{name}: arguments must be a mapping, got {args!r}")
    cls = OPERATORS[name]
    fields = [f for f in cls.__dataclass_fields__]
    unknown = [key for key in args if key not in fields]
    if unknown:
        raise ConfigError(f"{where}.{name}: unknown argument(s) {unknown}; allowed: {fields}")
    parsed = {key: parse_arg(value, f"{where}.{name}.{key}") for key, value in args.items()}
    try:
        return cls(**parsed)
    except CondensaError as error:
        raise ConfigError(f"{where}.{name}: {error}") from None


def build_strategy(scheme: str | None, args: dict[str, Any] | None, ops: list | None) -> Strategy:
    """A strategy from ``scheme`` + ``args`` or from ``ops`` (exactly one of the two)."""
    if bool(scheme) == bool(ops):
        raise ConfigError("strategy: give exactly one of 'scheme' (with optional 'args') or 'ops'")
    if scheme:
        return load_scheme(scheme, args)
    if not isinstance(ops, list):
        raise ConfigError("strategy.ops: expected a list of {Operator: {args}}")
    built = [build_operator(entry, f"strategy.ops[{i}]") for i, entry in enumerate(ops)]
    return built[0] if len(built) == 1 else Compose(built)
