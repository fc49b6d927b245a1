"""``recovery`` config section: how accuracy is recovered after compression."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .finetune import AMP_MODES, OPTIMIZERS, TrainConfig

METHODS = ("none", "finetune", "lc")
LOSSES = ("ce", "distill")
TERMS = ("ce", "kl", "logit", "flip")


@dataclass(frozen=True)
class RecoveryConfig:
    """Recovery settings (units: epochs, learning rate, examples per batch).

    ``method``: ``none`` | ``finetune`` (masked fine-tuning) | ``lc`` (learning-compression).
    ``loss``: ``ce`` | ``distill`` (label-preserving teacher-student loss; ``weights`` is
    ``"auto"`` for SoftAdapt or a mapping of fixed weights for ``ce``, ``kl``, ``logit``, ``flip``).
    """

    method: str = "finetune"
    loss: str = "ce"
    epochs: int = 8
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    batch_size: int = 64
    amp: str = "none"
    max_steps: int | None = None
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
        where = "recovery"
        if self.method not in METHODS:
            raise ConfigError(f"{where}.method: must be one of {list(METHODS)}, got {self.method!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"{where}.loss: must be one of {list(LOSSES)}, got {self.loss!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"{where}.optimizer: must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"{where}.amp: must be one of {list(AMP_MODES)}, got {self.amp!r}")
        if self.weights != "auto":
            if not isinstance(self.weights, dict) or set(self.weights) - set(TERMS):
                raise ConfigError(f"{where}.weights: must be 'auto' or a mapping with keys from {list(TERMS)}, got {self.weights!r}")
        self.train_config()  # validates epochs, lr, batch size

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, lr=self.lr, optimizer=self.optimizer, weight_decay=self.weight_decay,
                           momentum=self.momentum, batch_size=self.batch_size, amp=self.amp, max_steps=self.max_steps)

    def replace(self, **changes: Any) -> RecoveryConfig:
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "recovery") -> RecoveryConfig:
        from ..config import from_dict

        fields = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        unknown = [k for k in (data or {}) if k not in fields]
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key; allowed: {', '.join(sorted(fields))}")
        try:
            return from_dict(cls, dict(data or {}), where)
        except TypeError as error:
            raise ConfigError(f"{where}: {error}") from None
