"""YAML configs parsed into dataclasses.

Every section is a dataclass; unknown keys and wrong types raise a one-line
:class:`~condensa.errors.ConfigError` naming the key path and what is allowed. ``--set a.b=v``
overrides are applied to the raw mapping before validation, so they get the same checks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data.loaders import DATA_SETS
from .device import DEVICES
from .errors import ConfigError
from .recovery.config import check_training
from .schema import from_dict
from .search import check_settings


@dataclass
class TrainSection:
    """How the reference model is trained when no checkpoint is given."""

    epochs: int = 30
    lr: float = 3e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    batch_size: int = 64


@dataclass
class ModelConfig:
    name: str = "digits_cnn"
    kwargs: dict = field(default_factory=dict)
    checkpoint: str | None = None
    train: TrainSection = field(default_factory=TrainSection)


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None
    batch_size: int = 64
    split_seed: int = 0
    image_size: int | None = None
    val_fraction: float = 0.2
    limit: int | None = None
    seq_len: int = 64


@dataclass
class StrategyConfig:
    scheme: str | None = None
    args: dict = field(default_factory=dict)
    ops: list | None = None


@dataclass
class ConstraintConfig:
    metric: str = "accuracy_drop"
    upper: float = 1.0


@dataclass
class SearchConfig:
    objective: str = "footprint"
    direction: str = "minimize"
    constraints: list = field(default_factory=lambda: [{"metric": "accuracy_drop", "upper": 1.0}])
    budget: int = 10
    method: str = "bo"
    eval_epochs: int | None = None
    n_init: int | None = None
    recommend: str = "model"


@dataclass
class OutputConfig:
    dir: str | None = None
    save_weights: bool = True


@dataclass
class MetricsConfig:
    latency: bool = False
    latency_batch_size: int = 1
    latency_repeats: int = 20
    memorization: bool = False
    memorization_models: int = 48
    memorization_epochs: int = 15


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    recovery: dict = field(default_factory=dict)
    search: SearchConfig = field(default_factory=SearchConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    device: str = "auto"
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a raw config mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set: expected key.path=value, got {item!r}")
        path, _, text = item.partition("=")
        value = yaml.safe_load(text) if text else None
        node = raw
        keys = path.strip().split(".")
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {path}: '{key}' is not a section")
            node = child
        node[keys[-1]] = value
    return raw


def parse_config(raw: Any, overrides: list[str] | None = None) -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config: the top level must be a mapping of sections, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [])
    config = from_dict(Config, raw, "")
    validate(config)
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read and validate a YAML config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config: {path} is not valid YAML{at}: {getattr(error, 'problem', error)}") from None
    return parse_config(raw, overrides)


def validate(config: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    if config.device not in DEVICES and not config.device.startswith("cuda:"):
        raise ConfigError(f"device: must be one of {list(DEVICES)}, got {config.device!r}")
    if config.data.name not in DATA_SETS:
        raise ConfigError(f"data.name: must be one of {list(DATA_SETS)}, got {config.data.name!r}")
    if config.data.batch_size < 1:
        raise ConfigError(f"data.batch_size: must be >= 1, got {config.data.batch_size}")
    check_training("model.train", **dataclasses.asdict(config.model.train))
    search = config.search
    check_settings(budget=search.budget, method=search.method, recommend=search.recommend, n_init=search.n_init,
                   direction=search.direction)
    for i, item in enumerate(search.constraints):
        where = f"search.constraints[{i}]"
        constraint = from_dict(ConstraintConfig, item, where)
        if constraint.upper < 0:
            raise ConfigError(f"{where}.upper: must be >= 0 (a bound on a drop or a rate), got {constraint.upper}")
    if config.strategy.scheme is None and config.strategy.ops is None:
        raise ConfigError("strategy: give 'scheme' (with optional 'args') or 'ops'")
