"""Open knobs: operator arguments left as ranges for the search to fill in.

A strategy argument such as ``density`` may be a :class:`Range` or a :class:`Choice` instead of a
number. ``strategy.knobs()`` lists the open ones by name and ``strategy.bind({...})`` returns a
concrete copy. The search only sees these specs; it knows nothing about pruning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import KnobError


@dataclass(frozen=True)
class Range:
    """A continuous (or integer) interval ``[low, high]``; ``log=True`` searches it in log space."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def __post_init__(self) -> None:
        for field_name in ("low", "high"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise KnobError(f"Range.{field_name} must be a finite number, got {value!r}")
        if not self.low < self.high:
            raise KnobError(f"Range needs low < high, got low={self.low} high={self.high}")
        if self.log and self.low <= 0:
            raise KnobError(f"Range with log=True needs low > 0, got low={self.low}")
        if self.integer and math.ceil(self.low) > math.floor(self.high):
            raise KnobError(f"Range with integer=True contains no integer: [{self.low}, {self.high}]")

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and float(value) != int(value):
            return False
        tol = 1e-9 * max(1.0, abs(self.high))
        return self.low - tol <= value <= self.high + tol

    def to_unit(self, value: float) -> float:
        """Map a value to [0, 1] (log-scaled when ``log``)."""
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)

    def from_unit(self, unit: float) -> float:
        """Inverse of :meth:`to_unit`; integers are rounded, results clipped into the range."""
        unit = min(1.0, max(0.0, float(unit)))
        if self.log:
            value = math.exp(math.log(self.low) + unit * (math.log(self.high) - math.log(self.low)))
        else:
            value = self.low + unit * (self.high - self.low)
        value = min(self.high, max(self.low, value))
        if self.integer:  # round, then keep inside the range when its bounds are not integers
            return min(math.floor(self.high), max(math.ceil(self.low), int(round(value))))
        return value

    def describe(self) -> str:
        kind = "int" if self.integer else "float"
        return f"{kind} in [{self.low:g}, {self.high:g}]" + (" (log)" if self.log else "")

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "log": self.log, "integer": self.integer}


@dataclass(frozen=True)
class Choice:
    """A finite set of options (e.g. bit widths); searched as an ordered categorical."""

    options: tuple

    def __init__(self, options: Any) -> None:
        options = tuple(options)
        if len(options) < 1:
            raise KnobError("Choice needs at least one option")
        if len(set(map(repr, options))) != len(options):
            raise KnobError(f"Choice options must be distinct, got {list(options)}")
        object.__setattr__(self, "options", options)

    def contains(self, value: Any) -> bool:
        return any(value == option and type(value) is type(option) or value == option for option in self.options)

    def to_unit(self, value: Any) -> float:
        index = self.options.index(value)
        return 0.5 if len(self.options) == 1 else index / (len(self.options) - 1)

    def from_unit(self, unit: float) -> Any:
        unit = min(1.0, max(0.0, float(unit)))
        return self.options[int(round(unit * (len(self.options) - 1)))]

    def describe(self) -> str:
        return "one of " + ", ".join(map(repr, self.options))

    def to_dict(self) -> dict[str, Any]:
        return {"choice": list(self.options)}


KnobSpec = Range | Choice


def is_open(value: Any) -> bool:
    """True when ``value`` is a knob spec rather than a concrete value."""
    return isinstance(value, (Range, Choice))


def knob_from_dict(data: Any, where: str) -> KnobSpec:
    """Parse ``{low, high, log?, integer?}`` or ``{choice: [...]}`` (as written in YAML)."""
    if not isinstance(data, dict):
        raise KnobError(f"{where}: expected a mapping with low/high or choice, got {data!r}")
    if "choice" in data:
        extra = set(data) - {"choice"}
        if extra:
            raise KnobError(f"{where}: unknown key(s) {sorted(extra)} in a choice; allowed: choice")
        if not isinstance(data["choice"], list):
            raise KnobError(f"{where}.choice: expected a list, got {data['choice']!r}")
        return Choice(data["choice"])
    allowed = {"low", "high", "log", "integer"}
    extra = set(data) - allowed
    if extra:
        raise KnobError(f"{where}: unknown key(s) {sorted(extra)} in a range; allowed: {sorted(allowed)}")
    if "low" not in data or "high" not in data:
        raise KnobError(f"{where}: a range needs both low and high")
    try:
        return Range(data["low"], data["high"], bool(data.get("log", False)), bool(data.get("integer", False)))
    except KnobError as error:
        raise KnobError(f"{where}: {error}") from None


def check_value(name: str, spec: KnobSpec, value: Any) -> Any:
    """Validate a value bound to a knob; raises :class:`KnobError` naming the knob and its range."""
    if not spec.contains(value):
        raise KnobError(f"knob '{name}' = {value!r} is outside its range ({spec.describe()})")
    if isinstance(spec, Range):
        value = int(round(value)) if spec.integer else float(min(spec.high, max(spec.low, value)))
    return value
