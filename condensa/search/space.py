"""The search space: named knob specs mapped to and from the unit cube."""

from __future__ import annotations

from typing import Any, Mapping

from ..knobs import Choice, KnobSpec, Range


class Space:
    """Knob specs in a fixed order; ``encode`` / ``decode`` map values to ``[0, 1]^d``.

    Log-scaled ranges become uniform in log space; integers and choices are rounded on decode,
    so ``encode(decode(u))`` is the point the GP should see.
    """

    def __init__(self, knobs: Mapping[str, KnobSpec]) -> None:
        self.names = list(knobs)
        self.specs = [knobs[name] for name in self.names]

    @property
    def dim(self) -> int:
        return len(self.names)

    def decode(self, unit: list[float]) -> dict[str, Any]:
        return {name: spec.from_unit(u) for name, spec, u in zip(self.names, self.specs, unit)}

    def encode(self, values: Mapping[str, Any]) -> list[float]:
        return [float(spec.to_unit(values[name])) for name, spec in zip(self.names, self.specs)]

    def snap(self, unit: list[float]) -> list[float]:
        return self.encode(self.decode(unit))

    def key(self, values: Mapping[str, Any]) -> tuple:
        """Hashable identity of a knob assignment (for duplicate detection)."""
        out = []
        for name, spec in zip(self.names, self.specs):
            value = values[name]
            out.append(round(float(value), 10) if isinstance(spec, Range) and not isinstance(value, str) else repr(value))
        return tuple(out)

    def describe(self) -> dict[str, Any]:
        return {name: spec.to_dict() for name, spec in zip(self.names, self.specs)}


__all__ = ["Space", "Choice", "Range"]
