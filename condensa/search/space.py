"""The search space: named knob specs mapped to and from the unit cube."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import SearchError
from ..knobs import Choice, KnobSpec, Range


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


class Space:
    """Knob specs in a fixed order; ``encode`` / ``decode`` map values to ``[0, 1]^d``.

    Log-scaled ranges become uniform in log space; integers and choices are rounded on decode,
    so ``encode(decode(u))`` (``snap``) is the point the GP should see.
    """

    def __init__(self, knobs: Mapping[str, KnobSpec]) -> None:
        self.names = list(knobs)
        self.specs = [knobs[name] for name in self.names]
        for name, spec in zip(self.names, self.specs):
            if not isinstance(spec, (Range, Choice)):
                raise SearchError(f"knob '{name}': expected a Range or Choice, got {spec!r}")

    @property
    def dim(self) -> int:
        return len(self.names)

    def discrete(self, j: int) -> bool:
        """True for a knob with finitely many values (a Choice or an integer Range)."""
        spec = self.specs[j]
        return isinstance(spec, Choice) or spec.integer

    def size(self) -> int | None:
        """Number of distinct knob assignments, or None when a knob is continuous."""
        total = 1
        for spec in self.specs:
            if isinstance(spec, Choice):
                total *= len(spec.options)
            elif spec.integer:
                total *= int(round(spec.high)) - int(round(spec.low)) + 1  # from_unit rounds
            else:
                return None
        return total

    def decode(self, unit: list[float]) -> dict[str, Any]:
        return {name: spec.from_unit(u) for name, spec, u in zip(self.names, self.specs, unit)}

    def encode(self, values: Mapping[str, Any]) -> list[float]:
        return [float(spec.to_unit(values[name])) for name, spec in zip(self.names, self.specs)]

    def snap(self, unit: list[float]) -> list[float]:
        return self.encode(self.decode(unit))

    def snap_many(self, unit: torch.Tensor) -> torch.Tensor:
        """``snap`` for an ``n x d`` tensor (vectorized for continuous knobs)."""
        out = unit.clamp(0, 1).clone()
        for j in range(self.dim):
            if self.discrete(j):
                column = out[:, j].tolist()
                out[:, j] = torch.tensor([self.specs[j].to_unit(self.specs[j].from_unit(u)) for u in column], dtype=out.dtype)
        return out

    def restore(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Knob values read back from JSON (a journal) as the spec's own objects: a choice of
        tuples comes back as lists, integers as floats."""
        missing = [name for name in self.names if name not in values]
        if missing:
            raise SearchError(f"journal evaluation lacks knob(s) {missing}; the journal is from a different strategy")
        out = {}
        for name, spec in zip(self.names, self.specs):
            value = values[name]
            if isinstance(spec, Choice):
                matches = [o for o in spec.options if o == value and type(o) is type(value)]
                matches = matches or [o for o in spec.options if _canonical(o) == _canonical(value)]
                if not matches:
                    raise SearchError(f"journal value {value!r} of knob '{name}' is not one of {list(spec.options)}")
                value = matches[0]
            elif spec.integer:
                value = int(round(value))
            else:
                value = float(value)
            out[name] = value
        return out

    def key(self, values: Mapping[str, Any]) -> tuple:
        """Hashable identity of a knob assignment (for duplicate detection)."""
        out = []
        for name, spec in zip(self.names, self.specs):
            value = values[name]
            out.append(round(float(value), 10) if isinstance(spec, Range) else _canonical(value))
        return tuple(out)

    def describe(self) -> dict[str, Any]:
        return {name: spec.to_dict() for name, spec in zip(self.names, self.specs)}


__all__ = ["Space", "Choice", "Range"]
