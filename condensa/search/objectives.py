"""What a search optimizes (an :class:`Objective`) and what it must respect (:class:`Constraint`s).

Both read the metrics dict an evaluation returns, so any measured figure can serve.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

DIRECTIONS = ("minimize", "maximize")


@dataclass(frozen=True)
class Objective:
    """Minimize (or maximize) ``metrics[metric]``.

    ``cheap``: the objective as a direct function of the knob values (e.g. footprint depends only
    on the masks and bit widths, not on training); the optimizer then computes it instead of
    modeling it with a GP.
    """

    metric: str = "footprint_bytes"
    direction: str = "minimize"
    cheap: Callable[[dict], float] | None = None

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"search.direction: must be one of {list(DIRECTIONS)}, got {self.direction!r}")

    @property
    def sign(self) -> float:
        """Multiply by this to turn the objective into a loss (lower is better)."""
        return 1.0 if self.direction == "minimize" else -1.0

    def value(self, metrics: dict[str, Any], knobs: dict[str, Any]) -> float:
        if self.metric in metrics and isinstance(metrics[self.metric], (int, float)):
            return float(metrics[self.metric])
        if self.cheap is not None:
            return float(self.cheap(knobs))
        raise ConfigError(f"objective: the evaluation returned no metric '{self.metric}'; available: {sorted(metrics)[:20]}")

    def describe(self) -> dict[str, Any]:
        return {"metric": self.metric, "direction": self.direction, "cheap": self.cheap is not None}


@dataclass(frozen=True)
class Constraint:
    """Feasible iff ``value <= upper``; the value is ``metrics[metric]`` or ``fn(metrics)``."""

    metric: str
    upper: float
    fn: Callable[[dict], float] | None = None

    def value(self, metrics: dict[str, Any]) -> float:
        if self.fn is not None:
            return float(self.fn(metrics))
        if self.metric not in metrics:
            raise ConfigError(f"constraint: the evaluation returned no metric '{self.metric}'; available: {sorted(metrics)[:20]}")
        value = float(metrics[self.metric])
        return value if math.isfinite(value) else float("inf")

    def describe(self) -> dict[str, Any]:
        return {"metric": self.metric, "upper": self.upper, "fn": self.fn is not None}


def accuracy_drop(points: float) -> Constraint:
    """At most ``points`` percentage points of accuracy lost against the reference."""
    return Constraint("accuracy_drop", points)


def mismatch_rate(percent: float) -> Constraint:
    """At most ``percent`` of labels changed against the reference."""
    return Constraint("mismatch_rate", percent)
