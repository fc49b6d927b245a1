"""Operator base class, the apply record, and ``Compose``.

An operator is a frozen dataclass: a value you can print, compare and serialize. Its numeric
arguments may be open knobs (:mod:`condensa.knobs`); ``bind`` fills them in. ``apply`` works on a
deep copy unless ``inplace=True`` and returns ``(model, record)``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError, KnobError, LayerSelectionError
from ..knobs import Choice, KnobSpec, Range, check_value, is_open, knob_from_dict
from . import params


@dataclass
class LayerRecord:
    """What the strategy did to one tensor: its density (nonzero fraction) and value bits."""

    tensor: str
    shape: tuple[int, ...]
    density: float
    bits: int
    ops: list[str] = field(default_factory=list)
    dtype: str | None = None  # quantization dtype name (int8, fp16, ...) or None


@dataclass
class Record:
    """Per-tensor record of an applied strategy; ``density`` is over the compressed tensors."""

    layers: dict[str, LayerRecord] = field(default_factory=dict)

    @property
    def density(self) -> float:
        total = sum(_numel(r.shape) for r in self.layers.values())
        kept = sum(r.density * _numel(r.shape) for r in self.layers.values())
        return kept / total if total else 1.0

    @property
    def bits(self) -> dict[str, int]:
        return {name: r.bits for name, r in self.layers.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            name: {"shape": list(r.shape), "density": r.density, "bits": r.bits, "dtype": r.dtype, "ops": r.ops}
            for name, r in self.layers.items()
        }


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


class ApplyResult(tuple):
    """``(model, record)``; also reachable as ``.model`` and ``.record``."""

    def __new__(cls, model: nn.Module, record: Record):
        return super().__new__(cls, (model, record))

    @property
    def model(self) -> nn.Module:
        return self[0]

    @property
    def record(self) -> Record:
        return self[1]


def measure_record(model: nn.Module, touched: Mapping[str, list[str]] | None = None) -> Record:
    """Build a :class:`Record` from the parametrizations present in ``model``."""
    record = Record()
    for module_name, module, tensor_name in params.compressed_tensors(model):
        key = f"{module_name}.{tensor_name}" if module_name else tensor_name
        tensor = params.masked_tensor(module, tensor_name)
        mask = params.get_mask(module, tensor_name)
        density = float(mask.float().mean()) if mask is not None else float((tensor != 0).float().mean())
        quant = params.get_quant(module, tensor_name)
        bits = quant.bits if quant is not None else torch.finfo(tensor.dtype).bits
        record.layers[key] = LayerRecord(key, tuple(tensor.shape), density, bits, list((touched or {}).get(key, [])),
                                         quant.dtype if quant is not None else None)
    return record


class Strategy:
    """Anything that can be applied to a model: an operator or a :class:`Compose`."""

    def knobs(self) -> dict[str, KnobSpec]:
        raise NotImplementedError

    def bind(self, values: Mapping[str, Any]) -> Strategy:
        raise NotImplementedError

    def _check_known(self, values: Mapping[str, Any]) -> None:
        """Refuse knob names that are not open knobs of this strategy (a typo binds nothing)."""
        unknown = set(values) - set(self.knobs())
        if unknown:
            raise KnobError(f"unknown knob(s) {sorted(unknown)}; open knobs: {sorted(self.knobs())}")

    def _apply(self, model: nn.Module, touched: dict[str, list[str]]) -> None:
        raise NotImplementedError

    def to_dict(self) -> Any:
        raise NotImplementedError

    def finish(self, model: nn.Module) -> None:
        """Post-recovery step (after fine-tuning, before measuring and export); default: none."""

    def check_concrete(self) -> None:
        open_knobs = self.knobs()
        if open_knobs:
            listing = ", ".join(f"{name} ({spec.describe()})" for name, spec in open_knobs.items())
            raise KnobError(f"cannot apply a strategy with open knobs: {listing}; bind() them first or run a search")

    def apply(self, model: nn.Module, *, inplace: bool = False) -> ApplyResult:
        """Compress ``model`` (a deep copy unless ``inplace``); returns ``(model, record)``."""
        self.check_concrete()
        if not inplace:
            params.detach_rnn_caches(model)  # a trained, parametrized LSTM could not be deep-copied
            model = copy.deepcopy(model)
        touched: dict[str, list[str]] = {}
        tied = _tied_parameters(model)
        with torch.no_grad():
            self._apply(model, touched)
        _refuse_tied(self, tied, touched)
        return ApplyResult(model, measure_record(model, touched))

    def __call__(self, model: nn.Module, *, inplace: bool = False) -> ApplyResult:
        return self.apply(model, inplace=inplace)


def _tied_parameters(model: nn.Module) -> dict[str, list[str]]:
    """``{"module.tensor": [other names of the same Parameter]}`` for tied weights (a language
    model's output layer sharing the embedding matrix)."""
    names: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
    return {name: [other for other in group if other != name] for group in names.values() if len(group) > 1 for name in group}


def _refuse_tied(strategy: Strategy, tied: dict[str, list[str]], touched: dict[str, list[str]]) -> None:
    """A mask or quantizer on one name of a tied weight changes only that use of it while the
    model runs, but both once baked (export, ``finalize``): the file would hold another model."""
    for name in touched:  # "module.tensor" -> what touched it
        if tied.get(name):
            module = name.rpartition(".")[0]
            raise LayerSelectionError(
                f"{type(strategy).__name__}: {name} is tied to {', '.join(tied[name])} (one shared parameter); compressing "
                f"one use of it would change the other when the model is baked: exclude it (exclude: ['{module}']) or "
                "untie the weights")


class Operator(Strategy):
    """Base class of the compression operators (subclasses are frozen dataclasses)."""

    label: ClassVar[str] = "operator"
    #: True for pruning operators: the same one twice on a tensor is refused by ``Compose``
    prunes: ClassVar[bool] = False
    #: names of fields that may be open knobs
    tunable: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("layers", "exclude") and value is not None and not isinstance(value, tuple):
                object.__setattr__(self, f.name, tuple(value) if isinstance(value, (list, tuple)) else (value,))
            if is_open(value) and f.name not in self.tunable:
                raise KnobError(f"{type(self).__name__}.{f.name} cannot be a knob; tunable: {list(self.tunable)}")
        self.validate()

    def validate(self) -> None:
        """Check concrete argument values; raise ``ConfigError``/``KnobError`` naming the field."""

    def knobs(self) -> dict[str, KnobSpec]:
        return {f"{self.label}.{name}": getattr(self, name) for name in self.tunable if is_open(getattr(self, name))}

    def bind(self, values: Mapping[str, Any]) -> Operator:
        self._check_known(values)
        changes = {}
        for key, spec in self.knobs().items():
            if key in values:
                changes[key.split(".", 1)[1]] = check_value(key, spec, values[key])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        args = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (Range, Choice)):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = [v.__name__ if isinstance(v, type) else v for v in value]
            args[f.name] = value
        return {type(self).__name__: args}


@dataclass(frozen=True)
class Compose(Strategy):
    """Apply operators in order, e.g. ``Compose([Prune(0.1), Quantize("int8")])``.

    Knob names are ``<label>.<field>`` (``prune.density``); a repeated label gets its position
    appended (``prune1.density``).
    """

    ops: tuple

    def __init__(self, ops: Sequence[Strategy]) -> None:
        ops = tuple(ops)
        if not ops:
            raise KnobError("Compose needs at least one operator")
        for op in ops:
            if not isinstance(op, Strategy):
                raise KnobError(f"Compose takes operators, got {op!r}")
        object.__setattr__(self, "ops", ops)

    def _prefixes(self) -> list[str]:
        labels = [op.label if isinstance(op, Operator) else "compose" for op in self.ops]
        return [label if labels.count(label) == 1 else f"{label}{i}" for i, label in enumerate(labels)]

    def _children(self) -> Iterator[tuple[str, Strategy]]:
        yield from zip(self._prefixes(), self.ops)

    def knobs(self) -> dict[str, KnobSpec]:
        out: dict[str, KnobSpec] = {}
        for prefix, op in self._children():
            for key, spec in op.knobs().items():
                local = key.split(".", 1)[1] if isinstance(op, Operator) else key
                out[f"{prefix}.{local}"] = spec
        return out

    def bind(self, values: Mapping[str, Any]) -> Compose:
        self._check_known(values)
        for key, spec in self.knobs().items():  # errors name the knob as the user wrote it (prune1.density)
            if key in values:
                check_value(key, spec, values[key])
        bound = []
        for prefix, op in self._children():
            mine = {k[len(prefix) + 1 :]: v for k, v in values.items() if k.startswith(prefix + ".")}
            if isinstance(op, Operator):
                mine = {f"{op.label}.{k}": v for k, v in mine.items()}
            bound.append(op.bind(mine))
        return Compose(bound)

    def _apply(self, model: nn.Module, touched: dict[str, list[str]]) -> None:
        pruned_by: dict[tuple[str, str], int] = {}  # (pruning operator class, tensor) -> position in ops
        for i, op in enumerate(self.ops):
            before = {key: len(labels) for key, labels in touched.items()}
            op._apply(model, touched)
            if not (isinstance(op, Operator) and op.prunes):
                continue
            for key in (k for k, labels in touched.items() if len(labels) > before.get(k, 0)):
                first = pruned_by.setdefault((type(op).__name__, key), i)
                if first != i:
                    raise LayerSelectionError(
                        f"{type(op).__name__} at positions {first} and {i} both prune '{key}': their masks would AND, so "
                        f"one density would silently not count; give each {type(op).__name__} its own layers (or exclude)")

    def finish(self, model: nn.Module) -> None:
        for op in self.ops:
            op.finish(model)

    def to_dict(self) -> dict[str, Any]:
        return {"Compose": [op.to_dict() for op in self.ops]}

    def __iter__(self):
        return iter(self.ops)


def check_density(op: Operator, value: Any) -> None:
    if isinstance(value, Choice):
        for option in value.options:
            if isinstance(option, bool) or not isinstance(option, (int, float)) or not 0 < option <= 1:
                raise ConfigError(f"{type(op).__name__}.density choices must be numbers in (0, 1], got {option!r} "
                                  f"in {list(value.options)}")
        return
    if is_open(value):
        if value.low <= 0 or value.high > 1:  # type: ignore[union-attr]
            raise ConfigError(f"{type(op).__name__}.density range must lie in (0, 1], got {value.describe()}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f"{type(op).__name__}.density must be a number in (0, 1], got {value!r}")


def check_choice(op: Operator, field_name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{type(op).__name__}.{field_name} must be one of {list(allowed)}, got {value!r}")


def record_touch(touched: dict[str, list[str]], module_name: str, tensor_name: str, label: str) -> None:
    touched.setdefault(f"{module_name}.{tensor_name}" if module_name else tensor_name, []).append(label)


def parse_arg(value: Any, where: str) -> Any:
    """A YAML argument: a mapping with low/high or choice is a knob, anything else is literal."""
    if isinstance(value, dict) and ({"low", "high"} & set(value) or "choice" in value):
        return knob_from_dict(value, where)
    return value
