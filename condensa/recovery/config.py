"""Training settings: :class:`TrainConfig` (one training run) and :class:`RecoveryConfig` (the
``recovery`` config section: a training run plus the recovery method, loss and L-C schedule).

One validation function, :func:`check_training`, checks the training fields wherever they appear
(``recovery``, ``model.train``, Python callers), naming the field as the user wrote it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import ConfigError
from ..schema import from_dict

OPTIMIZERS = ("adam", "sgd")
AMP_MODES = ("none", "bf16", "fp16")
RECOVERY_METHODS = ("none", "finetune", "lc")
LOSSES = ("ce", "distill")
TERMS = ("ce", "kl", "logit", "flip")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_training(where: str, **values: Any) -> None:
    """Validate the training fields given (any subset); raise :class:`ConfigError` naming ``where.field``."""
    checks = {
        "epochs": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        "lr": (lambda v: _is_number(v) and v > 0, "a number > 0"),
        "optimizer": (lambda v: v in OPTIMIZERS, f"one of {list(OPTIMIZERS)}"),
        "weight_decay": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
        "momentum": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
        "batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "amp": (lambda v: v in AMP_MODES, f"one of {list(AMP_MODES)}"),
        "max_steps": (lambda v: v is None or (_is_int(v) and v >= 1), "an integer >= 1 or null"),
    }
    for name, value in values.items():
        ok, allowed = checks[name]
        if not ok(value):
            raise ConfigError(f"{where}.{name}: must be {allowed}, got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (units: epochs, learning rate, examples per batch).

    Cosine learning-rate schedule over ``min(epochs * batches, max_steps)`` optimizer steps.
    """

    epochs: int = 8
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    batch_size: int = 64
    amp: str = "none"
    max_steps: int | None = None

    #: the config section named in error messages
    section: ClassVar[str] = "training"

    def __post_init__(self) -> None:
        check_training(self.section, **{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)})

    def training(self) -> TrainConfig:
        """Just the training fields (what the training loop needs)."""
        return TrainConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)})


@dataclass(frozen=True)
class RecoveryConfig(TrainConfig):
    """The ``recovery`` section: a training run plus how it recovers.

    ``method``: ``none`` | ``finetune`` (masked fine-tuning) | ``lc`` (learning-compression).
    ``loss``: ``ce`` | ``distill`` (label-preserving teacher-student loss; ``weights`` is
    ``"auto"`` for SoftAdapt or a mapping of fixed weights for ``ce``, ``kl``, ``logit``, ``flip``).
    """

    section: ClassVar[str] = "recovery"

    method: str = "finetune"
    loss: str = "ce"
    temperature: float = 4.0
    weights: Any = "auto"
    softadapt_window: int = 10
    softadapt_beta: float = 5.0
    margin: float = 1.0
    shuffle: bool = True
    mu_init: float = 1e-2
    mu_multiplier: float = 2.0
    mu_cap: float = 1e4
    lc_steps: int = 10
    mb_iterations_first_l: int = 60
    mb_iterations_per_l: int = 15
    distributed: bool = False
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        where = self.section
        if self.method not in RECOVERY_METHODS:
            raise ConfigError(f"{where}.method: must be one of {list(RECOVERY_METHODS)}, got {self.method!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"{where}.loss: must be one of {list(LOSSES)}, got {self.loss!r}")
        super().__post_init__()
        if self.weights != "auto":
            if not isinstance(self.weights, dict) or set(self.weights) - set(TERMS):
                raise ConfigError(f"{where}.weights: must be 'auto' or a mapping with keys from {list(TERMS)}, got {self.weights!r}")
            if not all(_is_number(w) and w >= 0 for w in self.weights.values()) or not sum(self.weights.values()) > 0:
                raise ConfigError(f"{where}.weights: must be numbers >= 0 with a positive sum (they are normalized to sum 1), "
                                  f"got {self.weights!r}")
        checks = {
            "temperature": (lambda v: _is_number(v) and v > 0, "a number > 0"),
            "margin": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
            "softadapt_window": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
            "softadapt_beta": (_is_number, "a finite number"),
            "mu_init": (lambda v: _is_number(v) and v > 0, "a number > 0"),
            "mu_multiplier": (lambda v: _is_number(v) and v >= 1, "a number >= 1"),
            "mu_cap": (lambda v: _is_number(v) and v >= self.mu_init, f"a number >= mu_init ({self.mu_init})"),
            "lc_steps": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
            "mb_iterations_first_l": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
            "mb_iterations_per_l": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        }
        for name, (ok, allowed) in checks.items():
            if not ok(getattr(self, name)):
                raise ConfigError(f"{where}.{name}: must be {allowed}, got {getattr(self, name)!r}")

    def replace(self, **changes: Any) -> RecoveryConfig:
        """A copy with ``changes`` (``None`` values are ignored: "keep the configured one")."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "recovery") -> RecoveryConfig:
        fields = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        unknown = [k for k in (data or {}) if k not in fields]
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key; allowed: {', '.join(sorted(fields))}")
        return from_dict(cls, dict(data or {}), where)


__all__ = ["TrainConfig", "RecoveryConfig", "check_training", "OPTIMIZERS", "AMP_MODES", "RECOVERY_METHODS", "LOSSES",
           "TERMS"]
